"""`--rounds`: the order the cases run in (`schedule`) and how a case's rounds make its record
(`merge_round`)."""

from __future__ import annotations

import numpy as np

import harness


def schedule(case_list: list[str], rounds: int) -> list[tuple[str, int]]:
  """(case, round) in the order to run them: round by round, each train case right after the
  PyTorch steps it is compared with (`result_tables.ratios`) in even rounds and right before
  them in odd ones, so that the machine's drift (10-20% within an hour here) enters a ratio only
  through the few minutes between its two sides, and not always with the same sign; other cases
  keep their place and run in round 0 only. A PyTorch step compared with several train cases
  goes with the first."""
  refs = {c: [t for t in case_list if harness.is_torch_step(t) and _compared(c, t)]
          for c in case_list if c.startswith("train:")}
  groups, placed = [], set()  # (PyTorch steps, case): one pair, or a case alone
  for case in case_list:
    if case in placed:
      continue
    if case in refs:
      mine = [t for t in refs[case] if t not in placed]
      placed.update(mine)
      groups.append((mine, case))
    elif not (harness.is_torch_step(case) and any(case in r for r in refs.values())):
      groups.append(([], case))
  order = []
  for r in range(rounds):
    for torch_steps, case in groups:
      if r and not (torch_steps or case in refs or harness.is_torch_step(case)):
        continue  # repeated: the cases with a rate that a ratio compares
      pair = torch_steps + [case] if r % 2 == 0 else [case] + torch_steps
      order += [(c, r) for c in pair]
  return order


def _compared(train_case: str, torch_case_name: str) -> bool:
  """Whether `result_tables.ratios` compares a train case with a PyTorch step's case: the same
  model, a step of the train case's method, fp32 with fp32 and bf16 with autocast bf16."""
  _, method, model, variant = train_case.split(":")
  dtype = harness.VARIANTS.get(variant, {}).get("dtype", "float32")
  parts = torch_case_name.split(":")
  return (harness.TORCH_STEPS.get(harness.torch_step_of(torch_case_name)) == method
          and parts[1] == model and (parts[3] if len(parts) > 3 else "float32") == dtype)


def merge_round(old: dict | None, new: dict, r: int) -> dict:
  """A case's record after its round `r`: round 0's record as it is; later ones add their rate,
  date and block times to `rounds_*` and make `images_per_s` / `step_s` the median over the
  rounds (the other fields stay round 0's). A later round that failed leaves the rates as they
  were and adds its error to `rounds_errors`."""
  if "error" in new and r and old and "error" not in old:
    return dict(old, rounds_errors=old.get("rounds_errors", []) + [
        f"round {r + 1}: {new['error'][-300:]}"])
  if "images_per_s" not in new:  # failed, or a micro case
    return new
  if r == 0 or old is None or "error" in old:
    return dict(new, rounds_images_per_s=[new["images_per_s"]])
  rates = old.get("rounds_images_per_s", [old["images_per_s"]]) + [new["images_per_s"]]
  median = float(np.median(rates))
  return dict(old, rounds_images_per_s=rates, images_per_s=median,
              step_s=harness.BATCH / median,
              rounds_dates=old.get("rounds_dates", [old.get("date")]) + [new.get("date")],
              rounds_block_s=old.get("rounds_block_s", [old.get("block_s")]) + [new.get("block_s")])
