"""The benchmark's results (`benchmark.py`'s JSON file) as the ratios against PyTorch (`ratios`)
and as markdown tables (`write_markdown`)."""

from __future__ import annotations

import os

from harness import (BATCH, METHODS, MODELS, RETIRED_VARIANTS, TORCH_STEPS, VARIANTS, is_torch_step,
                     torch_step_of, ynn_in_effect)


def convolutions_ran(variant: str, record: dict) -> str:
  """What ran a train record's convolutions on CPU: the record says so since the default became
  "auto" (2026-11-28); older ones ran their variant's `convolutions`, else XLA's."""
  return record.get("convolutions", VARIANTS.get(variant, {}).get("convolutions", "xla"))


def _f(v, digits=1):
  return "-" if v is None else f"{v:.{digits}f}"


def _order(key: str):
  """Table order: by model, then method, then the default variant first."""
  parts = key.split(":")
  model = parts[2] if len(parts) > 3 else ""
  return (MODELS.index(model) if model in MODELS else 9,
          METHODS.index(parts[1]) if parts[1] in METHODS else 9, parts[-1] != "2dev", parts[-1])


def _table(title: str, header, rows) -> list[str]:
  return ["", f"## {title}", "", "| " + " | ".join(header) + " |",
          "|" + " --- |" * len(header)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def torch_references(ok: dict) -> dict:
  """(PyTorch step, model, dtype) -> its case with the most threads (the machine's whole CPU);
  bfloat16 is PyTorch's autocast."""
  return {(torch_step_of(k), k.split(":")[1], v.get("dtype", "float32"),
           v.get("layout", "NCHW")): v
          for k, v in sorted(ok.items(), key=lambda kv: kv[1].get("threads", 0))
          if is_torch_step(k)}


def ratios(results: dict) -> list[str]:
  """One line per train case and PyTorch step of its method and dtype: the ratios the issue's
  targets are about, fp32 against fp32 and bf16 against autocast bf16. With rounds
  (`--rounds`), the ratio of the medians, then each round's (its two sides run one after the
  other, `rounds.schedule`)."""
  ok = {k: v for k, v in results.items() if not k.startswith("_") and "error" not in v}
  torch = torch_references(ok)
  out = []
  for key, r in sorted(ok.items(), key=lambda kv: _order(kv[0])):
    parts = key.split(":")
    if parts[0] != "train":
      continue
    dtype = VARIANTS.get(parts[3], {}).get("dtype", "float32")
    for step in (st for st, me in TORCH_STEPS.items() if me == parts[1]):
      for layout in ("NCHW", "channels_last"):
        ref = torch.get((step, parts[2], dtype, layout))
        if ref:
          out.append(f"{parts[1]} {parts[2]} {parts[3]} ({dtype}, {convolutions_ran(parts[3], r)} "
                     f"convolutions): {r['images_per_s']:.1f} img/s, "
                     f"PyTorch {step} {'autocast ' if dtype == 'bfloat16' else ''}{dtype} {layout} "
                     f"{ref['images_per_s']:.1f} -> {r['images_per_s'] / ref['images_per_s']:.2f}x"
                     + _round_ratios(r, ref))
  return out


def _round_ratios(r: dict, ref: dict) -> str:
  ours, theirs = r.get("rounds_images_per_s", []), ref.get("rounds_images_per_s", [])
  if len(ours) < 2 or len(ours) != len(theirs):
    return ""
  return " (rounds: " + ", ".join(f"{a / b:.2f}x" for a, b in zip(ours, theirs)) + ")"


def write_markdown(results: dict, path: str) -> None:
  """The results as tables; the hand-written reading (`<path stem>.notes.md`, if present) first."""
  lines = ["# Benchmark: regmix_jax on CPU", "",
           f"Machine: {results.get('_machine', '?')}. Written by "
           f"`experiments/benchmarks/benchmark.py` from "
           f"`{os.path.basename(path).replace('.md', '.json')}`; batch {BATCH}, real CIFAR-10 "
           "images (the subset's first shuffled batch); each case in its own process.", ""]
  notes = path.replace(".md", ".notes.md")
  if os.path.exists(notes):
    with open(notes) as f:
      lines += [f.read().rstrip(), ""]
  ok = {k: v for k, v in results.items() if not k.startswith("_") and "error" not in v}
  torch = torch_references(ok)
  lines += ["## Ratios (ours / PyTorch; img/s are medians over rounds)", ""]
  lines += [f"- {line}" for line in ratios(results)]

  train_rows = []
  for key, r in sorted(ok.items(), key=lambda kv: _order(kv[0])):
    if not key.startswith("train:"):
      continue
    _, method, model, variant = key.split(":")
    dtype = VARIANTS.get(variant, {}).get("dtype", "float32")
    ref = torch.get((method, model, dtype))  # TRADES: the released step
    train_rows.append((
        method, model, variant, dtype,
        r.get("ynn_fusion_type",
              ynn_in_effect({"xla": r.get("xla_flags", ""), "ynn": "default"})),
        convolutions_ran(variant, r), _f(r["images_per_s"]), _f(r["step_s"], 3),
        _f(r["first_step_s"]), _f(r["compile_s"]),
        f"{r['later_compiles']} / {r['later_traces']}", _f(r["peak_rss_gib"], 2),
        _f(ref and ref["images_per_s"]), _f(ref and r["images_per_s"] / ref["images_per_s"], 2)))
  lines += _table("Train step (batch on the devices)",
                  ("method", "model", "variant", "dtype", "YNNPACK fusions", "convolutions",
                   "img/s", "step s",
                   "first step s", "compile s",
                   "compiles / traces in steps 2..N", "peak RSS GiB",
                   "torch img/s (same dtype; bf16: autocast)", "JAX / torch"), train_rows)
  pipeline = [(k.split(":")[2], k.split(":")[3], r) for k, r in ok.items()
              if k.startswith("pipeline:")]
  lines += _table("Input pipeline: real loader vs a device-resident batch (FGSM-PGK; "
                  "alternating blocks in one process)",
                  ("model", "variant", "resident img/s", "pipeline img/s", "pipeline / resident"),
                  [(m, v, _f(r["images_per_s"]), _f(r["pipeline_images_per_s"]),
                    _f(r["pipeline_ratio"], 3)) for m, v, r in pipeline])
  lines += _table("PyTorch eager steps (`experiments/benchmarks/torch_reference.py`)",
                  ("step", "model", "threads", "dtype", "layout", "img/s", "step s",
                   "first step s", "peak RSS GiB"),
                  [(torch_step_of(k), k.split(":")[1], r["threads"], r.get("dtype", "float32"),
                    r.get("layout", "NCHW"),
                    _f(r["images_per_s"]), _f(r["step_s"], 3),
                    _f(r["first_step_s"]), _f(r["peak_rss_gib"], 2))
                   for k, r in ok.items() if is_torch_step(k)])
  precision = [(k, r) for k, r in sorted(ok.items())
               if k.startswith("dtype:") or k.startswith("torchdtype:")]
  if precision:
    names = sorted({n for _, r in precision for n in r["ms"]})
    lines += _table("Convolutions and matrix products, float32 and bfloat16 (ms, best of 3; "
                    "`--suites=dtype`, `suites_micro.run_dtype_micro`)",
                    ("operation", *(k.replace("torchdtype:", "PyTorch, threads ")
                                    .replace("dtype:", "JAX ") for k, _ in precision)),
                    [(n, *(_f(r["ms"].get(n)) for _, r in precision)) for n in names])
  lines += _table("Evaluation", ("attack", "model", "variant", "img/s", "examples (batches)",
                                  "compiles", "compile s", "peak RSS GiB"),
                  [(*k.split(":")[1:], _f(r["images_per_s"], 2),
                    f"{r['examples']} ({r['batches']})", r["compiles"], _f(r["compile_s"]),
                    _f(r["peak_rss_gib"], 2)) for k, r in ok.items() if k.startswith("eval:")])
  micro = ok.get("micro:conv")
  if micro:
    lines += _table("One convolution on one device (ms, best of 3; `--suites=micro`)",
                    ("convolution, batch 128", "ms"),
                    [(name, _f(ms)) for name, ms in micro["ms"].items()])
  allreduce = ok.get("micro:allreduce")
  if allreduce:
    lines += ["", f"One in-process all-reduce of 512 floats between 2 host devices (chained, as "
              f"synchronised BatchNorm's are): {allreduce['us_per_allreduce']:.0f} µs."]
    lines += _table("8 chained 3x3 convolution layers on 2 host devices (64 x 32 x 32 x 64 each), "
                    "a per-channel mean after each: per device or all-reduced (ms, best of 3)",
                    ("layers, mean", "ms"),
                    [(k, _f(v)) for k, v in allreduce.get("barrier_ms", {}).items()])
  failed = {k: v for k, v in results.items() if not k.startswith("_") and "error" in v}
  if failed:
    lines += ["", "## Failed cases", ""]
    lines += [f"- `{k}`: {v['error'].strip().splitlines()[-1][:300]}" for k, v in failed.items()]
  variants = sorted({k.split(":")[-1] for k in ok if not is_torch_step(k)})
  lines += ["", "Variants: " + "; ".join(
      f"`{v}` = {RETIRED_VARIANTS[v]} (retired)" if v in RETIRED_VARIANTS else
      f"`{v}` = {VARIANTS[v]['devices']} CPU device(s), {VARIANTS[v].get('parallel', 'pmap')}, "
      f"{VARIANTS[v].get('dtype', 'float32')}"
      + (", BatchNorm statistics per device" if VARIANTS[v].get("local_bn") else "")
      + (f", convolutions {VARIANTS[v]['convolutions']}" if VARIANTS[v].get("convolutions") else "")
      + (f" from input maps {VARIANTS[v]['onednn_min_size']} wide"
         if "onednn_min_size" in VARIANTS[v] else "")
      + (f", XLA_FLAGS `{VARIANTS[v]['xla']}`" if VARIANTS[v].get("xla") else "")
      for v in variants if v in VARIANTS or v in RETIRED_VARIANTS) + "."]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")

