"""Robust-accuracy evaluation: clean, FGSM, PGD-k and C&W-k, jitted, with per-sample stop.

Attack names (`config.eval.attacks`, comma-separated): `clean`, `fgsm`, `pgd<K>` (PGD-K on
cross-entropy), `cw<K>` (PGD-K on the C&W margin). All use eps `eval.epsilon`, step
`eval.step_size` (FGSM: step = eps), one uniform random start, and a sample stops moving once it
is misclassified (REFERENCE.md, "Evaluation protocol").
"""

from __future__ import annotations

import functools
import re
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from regmix_jax import attacks, losses, rng


def parse_attacks(spec: str, *, epsilon: float = 8 / 255, step_size: float = 2 / 255
                  ) -> tuple[tuple[str, Callable | None], ...]:
  """`"clean,pgd10,cw20"` -> ((name, attack or None for clean), ...); errors name `eval.attacks`."""
  parsed = []
  for name in [s.strip() for s in spec.split(",") if s.strip()]:
    match = re.fullmatch(r"(pgd|cw)(\d+)", name)
    if name == "clean":
      fn = None
    elif name == "fgsm":
      fn = functools.partial(attacks.fgsm, epsilon=epsilon, step_size=epsilon, early_stop=True)
    elif match and int(match.group(2)) > 0:
      attack = attacks.pgd if match.group(1) == "pgd" else attacks.cw_linf
      fn = functools.partial(attack, epsilon=epsilon, step_size=step_size,
                             num_steps=int(match.group(2)), early_stop=True)
    else:
      raise ValueError(f"Config field `eval.attacks`: unknown attack {name!r} in {spec!r}. "
                       "Use a comma-separated list of clean, fgsm, pgd<K>, cw<K> (e.g. pgd20).")
    parsed.append((name, fn))
  if not parsed:
    raise ValueError("Config field `eval.attacks` is empty; use e.g. 'clean,pgd10'.")
  return tuple(parsed)


def eval_step(state, batch, key=None, *, model, attack_list, role: str = "target",
              axis_name: str | None = None) -> dict[str, jax.Array]:
  """Correct counts of `role` under each attack, on this device's examples (summed over devices).

  The model runs in inference mode on `state.eval_variables(role)` (EMA weights when EMA is on).
  `batch` as in `train_step`; rows with `mask == False` (padding) count for nothing. Returns
  {name: number correct, "count": number of real examples}.
  """
  variables = state.eval_variables(role)
  logits_fn = lambda x: model.apply(variables, x, train=False)
  key = rng.stream(state.rng if key is None else key, rng.EVAL)
  x = batch["image"].astype(jnp.float32) / 255.0
  mask = batch["mask"].astype(jnp.float32)
  counts = {"count": mask.sum()}
  for position, (name, attack) in enumerate(attack_list):
    # Each attack has its own random starts: keys from (its position, the example's index).
    keys = rng.example_keys(jax.random.fold_in(key, position), batch["index"])
    x_eval = x if attack is None else attack(logits_fn, x, batch["label"], keys)
    counts[name] = (losses.correct(logits_fn(x_eval), batch["label"]) * mask).sum()
  return counts if axis_name is None else jax.lax.psum(counts, axis_name)


def accuracies(batches: Iterable[Mapping[str, np.ndarray]], step_fn) -> dict[str, float]:
  """Runs `step_fn(batch) -> counts` over `batches`; returns accuracy per attack (fractions)."""
  total: dict[str, float] = {}
  pending = [step_fn(b) for b in batches]  # dispatched asynchronously, then fetched once
  for counts in jax.device_get(pending):
    for k, v in counts.items():
      total[k] = total.get(k, 0.0) + float(np.asarray(v).reshape(-1)[0])
  count = max(total.pop("count", 0.0), 1.0)
  return {k: v / count for k, v in total.items()}
