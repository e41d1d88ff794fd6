"""ResNet-18's convolutions one by one on this CPU: XLA's (as the library runs them,
`fast_conv.FastConv()`), oneDNN's through the library's FFI call (`regmix_jax.cpu.onednn`) and
PyTorch's, forward, input gradient and kernel gradient, all in one process, each the best of
`--reps` timed calls.

  pip install -e ".[onednn,crosscheck]"
  python experiments/benchmarks/conv_layers.py --batch=128 --threads=2

The threads: XLA's and oneDNN's run on this process's one CPU device (so XLA's Eigen pool and
oneDNN's OpenMP threads use every core); PyTorch's `--threads`. `regmix_jax.cpu.onednn.MIN_SIZE`
and `MIN_SIZE_BY_VENDOR` (`onednn.default_min_size`: which layers the library sends to oneDNN
by default) come from these tables. The weighted total counts
each shape by its layers in ResNet-18 and its passes in an FGSM-PGK step (forward and input
gradient twice, kernel gradient once).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault(  # the library's CPU default (config.cpu_ynn_fusion_type), before JAX starts
    "XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=reduce")

import jax  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

from regmix_jax.cpu import fast_conv, onednn  # noqa: E402  pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
# (input size, in channels, out channels, kernel, stride, layers of this shape in ResNet-18)
SHAPES = [(32, 3, 64, 3, 1, 1), (32, 64, 64, 3, 1, 4), (32, 64, 128, 3, 2, 1),
          (16, 128, 128, 3, 1, 3), (32, 64, 128, 1, 2, 1), (16, 128, 256, 3, 2, 1),
          (16, 128, 256, 1, 2, 1), (8, 256, 256, 3, 1, 3), (8, 256, 512, 3, 2, 1),
          (8, 256, 512, 1, 2, 1), (4, 512, 512, 3, 1, 3)]
PASSES = (2, 2, 1)  # forward, input gradient, kernel gradient in an FGSM-PGK step


def _jax_times(conv, x, w, g, reps: int) -> list[float]:
  fwd = jax.jit(conv)
  dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
  dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
  return [1e3 * harness.best_seconds(f, args, reps)
          for f, args in ((fwd, (x, w)), (dx, (x, w, g)), (dw, (x, w, g)))]


def _torch_times(torch, x, w, g, stride: int, pad: int, reps: int) -> list[float]:
  xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
  wt = torch.tensor(np.asarray(w)).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
  gt = torch.tensor(np.asarray(g)).permute(0, 3, 1, 2).contiguous()
  conv = lambda: torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad)
  y = conv()
  parts = []
  for part in range(3):
    best = float("inf")
    for _ in range(reps + 1):
      start = time.perf_counter()
      if part == 0:
        with torch.no_grad():
          conv()
      else:
        torch.autograd.grad(y, [xt if part == 1 else wt], gt, retain_graph=True)
      best = min(best, time.perf_counter() - start)
    parts.append(best * 1e3)
  return parts


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--threads", type=int, default=2, help="PyTorch's threads")
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--results", default=os.path.join(harness.RESULTS, "conv_layers_cpu.json"))
  args = p.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top  (the comparison only; a benchmark extra)
  torch.set_num_threads(args.threads)
  onednn.load()
  threads = onednn.threads_per_device()  # one device here: every core
  record = dict(date=time.strftime("%Y-%m-%d %H:%M"), batch=args.batch,
                machine=harness.machine(), cpu_flags=harness.cpu_flags(),
                onednn_threads=threads, torch_threads=args.threads,
                xla_flags=os.environ["XLA_FLAGS"], rows=[])
  print(f"{record['machine']}; batch {args.batch}; ms: forward / input gradient / kernel "
        "gradient")
  totals = {"xla": 0.0, "onednn": 0.0, "torch": 0.0}
  key = jax.random.key(0)
  xla_conv = fast_conv.FastConv()  # XLA's convolutions with the library's gradient rules
  for size, cin, cout, k, stride, count in SHAPES:
    pad = k // 2
    k1, k2, k3, key = jax.random.split(key, 4)
    x = jax.random.normal(k1, (args.batch, size, size, cin))
    w = jax.random.normal(k2, (k, k, cin, cout)) / np.sqrt(k * k * cin)
    padding = ((pad, pad), (pad, pad))
    xla = lambda x, w: xla_conv(  # noqa: E731
        x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    g = jax.random.normal(k3, jax.eval_shape(xla, x, w).shape)
    ours = lambda x, w: onednn.conv(x, w, (stride, stride), padding, threads)  # noqa: E731
    row = dict(shape=f"{size}x{size} {cin}->{cout} k{k} s{stride}", layers=count,
               xla=_jax_times(xla, x, w, g, args.reps), onednn=_jax_times(ours, x, w, g, args.reps),
               torch=_torch_times(torch, x, w, g, stride, pad, args.reps))
    for name in totals:
      totals[name] += count * sum(n * t for n, t in zip(PASSES, row[name]))
    record["rows"].append(row)
    fmt = lambda t: " / ".join(f"{v:6.1f}" for v in t)  # noqa: E731
    print(f"{row['shape']:24s} x{count}  xla {fmt(row['xla'])} | onednn {fmt(row['onednn'])} | "
          f"torch {fmt(row['torch'])}", flush=True)
  record["weighted_total_ms"] = totals
  print("weighted over ResNet-18's layers and an FGSM-PGK step's passes (ms): " +
        ", ".join(f"{k} {v:.0f}" for k, v in totals.items()))
  runs = []
  if os.path.exists(args.results):
    with open(args.results) as f:
      runs = json.load(f)
  with open(args.results, "w") as f:
    json.dump(runs + [record], f, indent=1)


if __name__ == "__main__":
  main()
