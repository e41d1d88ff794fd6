"""AutoAttack speed: the official PyTorch code against `attacks.run_autoattack`, same weights, same
points, same machine, one command.

For each case (model x number of points) it runs, each in its own subprocess, one after the
other: the official fra31/auto-attack (torch CPU, 2 threads, `bs=250`, `seed=0`, "standard",
L-inf eps 8/255), then `run_autoattack` (JAX, the CPU cores as host devices and one of them
running each batch, the model's convolutions `cpu.choose("auto").on_one_device().for_attacks()`'s, as the
evaluate command runs AutoAttack on CPU, `batch_size=500`, the same version, norm and radius),
on the first N test images of ../shared/data/cifar10_subset.npz. It
records wall time (ours includes XLA compilation), the robust accuracy after each attack and
each attack's seconds, the CPU (model, cores, avx512_bf16 / amx flags), load average and date.
Results go to experiments/results/autoattack_benchmark.json (resumable: a finished
(case, side, repeat) entry is not run again; --force reruns) and a table to
experiments/results/autoattack_benchmark.md.

Weights: the small CNN is experiments/autoattack_vs_torch's network (small_cnn width 32, 6 epochs
of FGSM-PGK on the CIFAR-10 subset, EMA weights); ResNet-18 is trained the same way for
--resnet18_epochs. A workdir that does not exist yet is trained first with
`python -m regmix_jax.main` (the command is printed). The Flax variables are read straight from
the checkpoint's `state` item (no TrainState, so the script survives TrainState changes) and
copied into PyTorch twins defined here (kuangliu names: conv kernel HWIO -> OIHW, dense [in, out]
-> [out, in], BatchNorm scale/bias/mean/var -> weight/bias/running_mean/running_var); the logits
are checked to agree before timing.

  python experiments/benchmarks/autoattack_benchmark.py                    # every case
  python experiments/benchmarks/autoattack_benchmark.py --cases=small_cnn:500 --repeats=2
  python experiments/benchmarks/autoattack_benchmark.py --cases=small_cnn:500:L2,small_cnn:500:L1

Needs torch==2.13.0 (the `crosscheck` extra) and the official code at
../shared/reference/auto-attack.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time

import jax
import numpy as np

from regmix_jax import attacks, cpu, models
from regmix_jax.cpu import host

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RESULTS = os.path.join(ROOT, "experiments", "results", "autoattack_benchmark.json")
# AA_REFERENCE / AA_DATA replace the default places (e.g. on a machine without ../shared).
REFERENCE = os.environ.get("AA_REFERENCE") or os.path.join(os.path.dirname(ROOT), "shared",
                                                            "reference", "auto-attack")
DATA = os.environ.get("AA_DATA") or os.path.join(os.path.dirname(ROOT), "shared", "data",
                                                  "cifar10_subset.npz")
# The radius of each threat model: RobustBench's CIFAR-10 L-inf and L2, and the L1 of APGD's
# and AutoAttack's papers (eps 12).
EPSILONS = {"Linf": 8 / 255, "L2": 0.5, "L1": 12.0}
CASES = ("small_cnn:500", "small_cnn:1000", "resnet18:500", "resnet18:1000")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--cases", default=",".join(CASES))
  p.add_argument("--sides", default="official,ours")
  p.add_argument("--repeats", type=int, default=1, help="run each case this many times, "
                 "alternating the sides (official, ours, official, ours, ...)")
  p.add_argument("--small_cnn_workdir", default=os.path.join(ROOT, "runs", "comparison",
                                                              "fgsm_pgk"))
  p.add_argument("--resnet18_workdir", default=os.path.join(ROOT, "runs", "aa_benchmark",
                                                             "resnet18"))
  p.add_argument("--resnet18_epochs", type=int, default=3)
  p.add_argument("--batch_size", type=int, default=500, help="run_autoattack's batch_size")
  p.add_argument("--torch_threads", type=int, default=2)
  p.add_argument("--results", default=RESULTS)
  p.add_argument("--force", action="store_true")
  p.add_argument("--note", default="")
  # Internal: one side of one case, in a child process.
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  p.add_argument("--model", default="", help=argparse.SUPPRESS)
  p.add_argument("--workdir", default="", help=argparse.SUPPRESS)
  p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--norm", default="Linf", help=argparse.SUPPRESS)
  return p.parse_args(argv)


# ------------------------------------------------------------------------------- weights, data


def train_command(model: str, workdir: str, epochs: int) -> list[str]:
  """The training run that makes a case's weights (experiments/method_comparison's)."""
  return [sys.executable, "-m", "regmix_jax.main", "--config=configs/cifar10/fgsm_pgk.py",
          f"--workdir={workdir}", "--config.data.source=files", f"--config.data.dir={DATA}",
          f"--config.model.name={model}", "--config.model.width=32",
          f"--config.num_epochs={epochs}", "--config.eval.attacks=clean",
          f"--config.eval.every_epochs={epochs}", "--config.log_every_steps=50",
          f"--config.optim.milestones=({max(epochs - 2, 1)},{max(epochs - 1, 1)})"]


def load_variables(workdir: str):
  """`(model name, Flax variables {"params", "batch_stats"})` of the run's latest checkpoint,
  EMA weights when kept, read from the `state` item as a plain tree."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (child process only)
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  ckpt = os.path.join(workdir, "checkpoints")
  step = max(int(s) for s in os.listdir(ckpt) if s.isdigit())
  tree = ocp.StandardCheckpointer().restore(os.path.join(ckpt, str(step), "state"))
  params = tree.get("ema_params") or tree["params"]
  stats = tree.get("ema_batch_stats") or tree["batch_stats"]
  variables = {"params": params["target"], "batch_stats": stats["target"]}
  return config["model"], variables


