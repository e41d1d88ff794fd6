"""Speed of regmix_jax on this machine, and of PyTorch eager steps beside it.

Measures, at batch 128 on real CIFAR-10 images (the subset's first shuffled batch), by suite
(`--suites`):
  train      images/s of the train step (`Trainer.train_step` of `train.build_trainer`, what the
             CLI runs) for each method and model, the batch already on the devices (median of
             timed blocks; see `harness.block_plan`); the first step's wall time and XLA compile
             time; compiles and traces in steps 2..N (should be 0); peak host RSS; which
             convolutions ran (`Trainer.convolutions`). `suites_train.run_train`.
  pipeline   the same step fed by the real input pipeline (`Trainer.batches`: shuffled loader,
             the method's per-example state gathered, two batches put ahead; the state written
             back through `Trainer.sample_sync`), in blocks alternating with blocks on a resident
             batch in the same process. `suites_train.run_train`.
  torch      the PyTorch eager step of each method in --methods that has one (`torch_reference`:
             FGSM-PGK; PGD-AT and TRADES both as released and doing the same work as ours,
             `harness.TORCH_STEPS`) on the same batch; `torch-bf16` the same steps under
             `torch.autocast` (bfloat16). `suites_train.run_torch`.
  eval       PGD-20 as the training loop evaluates (`evaluation.eval_step`, 3 batches incl. a
             padded one: one compile), and AutoAttack's worst case: every point stays robust to
             the end, so every attack runs its full budget on every point (a model with logits
             `1e-6 * f(x) + 10 * onehot(0)` and label 0: all the network's work, no early exit).
             `suites_eval.run_eval`.
  micro      one convolution's forward pass, input gradient and kernel gradient on one device
             (lax's, and the kernel gradient as 9 shifted dots); the latency of one in-process
             all-reduce between 2 host devices (sync BatchNorm's).
             `suites_micro.run_conv_micro`, `suites_micro.run_allreduce_micro`.
  dtype      a convolution and matrix products in float32 and bfloat16 under each variant's XLA
             flags, and in PyTorch. `suites_micro.run_dtype_micro`,
             `suites_micro.run_torch_dtype_micro`.

Each case runs in its own Python process (its compile, peak memory and XLA flags are its own),
one at a time, each train case right next to the PyTorch steps it is compared with; results go
to a JSON file keyed by case (default experiments/results/benchmark_cpu.json), so a stopped run
resumes, and then to markdown tables (`result_tables.write_markdown`). `--rounds=N` runs the
compared cases N times, alternating which side of a pair goes first, and reports medians and
every round's ratio (`rounds.schedule`, `rounds.merge_round`). Take N even: here the side that
ran first was faster by about 4% on average (2026-11-28, results/benchmark_steps_cpu.notes.md).
Variants (`--variants`, `harness.VARIANTS`) name the device count, the mapping, the dtype, XLA
flags and the convolutions: a variant's `convolutions` is `config.cpu_convolutions` (without
one, the config's default), resolved in the child by `cpu.choose`, with the variant's
`onednn_min_size` (`2dev-dnnl8`) put in the `cpu.Convolutions` handed to `train.build_trainer`
(`harness.convolutions`).

  python experiments/benchmarks/benchmark.py --data=../shared/data/cifar10_subset.npz   # all
  python experiments/benchmarks/benchmark.py --suites=train --models=resnet18 --variants=1dev,2dev
  python experiments/benchmarks/benchmark.py --suites=torch,train --methods=fgsm_pgk \\
      --models=resnet18 --rounds=6

Modules beside this one: `harness` (variants, configs, convolutions, child processes, timing,
the machine's line), `rounds` (`--rounds`), `result_tables` (ratios and markdown),
`suites_train`, `suites_eval`, `suites_micro`. torch is imported only by the PyTorch cases (pip
install torch==2.13.0; not a dependency). Importing JAX starts no backend: each child sets its
device count and XLA flags (`child`, `harness.configure_devices`) before its first computation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the modules beside this one; experiments/common.py
# pylint: disable=g-import-not-at-top,wrong-import-position
import harness
import rounds
import suites_eval
import suites_micro
import suites_train
import result_tables
from common import DEFAULT_DATA, require_data
# pylint: enable=g-import-not-at-top,wrong-import-position

SUITES = ("train", "pipeline", "torch", "torch-bf16", "torch-cl", "torch-bf16-cl", "eval", "micro",
          "dtype")
DEFAULT_VARIANTS = {"train": ("2dev",), "pipeline": ("2dev",), "eval": ("2dev",)}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", default=DEFAULT_DATA)
  p.add_argument("--suites", default="train,pipeline,torch,eval,micro",
                 help=f"comma-separated, of {', '.join(SUITES)}")
  p.add_argument("--methods", default=",".join(harness.METHODS))
  p.add_argument("--models", default=",".join(harness.MODELS))
  p.add_argument("--variants", default="",
                 help="train/pipeline/eval/dtype variants (default 2dev; see harness.VARIANTS)")
  p.add_argument("--blocks", type=int, default=0,
                 help="timed blocks per case (see harness.block_plan)")
  p.add_argument("--block_steps", type=int, default=0, help="steps per timed block")
  p.add_argument("--torch_threads", default="2")
  p.add_argument("--results", default=os.path.join(harness.RESULTS, "benchmark_cpu.json"))
  p.add_argument("--markdown", default=os.path.join(harness.RESULTS, "benchmark_cpu.md"))
  p.add_argument("--force", action="store_true", help="rerun cases already in --results")
  p.add_argument("--rounds", type=int, default=1,
                 help="run the compared cases this many times, each train case next to its "
                      "PyTorch steps, the pair's order alternating (see `rounds.schedule`; take "
                      "it even); rates are medians")
  p.add_argument("--case", default="", help=argparse.SUPPRESS)  # internal: run one case here
  return p.parse_args(argv)


def cases(args) -> list[str]:
  """The case names `--suites`, `--methods`, `--models`, `--variants` and `--torch_threads` ask
  for, suite by suite."""
  methods, models = args.methods.split(","), args.models.split(",")
  out = []
  for suite in args.suites.split(","):
    variants = args.variants.split(",") if args.variants else DEFAULT_VARIANTS.get(suite, ())
    for v in variants:
      if v not in harness.VARIANTS:
        sys.exit(f"--variants: unknown variant {v!r}; known: {', '.join(harness.VARIANTS)}")
    if suite == "train":
      out += [f"train:{me}:{mo}:{v}" for mo in models for me in methods for v in variants]
    elif suite == "pipeline":
      out += [f"pipeline:fgsm_pgk:{mo}:{v}" for mo in models for v in variants]
    elif suite in ("torch", "torch-bf16", "torch-cl", "torch-bf16-cl"):
      # torch-bf16: the same steps under autocast(bf16); -cl: model and inputs channels_last
      steps = [st for st, me in harness.TORCH_STEPS.items() if me in methods]
      out += [harness.torch_case(st, mo, t, "bfloat16" if "bf16" in suite else None,
                                 suite.endswith("-cl"))
              for mo in models for st in steps for t in args.torch_threads.split(",")]
    elif suite == "dtype":
      out += [f"dtype:{v}" for v in (variants or ("2dev",))]
      out += [f"torchdtype:{t}" for t in args.torch_threads.split(",")]
    elif suite == "micro":
      out += ["micro:conv", "micro:allreduce"]
    elif suite == "eval":
      out += [f"eval:pgd20:{mo}:{v}" for mo in models for v in variants]
      out += [f"eval:aa-worst:small_cnn:{v}" for v in variants if "small_cnn" in models]
    else:
      sys.exit(f"--suites: unknown suite {suite!r}; use {', '.join(SUITES)}")
  return out


def child(case: str, args) -> dict:
  """Runs one case in this process (the `--case` flag): its devices and XLA:CPU flags first,
  then its suite's function; adds the peak host RSS."""
  kind, *rest = case.split(":")
  if kind in ("train", "pipeline"):
    method, model, name = rest
    variant = harness.VARIANTS[name]
    harness.configure_devices(variant)
    blocks, block_steps = harness.block_plan(case, args)
    out = suites_train.run_train(method, model, variant, args.data, blocks, block_steps,
                                 kind == "pipeline")
  elif kind == "eval":
    attack, model, name = rest
    variant = harness.VARIANTS[name]
    harness.configure_devices(variant)
    out = suites_eval.run_eval(attack, model, variant, args.data)
  elif case == "micro:allreduce":
    harness.configure_devices({"devices": 2})
    out = suites_micro.run_allreduce_micro()
  elif kind == "micro":
    harness.configure_devices({"devices": 1})
    out = suites_micro.run_conv_micro()
  elif kind == "dtype":  # dtype:<variant>: one device under the variant's XLA flags
    harness.configure_devices(dict(harness.VARIANTS[rest[0]], devices=1))
    out = suites_micro.run_dtype_micro()
  elif kind == "torchdtype":
    out = suites_micro.run_torch_dtype_micro(int(rest[0]))
  elif harness.is_torch_step(case):
    model, threads, *options = rest
    blocks, block_steps = harness.block_plan(case, args)
    out = suites_train.run_torch(model, int(threads), args.data, blocks, block_steps,
                                 "bfloat16" if "bfloat16" in options else "float32",
                                 method=harness.torch_step_of(case),
                                 channels_last="channels_last" in options)
  else:
    raise ValueError(f"unknown case {case!r}")
  out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  return out


