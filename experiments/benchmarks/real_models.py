"""PGD-20 and AutoAttack on real-sized models: the evaluate command against the PyTorch code a
user would otherwise run, same weights, same points, same machine, one command.

For each model (RobustBench's `ResNet18` and its / TRADES' `WideResNet(depth=28,
widen_factor=10)`, PyTorch's default initialisation, seed 0: random weights), it

1. builds the PyTorch model (the port in tests/crosscheck/robustbench_twins.py, RobustBench's
   classes), saves its `state_dict` as a .pt and converts it the way a user does
   (`python -m regmix_jax.convert --checkpoint=... --model=... --workdir=...`), then checks that
   the converted run's logits equal PyTorch's on 16 points;
2. PGD-20: times `python -m regmix_jax.evaluate --workdir=... --attacks=pgd20 --n_examples=N`
   (the whole command: start-up, restore, compilation, attack) against a PyTorch process running
   the released FGSM-PGK `attack_pgd` (jiaxiaojunQAQ/FGSM-PGK utils.py, read at 302141a: one
   uniform random start, 20 sign steps of 2/255 in the 8/255 ball, a sample stops moving once
   misclassified, batches of 128 as its `--batch-size` default), eager, `channels_last` or NCHW
   (`--layouts`), `torch.set_num_threads(--torch_threads)`;
3. AutoAttack: `evaluate --attacks=aa` (standard, L-inf 8/255) against the official
   fra31/auto-attack (`run_standard_evaluation`, bs 250, seed 0) on the same model in a PyTorch
   process.

Each side runs in its own process, one after the other; the machine should be otherwise quiet.
Wall seconds are the process's (a user waits for all of it), beside the attack's own seconds
(ours: the evaluate record's, compilation included). Random weights classify about 10% of the
points correctly, so AutoAttack's later attacks have little or nothing left to attack: its row
times compilation and APGD-CE on those points. Results: experiments/results/real_models_cpu.json
and .md.

  python experiments/benchmarks/real_models.py                        # both models, 200 points
  python experiments/benchmarks/real_models.py --models=resnet18 --parts=pgd20 --points=64

Needs torch (the `crosscheck` extra) and the official code at ../shared/reference/auto-attack.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import autoattack_benchmark as aa_bench  # pylint: disable=g-import-not-at-top,wrong-import-position

RESULTS = os.path.join(ROOT, "experiments", "results", "real_models_cpu.json")
# model name -> (our convert flags, its PyTorch class built from the robustbench_twins module)
MODELS = {
    "resnet18": (["--model=resnet18"], lambda twins: twins.ResNet18()),
    "wrn-28-10": (["--model=wrn", "--depth=28", "--width=10"],
                  lambda twins: twins.WideResNet(depth=28, widen_factor=10)),
}
EPS, ALPHA, PGD_STEPS, PGD_BATCH = 8 / 255, 2 / 255, 20, 128


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default=",".join(MODELS))
  p.add_argument("--parts", default="pgd20,aa")
  p.add_argument("--layouts", default="channels_last",
                 help="the PyTorch PGD peer's memory formats: channels_last and/or nchw")
  p.add_argument("--points", type=int, default=200)
  p.add_argument("--root", default=os.path.join(ROOT, "runs", "real_models"))
  p.add_argument("--torch_threads", type=int, default=2)
  p.add_argument("--results", default=RESULTS)
  p.add_argument("--force", action="store_true", help="rerun parts already in --results")
  # Internal: one PyTorch side in a child process.
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  p.add_argument("--model", default="", help=argparse.SUPPRESS)
  p.add_argument("--layout", default="nchw", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def torch_model(name: str):
  """RobustBench's class for `name`, PyTorch's default initialisation under seed 0, eval mode."""
  import torch  # pylint: disable=g-import-not-at-top  (child processes only: a benchmark extra)
  sys.path.insert(0, os.path.join(ROOT, "tests", "crosscheck"))
  import robustbench_twins  # pylint: disable=g-import-not-at-top  (found just above)
  torch.manual_seed(0)
  return MODELS[name][1](robustbench_twins).eval()


def points(n: int):
  return aa_bench.load_points(n)


def child_prepare(args) -> dict:
  """Saves the PyTorch model's weights and its logits on the first 16 points."""
  import torch  # pylint: disable=g-import-not-at-top
  net = torch_model(args.model)
  os.makedirs(args.root, exist_ok=True)
  path = os.path.join(args.root, f"{args.model}.pt")
  torch.save(net.state_dict(), path)
  x, _ = points(16)
  with torch.no_grad():
    logits = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
  np.save(os.path.join(args.root, f"{args.model}.logits.npy"), logits)
  return dict(checkpoint=path)