def load_points(n: int):
  d = np.load(DATA)
  return d["x_test"][:n].astype(np.float32) / 255.0, d["y_test"][:n].astype(np.int64)


# ------------------------------------------------------------------------------------ PyTorch


def torch_twin(model_cfg: dict, variables):
  """The PyTorch twin of the Flax model, with the Flax weights (see the module docstring)."""
  import torch  # pylint: disable=g-import-not-at-top  (child process only; not a dependency)
  nn, F = torch.nn, torch.nn.functional

  conv = lambda cin, cout, k, s: nn.Conv2d(cin, cout, k, s, padding=k // 2, bias=False)

  class SmallCNN(nn.Module):
    def __init__(self, width, classes):
      super().__init__()
      cin = 3
      for i, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2)), start=1):
        setattr(self, f"conv{i}", conv(cin, width * mult, 3, stride))
        setattr(self, f"bn{i}", nn.BatchNorm2d(width * mult))
        cin = width * mult
      self.linear = nn.Linear(cin, classes)

    def forward(self, x):
      for i in (1, 2, 3):
        x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
      return self.linear(x.mean(dim=(2, 3)))

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1, self.bn1 = conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
      self.conv2, self.bn2 = conv(cout, cout, 3, 1), nn.BatchNorm2d(cout)
      self.shortcut = nn.Sequential()
      if stride != 1 or cin != cout:
        self.shortcut = nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))

  class ResNet18(nn.Module):
    def __init__(self, classes):
      super().__init__()
      self.conv1, self.bn1 = conv(3, 64, 3, 1), nn.BatchNorm2d(64)
      cin = 64
      for i, (width, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), start=1):
        setattr(self, f"layer{i}", nn.Sequential(Block(cin, width, stride),
                                                  Block(width, width, 1)))
        cin = width
      self.linear = nn.Linear(512, classes)

    def forward(self, x):
      x = F.relu(self.bn1(self.conv1(x)))
      for i in (1, 2, 3, 4):
        x = getattr(self, f"layer{i}")(x)
      return self.linear(x.mean(dim=(2, 3)))

  if model_cfg.get("normalize"):
    raise ValueError("this benchmark's twins take unnormalised inputs (model.normalize='').")
  classes = variables["params"]["linear"]["bias"].shape[0]
  net = (SmallCNN(model_cfg["width"], classes) if model_cfg["name"] == "small_cnn"
         else ResNet18(classes))
  state = {}

  def walk(tree, path, kind):
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, path + [re.sub(r"_(\d+)$", r".\1", k)], kind)
        continue
      a = np.asarray(v, np.float32)
      name = ".".join(path)
      if kind == "batch_stats":
        state[f"{name}.running_{k}"] = a
      elif k == "kernel":
        state[f"{name}.weight"] = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
      else:
        state[f"{name}.{'weight' if k == 'scale' else k}"] = a

  walk(variables["params"], [], "params")
  walk(variables["batch_stats"], [], "batch_stats")
  net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()},
                      strict=False)
  missing = [k for k in net.state_dict() if k not in state and "num_batches" not in k]
  if missing:
    raise ValueError(f"weights missing in the twin: {missing[:5]}")
  return net.eval()


