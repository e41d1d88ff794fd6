"""regmix_jax's AutoAttack components vs torchattacks on identical weights.

Restores a trained small_cnn run (EMA weights), copies the weights into an equivalent PyTorch
module, checks the logits agree, then runs each attack (L-inf, eps 8/255, the official "standard"
settings) in both frameworks on the same test points and records robust accuracy and wall time in
`results.json` (resumable: finished (attack, n_examples) entries are skipped) and `results.md`.

torch and torchattacks are imported only by this script (not library dependencies):

  pip install torch==2.13.0 && pip install --no-deps torchattacks==3.5.1

Run from the repository root:

  python experiments/autoattack_vs_torch/run.py --n_examples=200 --attacks=apgd-ce,square
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from regmix_jax import attacks, config as config_lib, cpu, evaluate

HERE = os.path.dirname(os.path.abspath(__file__))
ALL_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "aa")
EPS = 8 / 255


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="runs/comparison/fgsm_pgk")
  p.add_argument("--data", default="../shared/data/cifar10_subset.npz")
  p.add_argument("--n_examples", type=int, default=1000)
  p.add_argument("--batch_size", type=int, default=250)
  p.add_argument("--attacks", default=",".join(ALL_ATTACKS),
                 help=f"comma-separated subset of {','.join(ALL_ATTACKS)}")
  p.add_argument("--frameworks", default="jax,torch")
  p.add_argument("--torch_threads", type=int, default=2)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--results", default=os.path.join(HERE, "results.json"))
  p.add_argument("--force", action="store_true", help="rerun entries already in results.json")
  p.add_argument("--note", default="", help="free text stored with this run's entries")
  return p.parse_args(argv)


# ----------------------------------------------------------------------------------------- JAX


def load_jax_model(workdir):
  """The run's target model and eval variables, restored by `regmix_jax.evaluate.restore_state`
  (the model's convolutions the library's on this CPU, `cpu.choose("auto")`): returns (model,
  variables, config, step, whether they are EMA weights)."""
  config = config_lib.load_json(os.path.join(workdir, "config.json"))
  if config.model.name != "small_cnn":
    raise ValueError(f"this script ports small_cnn only, the run has {config.model.name!r}")
  # The attacks take `logits_fn` as it is: the model gets the library's CPU convolutions itself.
  nets, state, step = evaluate.restore_state(workdir, config, 10, (32, 32, 3),
                                             conv=cpu.choose("auto").conv)
  variables = state.eval_variables("target")
  model = nets["target"].clone(axis_name=None)  # inference BN: no cross-device statistics
  return model, variables, config, step, state.ema_params is not None


def make_jax_attack(name, model, variables):
  def logits_fn(x):
    return model.apply(variables, x, train=False)

  fns = {
      "apgd-ce": lambda x, y, k: attacks.apgd(logits_fn, x, y, k, epsilon=EPS, loss="ce",
                                              num_steps=100, num_restarts=1, rho=0.75),
      "apgd-t": lambda x, y, k: attacks.apgd_targeted(logits_fn, x, y, k, epsilon=EPS,
                                                      num_steps=100, num_target_classes=9,
                                                      num_restarts=1, rho=0.75),
      "fab-t": lambda x, y, k: attacks.fab_targeted(logits_fn, x, y, k, epsilon=EPS,
                                                    num_steps=100, num_target_classes=9,
                                                    num_restarts=1),
      "square": lambda x, y, k: attacks.square(logits_fn, x, y, k, epsilon=EPS,
                                               num_queries=5000, p_init=0.8, num_restarts=1,
                                               loss="margin", rescale_schedule=False),
      "aa": lambda x, y, k: attacks.autoattack(logits_fn, x, y, k, epsilon=EPS,
                                               version="standard")[0],
  }
  attack = fns[name]

  def run(x, y, k):
    x_adv = attack(x, y, k)
    correct = jnp.argmax(logits_fn(x_adv), axis=-1) == y
    linf = jnp.max(jnp.abs(x_adv - x).reshape(x.shape[0], -1), axis=-1)
    return correct, linf

  return jax.jit(run), jax.jit(logits_fn)


def run_jax(name, model, variables, x, y, batch_size, seed):
  """Robust flags, max L-inf, seconds (excluding compile), compile seconds.

  As the official code and torchattacks do: only the points classified correctly are attacked;
  for `aa`, each of its attacks only the points still robust after the previous ones (gathered
  into batches of at most `batch_size`, padded to a power of two so few shapes compile).
  """
  logits = np.concatenate([np.asarray(jax.jit(lambda z: model.apply(variables, z, train=False))(
      x[i:i + batch_size])) for i in range(0, len(y), batch_size)])
  robust = logits.argmax(-1) == y
  linf = np.zeros(len(y), np.float32)
  parts = list(attacks.autoattack_version("standard")) if name == "aa" else [name]
  key = jax.random.key(seed)
  compiled, compile_s, run_s = {}, 0.0, 0.0
  for p, part in enumerate(parts):
    fn, _ = make_jax_attack(part, model, variables)
    idx = np.nonzero(robust)[0]
    bs = 1
    while bs < min(len(idx), batch_size):
      bs *= 2
    bs = min(bs, batch_size)
    for i, start in enumerate(range(0, len(idx), bs)):
      chunk = idx[start:start + bs]
      pad = np.concatenate([chunk, np.repeat(chunk[:1], bs - len(chunk))])
      if (part, bs) not in compiled:
        t0 = time.time()
        compiled[(part, bs)] = fn.lower(x[pad], y[pad], key).compile()
        compile_s += time.time() - t0
      t0 = time.time()
      c, l = compiled[(part, bs)](x[pad], y[pad], jax.random.fold_in(jax.random.fold_in(key, p), i))
      c, l = np.asarray(c)[:len(chunk)], np.asarray(l)[:len(chunk)]
      run_s += time.time() - t0
      fooled = chunk[~c]
      linf[fooled] = l[~c]
      robust[fooled] = False
  return robust, linf, run_s, compile_s


# --------------------------------------------------------------------------------------- torch


def build_torch_model(variables, width, num_classes=10):
  """The same small CNN in PyTorch (`experiments/benchmarks/torch_reference.py`) with the JAX
  weights."""
  sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))
  import torch_reference  # pylint: disable=g-import-not-at-top  (it imports torch; found above)
  return torch_reference.SmallCNN(num_classes, width).load_flax(variables).eval()


def make_torch_attack(name, net):
  import torchattacks as ta  # pylint: disable=g-import-not-at-top  (not a library dependency)
  apgd_ce = lambda: ta.APGD(net, norm="Linf", eps=EPS, steps=100, n_restarts=1, loss="ce",
                            rho=.75, seed=0)
  apgd_t = lambda: ta.APGDT(net, norm="Linf", eps=EPS, steps=100, n_restarts=1, rho=.75,
                            n_classes=10, seed=0)
  # multi_targeted=True: target ranks 2..n_classes (9 targets for 10 classes) = AutoAttack FAB-T.
  fab_t = lambda: ta.FAB(net, norm="Linf", eps=EPS, steps=100, n_restarts=1, alpha_max=0.1,
                         eta=1.05, beta=0.9, multi_targeted=True, n_classes=10, seed=0)
  square = lambda: ta.Square(net, norm="Linf", eps=EPS, n_queries=5000, n_restarts=1, p_init=.8,
                             loss="margin", resc_schedule=False, seed=0)
  if name == "aa":
    # NOT torchattacks.AutoAttack(version='standard'): in torchattacks 3.5.1 it leaves APGD,
    # APGD-T and FAB at their class default steps=10 and Square at resc_schedule=True; this is
    # the same MultiAttack composition with the official standard settings.
    return ta.MultiAttack([apgd_ce(), apgd_t(), fab_t(), square()])
  return {"apgd-ce": apgd_ce, "apgd-t": apgd_t, "fab-t": fab_t, "square": square}[name]()


def run_torch(name, net, x, y, batch_size):
  import torch  # pylint: disable=g-import-not-at-top  (not a library dependency)
  attack = make_torch_attack(name, net)
  n = len(y)
  correct, linf = np.zeros(n, bool), np.zeros(n, np.float32)
  t0 = time.time()
  for start in range(0, n, batch_size):
    xb = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size].transpose(0, 3, 1, 2)))
    yb = torch.from_numpy(y[start:start + batch_size].astype(np.int64))
    adv = attack(xb, yb).detach()
    with torch.no_grad():
      c = (net(adv).argmax(1) == yb).numpy()
    correct[start:start + len(yb)] = c
    linf[start:start + len(yb)] = (adv - xb).abs().flatten(1).max(1)[0].numpy()
  return correct, linf, time.time() - t0


# ------------------------------------------------------------------------------------- results


def versions():
  import torch  # pylint: disable=g-import-not-at-top  (not a library dependency)
  import torchattacks  # pylint: disable=g-import-not-at-top  (not a library dependency)
  return {"jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__")
          else "", "torch": torch.__version__, "torchattacks": torchattacks.__version__,
          "numpy": np.__version__, "python": platform.python_version(),
          "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}


def write_markdown(results, path):
  lines = ["# regmix_jax attacks vs torchattacks (identical weights)", "",
           "Written by `experiments/autoattack_vs_torch/run.py` from `results.json` (per-point "
           "flags there); notes on the setup and what differs in `NOTES.md` next to it.", ""]
  by_n = {}
  for e in results["entries"]:
    by_n.setdefault(e["n_examples"], []).append(e)
  for n, entries in sorted(by_n.items()):
    e0 = entries[0]
    lines += [f"## n_examples = {n} (first {n} test points of `{e0['data']}`; clean accuracy "
              f"JAX {100 * e0['clean_jax']:.1f} %, torch {100 * e0['clean_torch']:.1f} %; logits "
              f"max |diff| {e0['logit_max_abs_diff']:.2e})", "",
              "| attack | robust acc JAX % | robust acc torch % | diff (pp) | JAX s (excl. "
              "compile) | JAX compile s | torch s | torch s / JAX s | max L-inf JAX / torch "
              "(x255) | batch | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(entries, key=lambda e: ALL_ATTACKS.index(e["attack"])):
      ja, ta = e.get("robust_jax"), e.get("robust_torch")
      f = lambda v: "—" if v is None else f"{100 * v:.1f}"
      diff = "—" if ja is None or ta is None else f"{100 * (ja - ta):+.1f}"
      js, ts = e.get("seconds_jax"), e.get("seconds_torch")
      ratio = "—" if js is None or ts is None else f"{ts / js:.2f}"
      g = lambda v, d=1: "—" if v is None else f"{v:.{d}f}"
      linf = f"{g(e.get('linf_jax') and 255 * e['linf_jax'], 3)} / " \
             f"{g(e.get('linf_torch') and 255 * e['linf_torch'], 3)}"
      lines.append(f"| {e['attack']} | {f(ja)} | {f(ta)} | {diff} | {g(js)} | "
                   f"{g(e.get('compile_s_jax'))} | {g(ts)} | {ratio} | {linf} | "
                   f"{e['batch_size']} | {e.get('note', '')} |")
    lines += ["", "ratio = torch seconds / JAX seconds (JAX time excludes the one-off XLA compile, "
              "reported separately): > 1 means JAX was faster.", ""]
    if "agreement" in entries[0]:
      pass
  lines += ["## Environment of the runs", ""]
  for k, v in results.get("versions", {}).items():
    lines.append(f"- {k}: {v}")
  lines += ["", "## Commands run", ""] + [f"- `{c}`" for c in results.get("commands", [])]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv=None):
  args = parse_args(argv)
  attacks_wanted = [a.strip() for a in args.attacks.split(",") if a.strip()]
  bad = [a for a in attacks_wanted if a not in ALL_ATTACKS]
  if bad:
    raise SystemExit(f"unknown attacks {bad}; choose from {ALL_ATTACKS}")
  frameworks = set(args.frameworks.split(","))

  import torch  # pylint: disable=g-import-not-at-top  (not a library dependency)
  torch.set_num_threads(args.torch_threads)

  results = {"entries": [], "commands": []}
  if os.path.exists(args.results):
    with open(args.results) as f:
      results = json.load(f)
  results["versions"] = versions()
  command = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
  if command not in results["commands"]:
    results["commands"].append(command)

  model, variables, config, step, ema = load_jax_model(args.workdir)
  d = np.load(args.data)
  n = min(args.n_examples, len(d["y_test"]))
  x = (d["x_test"][:n].astype(np.float32) / 255.0)
  y = d["y_test"][:n].astype(np.int32)
  net = build_torch_model(variables, config.model.width)

  logits_fn = jax.jit(lambda z: model.apply(variables, z, train=False))
  lj = np.concatenate([np.asarray(logits_fn(x[i:i + 500])) for i in range(0, n, 500)])
  with torch.no_grad():
    lt = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
  diff = float(np.abs(lj - lt).max())
  print(f"restored step {step} ({'EMA' if ema else 'live'} weights); n={n}; "
        f"logits max |JAX - torch| = {diff:.2e}", flush=True)
  assert diff < 1e-4, f"logits differ by {diff}"
  clean_j, clean_t = float((lj.argmax(1) == y).mean()), float((lt.argmax(1) == y).mean())
  print(f"clean accuracy JAX {100 * clean_j:.2f} %, torch {100 * clean_t:.2f} %", flush=True)

  def find(attack):
    for e in results["entries"]:
      if e["attack"] == attack and e["n_examples"] == n and e["workdir"] == args.workdir:
        return e
    e = {"attack": attack, "n_examples": n, "workdir": args.workdir, "data": args.data,
         "step": step, "weights": "ema" if ema else "live", "batch_size": min(args.batch_size, n),
         "logit_max_abs_diff": diff, "clean_jax": clean_j, "clean_torch": clean_t}
    results["entries"].append(e)
    return e

  def save():
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    tmp = args.results + ".tmp"
    with open(tmp, "w") as f:
      json.dump(results, f, indent=1)
    os.replace(tmp, args.results)
    write_markdown(results, os.path.join(os.path.dirname(args.results), "results.md"))

  for attack in attacks_wanted:
    e = find(attack)
    if args.note:
      e["note"] = args.note
    if "jax" in frameworks and (args.force or "robust_jax" not in e):
      c, l, s, cs = run_jax(attack, model, variables, x, y, args.batch_size, args.seed)
      e.update(robust_jax=float(c.mean()), seconds_jax=s, compile_s_jax=cs,
               linf_jax=float(l.max()), flags_jax=c.astype(int).tolist())
      print(f"[jax]   {attack:8s} robust {100 * c.mean():6.2f} %  {s:8.1f} s "
            f"(+ compile {cs:.1f} s)  max linf*255 {255 * l.max():.4f}", flush=True)
      save()
    if "torch" in frameworks and (args.force or "robust_torch" not in e):
      c, l, s = run_torch(attack, net, x, y, args.batch_size)
      e.update(robust_torch=float(c.mean()), seconds_torch=s, linf_torch=float(l.max()),
               flags_torch=c.astype(int).tolist())
      print(f"[torch] {attack:8s} robust {100 * c.mean():6.2f} %  {s:8.1f} s  "
            f"max linf*255 {255 * l.max():.4f}", flush=True)
      save()
    if "flags_jax" in e and "flags_torch" in e:
      fj, ft = np.array(e["flags_jax"], bool), np.array(e["flags_torch"], bool)
      e["robust_both"] = float((fj & ft).mean())
      print(f"        {attack:8s} diff {100 * (fj.mean() - ft.mean()):+.2f} pp; points robust "
            f"in one only: JAX-only {int((fj & ~ft).sum())}, torch-only {int((~fj & ft).sum())}"
            f"; torch/JAX time {e['seconds_torch'] / e['seconds_jax']:.2f}", flush=True)
      save()
  save()


if __name__ == "__main__":
  main()
