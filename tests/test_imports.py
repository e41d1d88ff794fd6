"""The package's import graph: no cycle, every module importable first in a fresh interpreter and
in any order, no import inside a function without a comment saying why, and importing starts no
JAX backend (the commands set the CPU devices and XLA flags after importing)."""

import ast
import os
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import regmix_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "regmix_jax")


def _modules() -> dict[str, str]:
  """Module name -> source path, for every module of the package."""
  out = {"regmix_jax": os.path.join(PACKAGE, "__init__.py")}
  for info in pkgutil.walk_packages(regmix_jax.__path__, "regmix_jax."):
    spec = info.module_finder.find_spec(info.name)
    out[info.name] = spec.origin
  return out


MODULES = _modules()


def _is_package(name: str) -> bool:
  return MODULES[name].endswith("__init__.py")


def _imported(name: str, node: ast.AST) -> list[str]:
  """The package modules an import statement in module `name` loads."""
  package = name if _is_package(name) else name.rsplit(".", 1)[0]
  if isinstance(node, ast.Import):
    return [a.name for a in node.names if a.name in MODULES]
  base = node.module or ""
  if node.level:  # relative import
    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
    base = ".".join(parts + ([node.module] if node.module else []))
  if not base.startswith("regmix_jax"):
    return []
  out = [base] if base in MODULES else []
  out += [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
  return out


def _graph() -> dict[str, set[str]]:
  """Module -> the modules its top-level imports load. Importing `p.q.r` from outside package
  `p.q` first runs `p.q`'s `__init__`, so that is an edge too."""
  graph = {}
  for name, path in MODULES.items():
    edges = set()
    for node in ast.parse(open(path).read()).body:
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        for target in _imported(name, node):
          parts = target.split(".")
          for i in range(2, len(parts) + 1):
            ancestor = ".".join(parts[:i])
            if ancestor != name and not name.startswith(ancestor + "."):
              edges.add(ancestor)
    graph[name] = edges
  return graph


def test_no_import_cycle():
  graph, state, path = _graph(), {}, []

  def visit(node):
    state[node] = "open"
    path.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        cycle = path[path.index(nxt):] + [nxt]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if nxt not in state:
        visit(nxt)
    path.pop()
    state[node] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module)


def test_imports_inside_functions_say_why():
  """An import inside a function is allowed only with a comment on its line or the line above
  giving the reason (an optional dependency, a slow import only one path needs, ...)."""
  bare = []
  for name, path in MODULES.items():
    lines = open(path).read().splitlines()
    for node in ast.walk(ast.parse("\n".join(lines))):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for inner in ast.walk(node):
          if isinstance(inner, (ast.Import, ast.ImportFrom)):
            here = lines[inner.lineno - 1]
            above = lines[inner.lineno - 2].strip()
            comment = here.split("#", 1)[1] if "#" in here else ""
            if not (above.startswith("#") or comment.replace("pylint: disable=", "").strip(
                " g-import-not-at-top,")):
              bare.append(f"{path}:{inner.lineno}: {here.strip()}")
  assert not bare, "imports inside functions without a reason:\n" + "\n".join(bare)


_DRIVER = textwrap.dedent("""
    import os, random, sys, importlib
    # Third-party packages first (slow, and not what is tested); then each case in a forked child
    # whose interpreter has loaded no module of the package.
    import absl.flags, flax.linen, jax, ml_collections, numpy, optax, orbax.checkpoint, tqdm
    import tensorboardX
    from ml_collections import config_flags
    modules = sys.argv[1].split(",")
    orders = [[m] for m in modules] + [list(reversed(modules))]
    for seed in range(3):
      shuffled = list(modules)
      random.Random(seed).shuffle(shuffled)
      orders.append(shuffled)
    failed = []
    for order in orders:
      pid = os.fork()
      if pid == 0:
        try:
          assert not any(m.startswith("regmix_jax") for m in sys.modules)
          for m in order:
            importlib.import_module(m)
          from jax._src import xla_bridge
          if xla_bridge.backends_are_initialized():
            print("a JAX backend was started by importing", order, flush=True)
            os._exit(2)
          os._exit(0)
        except BaseException as e:  # report and exit the child, whatever it was
          print(f"importing {order}: {type(e).__name__}: {e}", flush=True)
          os._exit(1)
      _, status = os.waitpid(pid, 0)
      if status:
        failed.append(order[0] if len(order) == 1 else f"order {order}")
    print("FAILED:", failed)
    sys.exit(1 if failed else 0)
""")


def test_every_module_imports_first_and_in_any_order_without_starting_jax():
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  result = subprocess.run([sys.executable, "-c", _DRIVER, ",".join(sorted(MODULES))], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# The backend-neutral core: plain JAX that runs unchanged on every backend. The CPU plug-in
# (`regmix_jax.cpu`) is chosen by the commands and passed down as a value, never imported here.
CORE = ("regmix_jax.models", "regmix_jax.attacks", "regmix_jax.methods", "regmix_jax.losses",
        "regmix_jax.train_step", "regmix_jax.evaluation")


def _closure(graph, start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    module = todo.pop()
    if module not in seen:
      seen.add(module)
      todo.extend(graph[module])
  return seen


def test_the_core_imports_no_cpu_acceleration():
  graph = _graph()
  core = [m for m in MODULES if any(m == c or m.startswith(c + ".") for c in CORE)]
  assert len(core) > 20, core  # every module under the core's packages
  leaks = {m: sorted(d for d in _closure(graph, m) if d == "regmix_jax.cpu"
                     or d.startswith("regmix_jax.cpu."))
           for m in core}
  assert not any(leaks.values()), {m: d for m, d in leaks.items() if d}
  # Imports inside functions too (the graph above holds top-level ones).
  inner = [f"{MODULES[m]}:{node.lineno}" for m in core
           for node in ast.walk(ast.parse(open(MODULES[m]).read()))
           if isinstance(node, (ast.Import, ast.ImportFrom))
           and any(t == "regmix_jax.cpu" or t.startswith("regmix_jax.cpu.")
                   for t in _imported(m, node))]
  assert not inner, inner


def test_no_global_statement_in_the_library():
  """Process-wide state set through `global` is what the CPU plug-in used to be: choices travel
  as values."""
  found = [f"{path}:{node.lineno}" for name, path in MODULES.items()
           for node in ast.walk(ast.parse(open(path).read()))
           if isinstance(node, ast.Global)]
  assert not found, found


def test_the_commands_do_not_import_torch():
  """torch is never a library dependency, and where it is installed (the crosscheck extra) it
  costs every command 1.6 s to import: tensorboardX's optional torch import is skipped
  (`reporting`), and torch still imports afterwards."""
  code = ("import sys, regmix_jax.main, regmix_jax.evaluate, regmix_jax.convert; "
          "print('torch' in sys.modules); import importlib.util; "
          "print(importlib.util.find_spec('torch') is not None)")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  loaded, installed = result.stdout.split()
  assert loaded == "False", result.stderr[-2000:]
  if installed == "True":
    after = subprocess.run([sys.executable, "-c", "import regmix_jax.reporting, torch; "
                            "print(torch.ones(2).sum().item())"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert after.stdout.strip() == "2.0", after.stderr[-2000:]
