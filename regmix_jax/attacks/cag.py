"""CAG: collaborative adversarial generation (D2R, Liu et al. 2025; docs/methods.md,
"D2R + CAG")."""

from __future__ import annotations

import jax

from regmix_jax.attacks.pgd import LogitsFn, pgd


def cag(target_logits_fn: LogitsFn, guide_clean_logits: jax.Array, x: jax.Array, key: jax.Array,
        *, epsilon: float = 0.031, step_size: float = 0.007, num_steps: int = 10) -> jax.Array:
  """Adversarial examples for the target, guided by the guide's clean output.

  From `x + 0.001 N(0, I)`, `num_steps` signed steps maximising `sum_b KL(P(g(x)) || P(t(x')))`,
  each projected onto the eps-ball around `x` and [0, 1]. The guide's clean logits are the fixed
  reference (pass them computed in inference mode); only the target supplies the gradient; no
  labels are used. Both models in inference mode in the released code: build `target_logits_fn`
  with `train=False`.

  Args:
    target_logits_fn: `x [B, H, W, C] -> [B, K]`, the target model.
    guide_clean_logits: `[B, K]`, `g(x)` (no gradient path is taken through it).
    x: clean images `[B, H, W, C]` in [0, 1].
    key: one key or `[B]` per-example keys, for the Gaussian start.

  Returns:
    `x_adv [B, H, W, C]`, no gradient path. As the released code, the Gaussian start is not
    clipped to [0, 1] before the first step (D2R.py:38); each step clips.
  """
  reference = jax.lax.stop_gradient(guide_clean_logits)
  return pgd(target_logits_fn, x, reference, key, epsilon=epsilon, step_size=step_size,
             num_steps=num_steps, loss="kl", init_std=0.001)