# -------------------------------------------------------------------------------- the two sides


def child_official(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top  (child process only)
  torch.set_num_threads(args.torch_threads)
  sys.path.insert(0, REFERENCE)
  from autoattack import AutoAttack  # pylint: disable=g-import-not-at-top  (found at REFERENCE)
  model_cfg, variables = load_variables(args.workdir)
  net = torch_twin(model_cfg, variables)
  x, y = load_points(args.n)
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  yt = torch.from_numpy(y)
  os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
  log = os.path.join(os.path.dirname(os.path.abspath(args.results)), f".official_{os.getpid()}.log")
  adversary = AutoAttack(net, norm=args.norm, eps=EPSILONS[args.norm], version="standard",
                         seed=0, device="cpu", log_path=log)
  t0 = time.time()
  x_adv = adversary.run_standard_evaluation(xt, yt, bs=250)
  seconds = time.time() - t0
  with torch.no_grad():
    robust = (net(x_adv).argmax(1) == yt).float().mean().item()
    clean = (net(xt).argmax(1) == yt).float().mean().item()
  after, cum = {}, {}
  with open(log) as f:
    for line in f:
      m = re.match(r"robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)", line)
      if m:
        after[m.group(1).lower()] = float(m.group(2)) / 100
        cum[m.group(1).lower()] = float(m.group(3))
  os.remove(log)
  per, last = {}, 0.0
  for k, v in cum.items():
    per[k], last = v - last, v
  return dict(seconds=seconds, robust=robust, clean=clean, accuracy=after, attack_seconds=per,
              torch=torch.__version__, threads=args.torch_threads)


def child_ours(args) -> dict:
  host.configure_cpu_devices(os.cpu_count() or 1, "reduce")  # before JAX starts a backend
  model_cfg, variables = load_variables(args.workdir)
  kwargs = {"width": model_cfg["width"]} if model_cfg["name"] == "small_cnn" else {}
  # The attacks take `logits_fn` as it is: the model gets the library's CPU convolutions itself,
  # as the evaluate command gives them to AutoAttack (one device of the host's runs each batch:
  # every core for each oneDNN call, `Convolutions.on_one_device`; kernels packed once per pass,
  # `for_attacks`).
  conv = cpu.choose("auto").on_one_device().for_attacks().conv
  net = models.get_model(model_cfg["name"], 10, conv=conv, **kwargs)
  logits_fn = lambda z: net.apply(variables, z, train=False)
  x, y = load_points(args.n)
  # The twin agrees (checked here, where both frameworks are at hand, before timing).
  import torch  # pylint: disable=g-import-not-at-top  (not a library dependency)
  twin = torch_twin(model_cfg, variables)
  with torch.no_grad():
    lt = twin(torch.from_numpy(np.ascontiguousarray(x[:64].transpose(0, 3, 1, 2)))).numpy()
  diff = float(np.abs(np.asarray(jax.jit(logits_fn)(x[:64])) - lt).max())
  if diff > 1e-3:
    raise ValueError(f"the PyTorch twin's logits differ by {diff}")
  # Where the time goes: XLA compilation (tracing, lowering, backend compile), stamped with its
  # end time so that it can be put under the attack running then (attacks run one after the
  # other; `result.seconds` gives their durations in order).
  compiles = []
  for event in ("/jax/core/compile/jaxpr_trace_duration",
                "/jax/core/compile/jaxpr_to_mlir_module_duration",
                "/jax/core/compile/backend_compile_duration"):
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, event=event, **kw: compiles.append((time.time(), secs))
        if name == event else None)
  t0 = time.time()
  result = attacks.run_autoattack(logits_fn, x, y, jax.random.key(0),
                                  epsilon=EPSILONS[args.norm], norm=args.norm,
                                  batch_size=args.batch_size, progress=False)
  seconds = time.time() - t0
  compile_seconds, start = {}, t0
  for name, took in result.seconds.items():
    compile_seconds[name] = sum(d for t, d in compiles if start <= t < start + took)
    start += took
  return dict(seconds=seconds, robust=result.robust_accuracy, clean=result.clean_accuracy,
              accuracy={k: v for k, v in result.accuracy.items() if k != "clean"},
              attack_seconds=dict(result.seconds), compile_seconds=compile_seconds,
              warnings=list(result.warnings),
              devices=len(jax.local_devices()), batch_size=args.batch_size,
              logit_diff=diff, jax=jax.__version__)


