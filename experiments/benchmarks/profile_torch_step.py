"""Where one eager PyTorch train step's time goes on CPU, by operator: the peer of
`profile_step.py` (which does ours), for the same method, model and batch.

  python experiments/benchmarks/profile_torch_step.py --dtype=bfloat16 --channels_last

Builds the step as `benchmark.py`'s torch suites do (`suites_train.torch_step`: batch 128 of the
subset, `torch.autocast` for bfloat16, `channels_last` when asked), runs two steps, then
profiles a third with `torch.profiler` and prints the operators' self CPU time (the work each
does itself, its callees excluded), largest first, grouped as `profile_step.py` groups ours:
convolution forward, its input and kernel gradient, and the rest. torch is no library dependency
(`pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu`).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the modules beside this one; experiments/common.py
# pylint: disable=g-import-not-at-top,wrong-import-position
import suites_train
from common import DEFAULT_DATA
# pylint: enable=g-import-not-at-top,wrong-import-position

# Operator -> group (self CPU time; a convolution's backward computes both gradients in one op).
GROUPS = {"aten::mkldnn_convolution": "conv forward", "aten::_convolution": "conv forward",
          "aten::convolution_backward": "conv backward (input and kernel gradients)",
          "aten::native_batch_norm": "batch norm", "aten::native_batch_norm_backward": "batch norm",
          "aten::_batch_norm_with_update": "batch norm"}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--method", default="fgsm_pgk")
  p.add_argument("--model", default="resnet18")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--channels_last", action="store_true")
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--data", default=DEFAULT_DATA)
  p.add_argument("--top", type=int, default=15)
  args = p.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top  (no library dependency)
  step = suites_train.torch_step(args.model, args.threads, args.data, args.dtype, args.method,
                                 args.channels_last)
  step(), step()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
  rows = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()]
  total = sum(r[1] for r in rows)
  print(f"torch {torch.__version__} {args.method} {args.model} {args.dtype} "
        f"{'channels_last' if args.channels_last else 'NCHW'}, {args.threads} threads: profiled "
        f"step {seconds:.2f} s, operators' self CPU time {total:.2f} s")
  groups = collections.Counter()
  for key, s, _ in rows:
    groups[GROUPS.get(key, "other")] += s
  print("  " + ", ".join(f"{g} {s:.2f}" for g, s in groups.most_common()))
  print("operators by self CPU time (s, calls):")
  for key, s, n in sorted(rows, key=lambda r: -r[1])[:args.top]:
    print(f"  {key:40s} {s:6.3f} {n:4d}")


if __name__ == "__main__":
  main()