def _load(args):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.torch_threads)
  net = torch_model(args.model)
  net.load_state_dict(torch.load(os.path.join(args.root, f"{args.model}.pt"),
                                 weights_only=True))
  x, y = points(args.points)
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  if args.layout == "channels_last":
    net = net.to(memory_format=torch.channels_last)
    xt = xt.contiguous(memory_format=torch.channels_last)
  return torch, net, xt, torch.from_numpy(y)


def attack_pgd(torch, model, x, y, epsilon, alpha, attack_iters):
  """FGSM-PGK utils.py's `attack_pgd` (one restart), on [0, 1] inputs without normalisation:
  its uniform start, its per-sample early stop, its clamps."""
  F = torch.nn.functional
  delta = torch.zeros_like(x).uniform_(-epsilon, epsilon)
  delta.data = torch.max(torch.min(delta, 1 - x), 0 - x)
  delta.requires_grad = True
  for _ in range(attack_iters):
    output = model(x + delta)
    index = torch.where(output.max(1)[1] == y)
    if len(index[0]) == 0:
      break
    loss = F.cross_entropy(output, y)
    loss.backward()
    grad = delta.grad.detach()
    d = delta[index[0], :, :, :]
    g = grad[index[0], :, :, :]
    d = torch.clamp(d + alpha * torch.sign(g), -epsilon, epsilon)
    d = torch.max(torch.min(d, 1 - x[index[0]]), 0 - x[index[0]])
    delta.data[index[0], :, :, :] = d
    delta.grad.zero_()
  return delta.detach()


def child_pgd(args) -> dict:
  start = time.time()
  torch, net, xt, yt = _load(args)
  torch.manual_seed(0)
  t0 = time.time()
  correct = 0
  for i in range(0, len(yt), PGD_BATCH):
    xb, yb = xt[i:i + PGD_BATCH], yt[i:i + PGD_BATCH]
    delta = attack_pgd(torch, net, xb, yb, EPS, ALPHA, PGD_STEPS)
    with torch.no_grad():
      correct += (net(xb + delta).max(1)[1] == yb).sum().item()
  attack_s = time.time() - t0
  return dict(attack_s=attack_s, process_s=time.time() - start, robust=correct / len(yt),
              torch=torch.__version__, threads=args.torch_threads, layout=args.layout)


def child_official_aa(args) -> dict:
  start = time.time()
  torch, net, xt, yt = _load(args)
  sys.path.insert(0, aa_bench.REFERENCE)
  from autoattack import AutoAttack  # pylint: disable=g-import-not-at-top  (found at REFERENCE)
  log = os.path.join(args.root, f".official_{os.getpid()}.log")
  adversary = AutoAttack(net, norm="Linf", eps=EPS, version="standard", seed=0, device="cpu",
                         log_path=log)
  t0 = time.time()
  x_adv = adversary.run_standard_evaluation(xt, yt, bs=250)
  attack_s = time.time() - t0
  with torch.no_grad():
    robust = (net(x_adv).argmax(1) == yt).float().mean().item()
    clean = (net(xt).argmax(1) == yt).float().mean().item()
  per, last = {}, 0.0
  with open(log) as f:
    for line in f:
      m = re.match(r"robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)", line)
      if m:
        per[m.group(1).lower()], last = float(m.group(3)) - last, float(m.group(3))
  os.remove(log)
  return dict(attack_s=attack_s, process_s=time.time() - start, robust=robust, clean=clean,
              attack_seconds=per, torch=torch.__version__, threads=args.torch_threads)


