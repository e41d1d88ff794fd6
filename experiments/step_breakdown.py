"""Where a train step's time goes, ours and PyTorch's: the step timed whole and with parts of its
convolution work replaced by cheap stand-ins of the same shapes, each case in its own process.

  python experiments/step_breakdown.py --data=../shared/data/cifar10_subset.npz
  python experiments/step_breakdown.py --method=fgsm_pgk --model=resnet18 --repeats=2

Cases (`benchmark.run_train` / `benchmark.run_torch`, batch 128, the `--variant` of ours):
  jax:full             the step as the library runs it
  jax:no_convs         every convolution replaced by a stand-in: the input taken at the stride,
                       tiled to the output's channels, times the kernel's sum (elementwise work of
                       the output's size; its gradients are elementwise too)
  jax:no_kernel_grads  convolutions' kernel gradients replaced (`fast_conv._kernel_tangent` gives
                       the sum of the kernel tangent, broadcast; its transpose is a broadcast)
  jax:no_input_grads   convolutions' input gradients replaced likewise (`fast_conv._input_tangent`)
  torch:full           the PyTorch eager step (`torch_reference`), --torch_threads threads
  torch:no_convs       every `nn.Conv2d` replaced by the same stand-in
Then: convolutions = full - no_convs; kernel gradients = full - no_kernel_grads; input gradients
= full - no_input_grads; forward convolutions = the rest. The stand-ins keep every other op (the
step's values change, its work elsewhere does not), so the differences are what the replaced
work costs inside the step, where it shares caches and cores with the rest. The cases run in
rounds (one of each case per round, `--repeats` rounds); each figure is the median over rounds of
a case's median block. This is a diagnostic that replaces library internals in its child
processes only; `benchmark.py` gives the rates.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from regmix_jax import fast_conv, runtime

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
from common import DEFAULT_DATA, require_data  # pylint: disable=g-import-not-at-top,wrong-import-position

CASES = ("jax:full", "jax:no_convs", "jax:no_kernel_grads", "jax:no_input_grads", "torch:full",
         "torch:no_convs")


def _stand_in(x, out_channels: int, stride: int, kernel_sum, channel_axis: int, tile):
  """The input at the stride, tiled to `out_channels` channels (`tile(array, repeats)`), times the
  kernel's sum per output channel: a convolution's output shape (padding kernel // 2) at
  elementwise cost. For JAX and PyTorch arrays alike."""
  spatial = [d for d in range(1, x.ndim) if d != channel_axis]
  index = [slice(None)] * x.ndim
  for d in spatial:
    index[d] = slice(None, None, stride)
  taken = x[tuple(index)]
  repeats = [1] * x.ndim
  repeats[channel_axis] = -(-out_channels // x.shape[channel_axis])
  tiled = tile(taken, repeats)
  index = [slice(None)] * x.ndim
  index[channel_axis] = slice(0, out_channels)
  return tiled[tuple(index)] * kernel_sum


def _jax_conv_stand_in(lhs, rhs, window_strides, padding, *args, **kwargs):
  del padding, args, kwargs  # the models' convolutions: NHWC / HWIO, padding kernel // 2
  return _stand_in(lhs, rhs.shape[-1], window_strides[0], rhs.sum(axis=(0, 1, 2)), 3,
                   jnp.tile)


def _output_shape(lhs, rhs, params):
  return jax.eval_shape(lambda: fast_conv._CONV.bind(lhs, rhs, **params))  # pylint: disable=protected-access


def _no_kernel_grads():
  def tangent(lhs, d_rhs, params):
    out = _output_shape(lhs, d_rhs, params)
    return jnp.broadcast_to(jnp.sum(d_rhs), out.shape).astype(out.dtype)
  fast_conv._kernel_tangent = tangent  # pylint: disable=protected-access


def _no_input_grads():
  def tangent(d_lhs, rhs, params):
    out = _output_shape(d_lhs, rhs, params)
    return jnp.broadcast_to(jnp.sum(d_lhs), out.shape).astype(out.dtype)
  fast_conv._input_tangent = tangent  # pylint: disable=protected-access


def child(case: str, args) -> dict:
  side, part = case.split(":")
  if side == "torch":
    # torch is no dependency of the library: imported only by the cases that run it.
    import torch  # pylint: disable=g-import-not-at-top
    if part == "no_convs":
      torch.nn.Conv2d.forward = lambda self, x: _stand_in(
          x, self.out_channels, self.stride[0], self.weight.sum(dim=(1, 2, 3))[:, None, None], 1,
          lambda t, repeats: t.repeat(*repeats))
    return benchmark.run_torch(args.model, args.torch_threads, args.data, args.blocks,
                               args.block_steps, method=args.method)
  variant = benchmark.VARIANTS[args.variant]
  runtime.configure_cpu_devices(variant["devices"], benchmark.ynn_fusion_type(variant))
  if part == "no_convs":
    fast_conv.conv_general_dilated = _jax_conv_stand_in
  elif part == "no_kernel_grads":
    _no_kernel_grads()
  elif part == "no_input_grads":
    _no_input_grads()
  return benchmark.run_train(args.method, args.model, variant, args.data, args.blocks,
                             args.block_steps, pipeline=False)


def run_case(case: str, args) -> float:
  """The case's step seconds (its median block), from a child process."""
  command = [sys.executable, os.path.abspath(__file__), f"--case={case}", f"--data={args.data}",
             f"--method={args.method}", f"--model={args.model}", f"--variant={args.variant}",
             f"--blocks={args.blocks}", f"--block_steps={args.block_steps}",
             f"--torch_threads={args.torch_threads}"]
  result = benchmark.run_child(command, benchmark.VARIANTS[args.variant].get("xla", ""))
  if "error" in result:
    raise RuntimeError(f"case {case} failed:\n{result['error']}")
  return result["step_s"]


def breakdown(step_s: dict[str, float]) -> list[tuple[str, float | None, float | None]]:
  """(row, ours s, PyTorch s) from each case's step seconds."""
  full, torch_full = step_s["jax:full"], step_s["torch:full"]
  convs, torch_convs = full - step_s["jax:no_convs"], torch_full - step_s["torch:no_convs"]
  kernel = full - step_s["jax:no_kernel_grads"]
  inputs = full - step_s["jax:no_input_grads"]
  return [("whole step", full, torch_full),
          ("without convolutions (stand-ins)", step_s["jax:no_convs"], step_s["torch:no_convs"]),
          ("convolutions (difference)", convs, torch_convs),
          ("  of which kernel gradients", kernel, None),
          ("  of which input gradients", inputs, None),
          ("  of which forward passes (the rest)", convs - kernel - inputs, None)]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", default=DEFAULT_DATA)
  p.add_argument("--method", default="fgsm_pgk")
  p.add_argument("--model", default="resnet18")
  p.add_argument("--variant", default="2dev", help="a benchmark.VARIANTS name, for ours")
  p.add_argument("--torch_threads", type=int, default=2)
  p.add_argument("--blocks", type=int, default=3)
  p.add_argument("--block_steps", type=int, default=2)
  p.add_argument("--repeats", type=int, default=2, help="rounds of every case")
  p.add_argument("--results", default=os.path.join(HERE, "results", "step_breakdown_cpu.json"))
  p.add_argument("--case", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  require_data(args.data)
  if args.case:
    print("RESULT " + json.dumps(child(args.case, args)))
    return
  runs = {case: [] for case in CASES}
  for _ in range(args.repeats):
    for case in CASES:
      runs[case].append(run_case(case, args))
      print(f"{case:22s} {runs[case][-1]:.3f} s/step", flush=True)
  step_s = {case: statistics.median(v) for case, v in runs.items()}
  rows = breakdown(step_s)
  record = {"command": " ".join(["python", "experiments/step_breakdown.py"] + sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": benchmark.machine(),
            "cpu_flags": benchmark.cpu_flags(), "method": args.method, "model": args.model,
            "variant": args.variant, "torch_threads": args.torch_threads, "runs_s": runs,
            "step_s": step_s, "rows": rows}
  with open(args.results, "w") as f:
    json.dump(record, f, indent=1)
  lines = [f"# Step breakdown: {args.method} {args.model}, batch 128", "",
           f"{record['date']}, {record['machine']}; ours `{args.variant}`, PyTorch "
           f"{args.torch_threads} threads. Written by `{record['command']}` (see its docstring).",
           "", "| seconds per step | ours | PyTorch |", "| --- | --- | --- |"]
  fmt = lambda v: "-" if v is None else f"{v:.2f}"
  lines += [f"| {row} | {fmt(ours)} | {fmt(theirs)} |" for row, ours, theirs in rows]
  with open(os.path.splitext(args.results)[0] + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