# ---------------------------------------------------------------------------------- the driver


def run_child(cmd: list[str], what: str) -> dict:
  """Runs `cmd` (a child side of a benchmark) from the repository root and returns the JSON of
  its last `RESULT ` line; exits naming `what` with the child's error output otherwise."""
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode != 0 or not lines:
    raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def machine() -> dict:
  info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "cores": os.cpu_count(), "python": platform.python_version()}
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", lscpu)
    flags = re.search(r"Flags:\s*(.+)", lscpu)
    info["cpu"] = model.group(1).strip() if model else platform.processor()
    fl = flags.group(1).split() if flags else []
    info["avx512_bf16"] = "avx512_bf16" in fl
    info["amx"] = sorted(f for f in fl if f.startswith("amx"))
  except OSError:
    info["cpu"] = platform.processor()
  info["loadavg"] = list(os.getloadavg())
  try:  # the code measured: commit, "-dirty" when the working tree has changes
    info["commit"] = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip()
  except OSError:
    pass
  return info


def write_markdown(results: dict, path: str, source: str) -> None:
  lines = ["# AutoAttack: official PyTorch code vs `run_autoattack` (same weights, same points)",
           "", "Written by `experiments/benchmarks/autoattack_benchmark.py` from "
           f"`{os.path.basename(source)}`."
           " Version standard at L-inf eps 8/255 (a case `model:points:L2` or `:L1`: L2 eps 0.5,"
           " L1 eps 12); official: torch CPU, bs=250, seed=0; ours: "
           "`run_autoattack` with its defaults (one device, batch_size 500; the model's oneDNN "
           "convolutions on every core since 2026-12-07, as the evaluate command runs them), "
           "wall time including "
           "XLA compilation (in brackets after each attack's seconds: the part spent tracing, "
           "lowering and compiling, where recorded). ratio = official s / our s (> 1: ours "
           "faster). Load average: the 1-minute figure when the side finished.", "",
           "| case | rep | official s | ours s | ratio | robust official % | robust ours % | "
           "official s per attack (ce / t / fab-t / square) | ours s per attack | load avg "
           "| date |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for case, reps in sorted(results["cases"].items()):
    for rep, e in sorted(reps.items()):
      o, u = e.get("official"), e.get("ours")
      f = lambda d, k, s=1.0, fmt="{:.1f}": "—" if not d or k not in d else fmt.format(s * d[k])
      # Per attack: wall seconds, and for ours "(of which compiling)" where recorded.
      per = lambda d: "—" if not d else " / ".join(
          f"{d['attack_seconds'].get(a, 0):.0f}"
          + (f" ({d['compile_seconds'].get(a, 0):.0f})" if "compile_seconds" in d else "")
          for a in ("apgd-ce", "apgd-t", "fab-t", "square"))
      ratio = f"{o['seconds'] / u['seconds']:.2f}" if o and u else "—"
      load = (o or u or {}).get("machine", {}).get("loadavg", ["?"])[0]
      date = (o or u or {}).get("machine", {}).get("date", "")
      lines.append(f"| {case} | {rep} | {f(o, 'seconds')} | {f(u, 'seconds')} | {ratio} | "
                   f"{f(o, 'robust', 100)} | {f(u, 'robust', 100)} | {per(o)} | {per(u)} | "
                   f"{load} | {date} |")
  notes = [f"- {case} rep {rep} {side}: {e[side]['note']}" for case, reps in
           sorted(results["cases"].items()) for rep, e in sorted(reps.items())
           for side in ("official", "ours") if e.get(side, {}).get("note")]
  if notes:
    lines += ["", "Notes:"] + notes
  m = results.get("machine", {})
  lines += ["", f"Machine: {m.get('cpu')}, {m.get('cores')} cores, avx512_bf16 "
            f"{m.get('avx512_bf16')}, amx {m.get('amx')}.", "",
            "Commands: " + "; ".join(f"`{c}`" for c in results.get("commands", []))]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv=None):
  args = parse_args(argv)
  if args.child:
    out = child_official(args) if args.child == "official" else child_ours(args)
    out["machine"] = machine()
    print("RESULT " + json.dumps(out), flush=True)
    return
  if not os.path.isdir(os.path.join(REFERENCE, "autoattack")) or not os.path.exists(DATA):
    raise SystemExit(f"needs the official code at {REFERENCE} and the data at {DATA}")
  results = {"cases": {}, "commands": []}
  if os.path.exists(args.results):
    with open(args.results) as f:
      results = json.load(f)
  results["machine"] = machine()
  command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
  if command not in results["commands"]:
    results["commands"].append(command)

  def save():
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    tmp = args.results + ".tmp"
    with open(tmp, "w") as f:
      json.dump(results, f, indent=1)
    os.replace(tmp, args.results)
    write_markdown(results, os.path.splitext(args.results)[0] + ".md", args.results)

  workdirs = {"small_cnn": args.small_cnn_workdir, "resnet18": args.resnet18_workdir}
  for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
    model, n, *rest = case.split(":")  # model:points[:norm], the norm Linf by default
    norm = rest[0] if rest else "Linf"
    if norm not in EPSILONS:
      raise SystemExit(f"case {case}: the norm must be one of {', '.join(EPSILONS)}")
    workdir = workdirs[model]
    if not os.path.exists(os.path.join(workdir, "config.json")):
      cmd = train_command(model, workdir, 6 if model == "small_cnn" else args.resnet18_epochs)
      print("training the weights first:", " ".join(cmd), flush=True)
      subprocess.run(cmd, cwd=ROOT, check=True)
    for rep in range(args.repeats):
      entry = results["cases"].setdefault(case, {}).setdefault(str(rep), {})
      for side in args.sides.split(","):
        if side in entry and not args.force:
          continue
        cmd = [sys.executable, os.path.abspath(__file__), f"--child={side}", f"--n={n}",
               f"--workdir={workdir}", f"--batch_size={args.batch_size}",
               f"--torch_threads={args.torch_threads}", f"--results={args.results}",
               f"--norm={norm}"]
        print(f"[{case} rep {rep}] {side} ...", flush=True)
        entry[side] = run_child(cmd, side)
        if args.note:
          entry[side]["note"] = args.note
        e = entry[side]
        print(f"  {side}: {e['seconds']:.1f} s, robust {100 * e['robust']:.2f} %, per attack "
              f"{ {k: round(v, 1) for k, v in e['attack_seconds'].items()} }", flush=True)
        save()
  save()


if __name__ == "__main__":
  main()