def run_child(args, child: str, model: str, layout: str = "nchw") -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--child={child}", f"--model={model}",
         f"--points={args.points}", f"--root={args.root}", f"--layout={layout}",
         f"--torch_threads={args.torch_threads}"]
  return aa_bench.run_child(cmd, f"{child} ({model})")


def run_ours(workdir: str, attacks: str, n: int) -> dict:
  """The evaluate command, timed as a process; the attack's seconds from its record."""
  from regmix_jax import evaluate  # pylint: disable=g-import-not-at-top  (no JAX in the driver before)
  before = len(evaluate.read_eval_records(evaluate.records_path(workdir)))
  cmd = [sys.executable, "-m", "regmix_jax.evaluate", f"--workdir={workdir}",
         f"--attacks={attacks}", f"--n_examples={n}"]
  t0 = time.time()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  process_s = time.time() - t0
  if proc.returncode != 0:
    raise SystemExit(f"evaluate failed:\n{proc.stderr[-3000:]}")
  records = evaluate.read_eval_records(evaluate.records_path(workdir))
  if len(records) != before + 1:
    raise SystemExit(f"evaluate wrote no record:\n{proc.stdout[-2000:]}")
  r = records[-1].to_json()
  return dict(process_s=process_s, attack_s=r["seconds"][attacks], robust=r["accuracy"][attacks],
              accuracy=r["accuracy"], seconds=r["seconds"], command=" ".join(cmd[1:]),
              output=proc.stdout[-1500:])


def prepare(args, model: str) -> str:
  """The converted run of `model`'s PyTorch weights (made once), checked against PyTorch."""
  workdir = os.path.join(args.root, model)
  if not os.path.exists(os.path.join(workdir, "config.json")):
    out = run_child(args, "prepare", model)
    cmd = [sys.executable, "-m", "regmix_jax.convert", f"--checkpoint={out['checkpoint']}",
           *MODELS[model][0], "--num_classes=10", f"--workdir={workdir}",
           "--data_source=files", f"--data_dir={aa_bench.DATA}"]
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
  import jax  # pylint: disable=g-import-not-at-top  (after the children: the driver stays light)
  from regmix_jax import config as config_lib, evaluate  # pylint: disable=g-import-not-at-top
  config = config_lib.load_json(os.path.join(workdir, "config.json"))
  nets, state, _ = evaluate.restore_state(workdir, config, 10, (32, 32, 3))
  x, _ = points(16)
  ours = np.asarray(jax.jit(lambda z: nets["target"].clone(axis_name=None).apply(
      state.eval_variables("target"), z, train=False))(x))
  theirs = np.load(os.path.join(args.root, f"{model}.logits.npy"))
  diff = float(np.abs(ours - theirs).max() / max(1.0, np.abs(theirs).max()))
  if diff > 1e-4:
    raise SystemExit(f"{model}: the converted logits differ from PyTorch's by {diff:.2e}")
  return workdir