def run_case(case: str, args) -> dict:
  """`case` in a child process of this script (`harness.run_child`) under its variant's XLA
  flags; its record, with what it ran under."""
  variant = harness.VARIANTS.get(case.split(":")[-1], {})
  command = [sys.executable, os.path.abspath(__file__), f"--case={case}", f"--data={args.data}",
             f"--blocks={args.blocks}", f"--block_steps={args.block_steps}"]
  result = harness.run_child(command, variant.get("xla", ""))
  if "error" not in result:
    result.update(xla_flags=variant.get("xla", ""), ynn_fusion_type=harness.ynn_in_effect(variant),
                  date=time.strftime("%Y-%m-%d %H:%M"), cpu_flags=harness.cpu_flags())
  return result


def main(argv=None):
  args = parse_args(argv)
  require_data(args.data)
  if args.case:
    print("RESULT " + json.dumps(child(args.case, args)), flush=True)
    return
  results = {}
  if os.path.exists(args.results):
    with open(args.results) as f:
      results = json.load(f)
  results.setdefault("_machine", harness.machine())
  if args.rounds > 1 and args.rounds % 2:
    print(f"note: --rounds={args.rounds} is odd: PyTorch goes first in one round more than ours, "
          "and the side that runs first tends to be faster; an even count weighs both alike",
          flush=True)
  for case, r in rounds.schedule(cases(args), args.rounds):
    done = results.get(case, {"error": ""})
    if "error" not in done and len(done.get("rounds_images_per_s", [0])) > r and (
        r or not args.force):
      continue
    print(f"running {case} (round {r + 1} of {args.rounds}) ...", flush=True)
    results[case] = rounds.merge_round(results.get(case), run_case(case, args), r)
    shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in results[case].items()}
    print(f"  {shown}", flush=True)
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
      json.dump(results, f, indent=1, sort_keys=True)
  result_tables.write_markdown(results, args.markdown)
  print(f"Machine: {results['_machine']}")
  print("\n".join(result_tables.ratios(results)))


if __name__ == "__main__":
  main()
