"""Robust-accuracy evaluation as training uses it: per-device, jittable evaluation steps over
the attacks of `attacks.parse_attacks`, and their host-side reduction.

`eval_step` counts correct examples under each attack (what the training loop's per-epoch
evaluation maps over devices); `accuracies` turns counts over batches into fractions. The
checkpoint-evaluation command (`python -m regmix_jax.evaluate`) lives in `evaluate.py` and builds
on these; its AutoAttack runs through `attacks.run_autoattack` (one code path for the command and
for a user's own model), which gives the same per-point result as the fixed-shape
`attacks.autoattack` that `eval_step` runs for "aa" during training.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from regmix_jax import losses, rng


def eval_step(state, batch, key=None, *, model, attack_list, role: str = "target",
              first_position: int = 0, axis_name: str | None = None) -> dict[str, jax.Array]:
  """Correct counts of `role` under each attack, on this device's examples (summed over devices).

  The model runs in inference mode on `state.eval_variables(role)` (EMA weights when EMA is on).
  `batch` as in `train_step`; rows with `mask == False` (padding) count for nothing. The attack at
  position i of `attack_list` draws its random starts from `(first_position + i, example index)`
  (so evaluating a list one attack at a time draws the same numbers). Returns
  {name: number correct, "count": number of real examples}, this device's only: under a mapping
  (`axis_name` given) each value has a leading axis of 1 and is not summed over devices (map with
  `per_device_outputs=True`, sum with `DataParallel.host_sum`). Attacks do data-dependent work
  (AutoAttack skips attacks when no point is left robust, Square stops once all are fooled), so
  devices finish at different times; a collective here would keep the early ones waiting.
  """
  mask = batch["mask"].astype(jnp.float32)
  counts = {"count": mask.sum()}
  for position, (name, attack) in enumerate(attack_list):
    correct = _correct_under(state, batch, key, model=model, attack=attack, role=role,
                             position=first_position + position)
    counts[name] = (correct * mask).sum()
  return counts if axis_name is None else jax.tree.map(lambda v: v[None], counts)


def _correct_under(state, batch, key, *, model, attack, role, position) -> jax.Array:
  """`[b]` float: 1 where `role` classifies the attacked example correctly. Each attack has its
  own random starts: per-example keys from (its position, the example's index)."""
  variables = state.eval_variables(role)
  logits_fn = lambda x: model.apply(variables, x, train=False)
  key = rng.stream(state.rng if key is None else key, rng.EVAL)
  keys = rng.example_keys(jax.random.fold_in(key, position), batch["index"])
  x = batch["image"].astype(jnp.float32) / 255.0
  x_eval = x if attack is None else attack(logits_fn, x, batch["label"], keys)
  return losses.correct(logits_fn(x_eval), batch["label"])


def accuracies(batches: Iterable[Mapping[str, np.ndarray]], step_fn,
               fetch: Callable = jax.device_get) -> dict[str, float]:
  """Runs `step_fn(batch) -> counts` over `batches`; returns accuracy per attack (fractions).
  `fetch` brings one batch's counts to the host (for a mapped `eval_step`:
  `DataParallel.host_sum`); every element of a fetched count is summed."""
  total: dict[str, float] = {}
  pending = [step_fn(b) for b in batches]  # dispatched asynchronously, then fetched
  for counts in pending:
    for k, v in fetch(counts).items():
      total[k] = total.get(k, 0.0) + float(np.sum(v))
  count = max(total.pop("count", 0.0), 1.0)
  return {k: v / count for k, v in total.items()}