def write_markdown(results: dict, path: str) -> None:
  m = results["machine"]
  lines = ["# PGD-20 and AutoAttack on ResNet-18 / WRN-28-10: the evaluate command vs PyTorch",
           "", f"Written by `experiments/benchmarks/real_models.py` from "
           f"`{os.path.basename(path)[:-3]}.json`. Random weights (PyTorch's initialisation, "
           "seed 0) converted with `regmix_jax.convert`; the first N test images of the CIFAR-10 "
           "subset; L-inf 8/255. process s: the whole process (start-up, weights, compilation, "
           "attack); attack s: the attack alone (ours: the evaluate record's, compilation "
           "included). ratio = PyTorch process s / ours (> 1: ours faster).", "",
           "| model | part | N | PyTorch side | PyTorch process s (attack s) | ours process s "
           "(attack s) | ratio | robust % PyTorch / ours | PyTorch s per attack | ours s per "
           "attack | date |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for key, e in sorted(results["runs"].items()):
    model, part, n = key.split(":")
    ours = e.get("ours")
    for side, t in sorted(e.items()):
      if side == "ours":
        continue
      per = lambda d: " / ".join(f"{d.get(a, 0):.0f}" for a in (
          "apgd-ce", "apgd-t", "fab-t", "square")) if d else "-"
      ours_per = per({k[3:]: v for k, v in ours["seconds"].items() if k.startswith("aa:")}) if (
          ours and part == "aa") else "-"
      ratio = f"{t['process_s'] / ours['process_s']:.2f}" if ours else "-"
      o = f"{ours['process_s']:.1f} ({ours['attack_s']:.1f})" if ours else "-"
      robust = f"{100 * ours['robust']:.1f}" if ours else "-"
      lines.append(f"| {model} | {part} | {n} | {side} | {t['process_s']:.1f} "
                   f"({t['attack_s']:.1f}) | {o} | {ratio} | {100 * t['robust']:.1f} / "
                   f"{robust} | {per(t.get('attack_seconds'))} | {ours_per} | "
                   f"{t.get('date', '')} |")
  lines += ["", f"Machine: {m.get('cpu')}, {m.get('cores')} cores, avx512_bf16 "
            f"{m.get('avx512_bf16')}, amx {m.get('amx')}; load average when written "
            f"{m.get('loadavg')}.", "", "Commands: " + "; ".join(
                f"`{c}`" for c in results.get("commands", []))]
  ours_cmds = sorted({e["ours"]["command"] for e in results["runs"].values() if "ours" in e})
  lines += ["", "Our side's commands (from the repository root):"] + [
      f"- `python {c}`" for c in ours_cmds]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv=None):
  args = parse_args(argv)
  if args.child:
    fn = {"prepare": child_prepare, "pgd20": child_pgd, "aa": child_official_aa}[args.child]
    print("RESULT " + json.dumps(fn(args)), flush=True)
    return
  results = {"runs": {}, "commands": []}
  if os.path.exists(args.results):
    with open(args.results) as f:
      results = json.load(f)
  command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
  if command not in results["commands"]:
    results["commands"].append(command)

  def save():
    results["machine"] = aa_bench.machine()
    with open(args.results + ".tmp", "w") as f:
      json.dump(results, f, indent=1)
    os.replace(args.results + ".tmp", args.results)
    write_markdown(results, os.path.splitext(args.results)[0] + ".md")

  for model in args.models.split(","):
    workdir = prepare(args, model)
    for part in args.parts.split(","):
      entry = results["runs"].setdefault(f"{model}:{part}:{args.points}", {})
      sides = ([f"pytorch-{l}" for l in args.layouts.split(",")] if part == "pgd20"
               else ["official-nchw"]) + ["ours"]
      for side in sides:
        if side in entry and not args.force:
          continue
        print(f"[{model} {part} {args.points}] {side} ...", flush=True)
        if side == "ours":
          out = run_ours(workdir, part, args.points)
        else:
          out = run_child(args, part, model, side.split("-", 1)[1])
        out["date"] = time.strftime("%Y-%m-%d %H:%M")
        entry[side] = out
        print(f"  process {out['process_s']:.1f} s, attack {out['attack_s']:.1f} s, robust "
              f"{100 * out['robust']:.1f} %", flush=True)
        save()
  save()


if __name__ == "__main__":
  main()
