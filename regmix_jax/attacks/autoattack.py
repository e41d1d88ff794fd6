"""AutoAttack (Croce & Hein 2020), L-inf: the standard composition of APGD-CE, APGD-T, FAB-T and
Square, as the official `AutoAttack.run_standard_evaluation` (fra31/auto-attack).

Each attack runs on the points still robust after the ones before it; a point is non-robust once
any attack finds an adversarial example for it, and that example is kept: the robust accuracy is
the point-wise worst case. With fixed shapes, "runs only on the robust points" means: an attack
whose turn comes when no point of the batch is robust is skipped (`lax.cond`), and a point found
non-robust enters the later attacks already misclassified (its adversarial example in place of the
clean image), which every attack here returns unchanged, so it neither moves nor keeps Square's
query loop running. Attack settings are the official "standard" ones (`ATTACKS`).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from regmix_jax import rng
from regmix_jax.attacks.apgd import apgd, apgd_targeted
from regmix_jax.attacks.fab import fab_targeted
from regmix_jax.attacks.pgd import LogitsFn, project
from regmix_jax.attacks.square import square

# name -> attack(logits_fn, x, labels, key, *, epsilon) with the official "standard" settings.
ATTACKS: dict[str, Callable[..., jax.Array]] = {
    "apgd-ce": functools.partial(apgd, loss="ce", num_steps=100, num_restarts=1),
    "apgd-dlr": functools.partial(apgd, loss="dlr", num_steps=100, num_restarts=1),
    "apgd-t": functools.partial(apgd_targeted, num_steps=100, num_target_classes=9,
                                num_restarts=1),
    "fab-t": functools.partial(fab_targeted, num_steps=100, num_target_classes=9,
                               num_restarts=1),
    "square": functools.partial(square, num_queries=5000, p_init=0.8, num_restarts=1),
}

VERSIONS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square")}


def resolve_version(version: str | Sequence[str]) -> tuple[str, ...]:
  """`"standard"` or a list of names in `ATTACKS` -> the attack names, in order."""
  names = VERSIONS.get(version) if isinstance(version, str) else tuple(version)
  if names is None or not names or any(n not in ATTACKS for n in names):
    raise ValueError(f"AutoAttack version {version!r}: use one of {sorted(VERSIONS)} or a list "
                     f"of attacks from {sorted(ATTACKS)}.")
  return names


def autoattack(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, key: jax.Array, *,
               epsilon: float, version: str | Sequence[str] = "standard"
               ) -> tuple[jax.Array, jax.Array]:
  """Runs the attacks of `version` in turn, each on the points still robust.

  Args:
    logits_fn: `x [B, H, W, C] -> logits [B, K]`, the model in inference mode.
    x: clean images `[B, H, W, C]` in [0, 1].
    labels: `[B]` integer labels.
    key: one key or `[B]` per-example keys; attack `i` uses `fold_in(key, i)`.
    epsilon: L-inf radius.
    version: "standard" (APGD-CE, APGD-T, FAB-T, Square) or a list of names from `ATTACKS`.

  Returns:
    `(x_adv [B, H, W, C], robust [B] bool)`: for a non-robust point the adversarial example that
    fooled it (inside the eps-ball and [0, 1]), for a robust one the clean image; `robust` is
    False for points misclassified clean or by any attack.
  """
  names = resolve_version(version)
  x = jax.lax.stop_gradient(x)
  predicts = lambda images: jnp.argmax(logits_fn(images), axis=-1) == labels
  robust = predicts(x)
  x_adv = x
  for i, name in enumerate(names):
    def run(carry, attack=ATTACKS[name], i=i):
      x_adv, robust = carry
      x_in = jnp.where(robust[:, None, None, None], x, x_adv)
      candidate = project(attack(logits_fn, x_in, labels, rng.fold(key, i), epsilon=epsilon),
                          x, epsilon)
      fooled = robust & ~predicts(candidate)
      return jnp.where(fooled[:, None, None, None], candidate, x_adv), robust & ~fooled
    x_adv, robust = jax.lax.cond(jnp.any(robust), run, lambda c: c, (x_adv, robust))
  return jax.lax.stop_gradient(x_adv), robust
