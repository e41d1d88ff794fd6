"""Targeted FAB attack, L-inf (FAB-T; Croce & Hein, "Minimally distorted adversarial examples with
a fast adaptive boundary attack", ICML 2020), the third attack of AutoAttack's "standard" version.

FAB looks for the smallest L-inf perturbation that changes the prediction. For target rank k
(the k-th most likely class `t` of the clean point, k = 2 .. num_target_classes + 1), every
iteration linearises `f(z) = z_t(z) - z_y(z)` at the current point `x1`,
`f(x1) + <grad f(x1), z - x1> = 0`, and projects both `x1` and the clean point `x0` onto that
hyperplane intersected with the [0, 1] box (`projection_linf`, an exact sort-based algorithm).
With `d1`, `d2` the two projection steps and `alpha = clip(|d1| / (|d1| + |d2|), 0, alpha_max)`
(L-inf norms, each at least 1e-8), the next point is
`x1 = clip((x1 + eta d1) (1 - alpha) + (x0 + eta d2) alpha, 0, 1)`: `eta > 1` overshoots the
boundary, `alpha` biases the step toward the clean point. When `x1` is misclassified (arg-max not
the label: any class, not only `t`), it is kept as the best adversarial point if its distance to
`x0` is the smallest so far, and `x1` steps back toward the clean point,
`x1 = x0 + beta (x1 - x0)`. A run returns the best point it found, or the clean point if none.

Reference: the official PyTorch code, github.com/fra31/auto-attack, `autoattack/fab_base.py`
(`FABAttack.perturb`, `attack_single_run` / `attack_single_run_targeted`), `autoattack/fab_pt.py`
(`FABAttack_PT.get_diff_logits_grads_batch_targeted`: `df = -(z_y - z_t)` and its input gradient)
and `autoattack/fab_projections.py` (`projection_linf`). AutoAttack's standard version runs FAB-T
with `n_target_classes=9, n_restarts=1, n_iter=100` and the defaults `alpha_max=0.1, eta=1.05,
beta=0.9`, which are this module's defaults. As in `perturb`, the target ranks are tried in order
and each (rank, restart) round attacks only the examples not yet fooled; a round's result counts
only if it is misclassified and within `epsilon` (L-inf) of the clean point, otherwise the example
keeps its clean point and stays in the next rounds. Restart 0 of every rank starts at the clean
point; restarts r > 0 start at `clip(x + (epsilon / 2) u / max|u|, 0, 1)`, `u ~ U(-1, 1)` (the
official `use_rand_start=(counter > 0)`), so with `num_restarts=1` (AutoAttack's setting) the attack
draws no random numbers at all.

Deviations from the official code, none of which changes the algorithm:
- Fixed shapes instead of subset selection: every round and every iteration runs on the whole
  batch, and masks decide which examples' results are kept (the official indexes the not-yet-fooled
  subset). Results for the attacked examples are the same as long as `logits_fn` treats examples
  independently (a model in inference mode). A round in which no example is left is skipped
  (`lax.cond`), as the official skips an empty subset.
- The gradient of `z_t - z_y` comes from one `jax.vjp` of `logits_fn` with the cotangent
  `onehot(t) - onehot(y)` (the official back-propagates the batch sum of the differences; the same
  per-example gradients).
- Randomness (restarts r > 0 only): each example's start comes from its own key (see
  `regmix_jax.rng`) folded with the round's index; the official draws from torch's global generator
  seeded with `seed`. The start's noise is divided by `max(max|u|, 1e-12)` (the official divides by
  `max|u|`, which is positive with probability 1).
- Ties: the target ranking is a stable descending sort of the clean logits (the lowest class index
  first among equal logits) and predictions are `argmax` (first index among equal logits); torch's
  order among ties is unspecified. In `projection_linf` a stable sort replaces torch's `argsort`;
  ties among the sorted distances do not change the projection (its piecewise-linear objective is
  continuous at the break points).
- `projection_linf` evaluates both of its closed-form cases on every row and selects per row with
  `where` (the official computes each case only on its rows); the divisions are guarded against a
  zero denominator on rows where the case does not apply. On a row where a case applies, the guarded
  and unguarded formulas give the same result (a zero denominator there, which only rounding can
  produce, gives a step of 0 either way).
- The best distance starts at `inf` rather than `1e10` ("nothing found yet"; distances are at
  most 1).
- The result is projected onto the `epsilon`-ball around `x` and onto [0, 1] at the end, a no-op up
  to float rounding (accepted points are within `epsilon`, and every iterate is clipped to [0, 1]).

Cost: per (rank, restart) round, `num_steps` forward-backward passes plus `num_steps + 1` forward
passes on the whole batch, and two sorts of `H * W * C` values per example per iteration.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from regmix_jax import rng
from regmix_jax.attacks.pgd import LogitsFn, project


def projection_linf(points: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """The L-inf projection of each point onto `{z : <w, z> = b}` within `[0, 1]^D`, as a step.

  A port of the official `projection_linf` to fixed shapes. After orienting each row so that
  `<w, t> >= b`, moving each coordinate i by at most `lam` toward the box face that lowers `<w, z>`
  changes `<w, z>` by `-sum_i |w_i| min(lam, p_i)`, with `p_i` the distance to that face. This is
  piecewise linear in `lam` with break points at the sorted `p_i`; a binary search over them finds
  the smallest `lam` that reaches the hyperplane. Rows whose hyperplane does not meet the box get
  the step to the box corner that comes closest to it (every coordinate to its face); coordinates
  with `w_i = 0` never move.

  Args:
    points: `[N, D]` points `t` in [0, 1].
    w: `[N, D]` hyperplane normals.
    b: `[N]` hyperplane offsets.

  Returns:
    `d [N, D]`: `t + d` is the projection (or the closest box corner, when the hyperplane misses the
    box).
  """
  t = points
  num_dims = t.shape[1]
  sign = jnp.where(jnp.sum(w * t, axis=1) - b >= 0, 1.0, -1.0).astype(w.dtype)
  w = w * sign[:, None]
  b = b * sign
  moves = (w != 0).astype(t.dtype)
  a = (w < 0).astype(t.dtype)  # the box face each coordinate moves toward: 1 where w < 0, else 0
  d = (a - t) * moves  # the full move to that face
  p = a - t * (2 * a - 1)  # its length
  order = jnp.argsort(p, axis=1)  # ascending distances
  b = b - jnp.sum(w * t, axis=1)  # the change of <w, z> needed, <= 0
  b0 = jnp.sum(w * d, axis=1)  # the largest decrease the box allows, <= 0

  desc = order[:, ::-1]
  ws = jnp.take_along_axis(w, desc, axis=1)
  p_desc = jnp.take_along_axis(p, desc, axis=1)
  s = jnp.cumsum(jnp.abs(ws), axis=1)
  sb = jnp.cumsum(-ws * jnp.take_along_axis(d, desc, axis=1), axis=1) + b0[:, None]

  # Value of the change at lam = the smallest distance: if the target lies above it, every
  # coordinate moves by the same lam (case "low"); else if the box reaches the hyperplane at all,
  # lam lies between two break points (case "mid"); else the row is infeasible.
  b2 = sb[:, -1] - s[:, -1] * p_desc[:, -1]
  low = b - b2 > 0
  mid = (b - b0 > 0) & ~low

  def search(_, bounds):
    lb, ub = bounds
    k = (lb + ub) // 2
    value = (jnp.take_along_axis(sb, k[:, None], axis=1)
             - jnp.take_along_axis(s, k[:, None], axis=1)
             * jnp.take_along_axis(p_desc, k[:, None], axis=1))[:, 0]
    overshoots = b - value > 0
    return jnp.where(overshoots, k, lb), jnp.where(overshoots, ub, k)

  # `*_like(b)` rather than fresh constants: inside `shard_map` the carry must vary like `b`.
  lb, _ = jax.lax.fori_loop(
      0, math.ceil(math.log2(num_dims)), search,
      (jnp.zeros_like(b, jnp.int32), jnp.full_like(b, num_dims - 1, jnp.int32)))

  def safe_div(num, den):
    return num / jnp.where(den == 0, 1.0, den)

  lam_low = jnp.maximum(safe_div(b - sb[:, -1], -s[:, -1]), 0.0)[:, None]
  d_low = (2 * a - 1) * lam_low
  sb_lb = jnp.take_along_axis(sb, lb[:, None], axis=1)[:, 0]
  s_lb = jnp.take_along_axis(s, lb[:, None], axis=1)[:, 0]
  lam_mid = jnp.maximum(safe_div(b - sb_lb, -s_lb), 0.0)[:, None]
  d_mid = jnp.minimum(lam_mid, d) * a + jnp.maximum(-lam_mid, d) * (1 - a)
  d = jnp.where(low[:, None], d_low, jnp.where(mid[:, None], d_mid, d))
  return d * moves


def _linf(v: jax.Array) -> jax.Array:
  """`[B, ...] -> [B]` L-inf norms."""
  return jnp.max(jnp.abs(v.reshape(v.shape[0], -1)), axis=1)


def fab_targeted(
    logits_fn: LogitsFn,
    x: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    epsilon: float,
    num_steps: int = 100,
    num_target_classes: int = 9,
    num_restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
) -> jax.Array:
  """Targeted FAB, L-inf (see the module docstring for the algorithm and the reference).

  Args:
    logits_fn: `x [B, H, W, C] -> logits [B, K]`; examples must be independent (inference mode).
    x: clean images `[B, H, W, C]` in [0, 1].
    labels: `[B]` integer labels.
    key: one key or `[B]` per-example keys; used only for the random starts of restarts r > 0.
    epsilon: L-inf radius: a found point counts only within it.
    num_steps: iterations per run (official `n_iter`).
    num_target_classes: target ranks 2 .. num_target_classes + 1 of the clean logits, capped at
      `K - 1`.
    num_restarts: runs per target rank; all but the first start at a random point.
    alpha_max: the largest weight of the step from the clean point.
    eta: overshoot of the projection steps.
    beta: backward step toward the clean point after a success.

  Returns:
    `x_adv [B, H, W, C]`, no gradient path: for each example fooled within `epsilon`, the point of
    the first (rank, restart) round that fooled it; otherwise (including examples misclassified to
    begin with) `x` unchanged.
  """
  x = jax.lax.stop_gradient(x)
  labels = labels.astype(jnp.int32)
  batch = x.shape[0]
  x0 = x.reshape(batch, -1)
  clean_logits = logits_fn(x)
  num_classes = clean_logits.shape[-1]
  num_targets = min(num_target_classes, num_classes - 1)
  if num_targets <= 0 or num_steps <= 0:
    return x
  robust = jnp.argmax(clean_logits, axis=-1) == labels
  ranked = jnp.argsort(-clean_logits, axis=-1)  # [B, K], most likely first
  label_onehot = jax.nn.one_hot(labels, num_classes, dtype=clean_logits.dtype)

  def misclassified(z):
    return jnp.argmax(logits_fn(z), axis=-1) != labels

  def single_run(target_class, x_start):
    """One official `attack_single_run` (targeted) on the whole batch -> (best `[B, D]`, found)."""
    cotangent = jax.nn.one_hot(target_class, num_classes, dtype=clean_logits.dtype) - label_onehot

    def step(_, carry):
      x1, best, best_norm = carry
      logits, vjp_fn = jax.vjp(logits_fn, x1.reshape(x.shape))
      diff = (jnp.take_along_axis(logits, target_class[:, None], axis=1)
              - jnp.take_along_axis(logits, labels[:, None], axis=1))[:, 0]  # z_t - z_y
      w = vjp_fn(cotangent)[0].reshape(batch, -1)
      b = jnp.sum(w * x1, axis=1) - diff.astype(w.dtype)  # <w, z> = b linearises z_t = z_y
      d = projection_linf(jnp.concatenate([x1, x0]), jnp.concatenate([w, w]),
                          jnp.concatenate([b, b]))
      d1, d2 = d[:batch], d[batch:]
      a1 = jnp.maximum(_linf(d1), 1e-8)
      a2 = jnp.maximum(_linf(d2), 1e-8)
      alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
      x1 = jnp.clip((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha, 0.0, 1.0)
      is_adv = misclassified(x1.reshape(x.shape))
      norm = _linf(x1 - x0)
      better = is_adv & (norm < best_norm)
      best = jnp.where(better[:, None], x1, best)
      best_norm = jnp.where(better, norm, best_norm)
      x1 = jnp.where(is_adv[:, None], x0 + (x1 - x0) * beta, x1)
      return x1, best, best_norm

    init = (x_start.reshape(batch, -1), x0, jnp.full_like(x0[:, 0], jnp.inf))
    _, best, best_norm = jax.lax.fori_loop(0, num_steps, step, init)
    return best, jnp.isfinite(best_norm)

  def attack_round(j, carry):
    """Round j: target rank j // num_restarts + 2, restart j % num_restarts."""
    target_class = jax.lax.dynamic_index_in_dim(ranked, j // num_restarts + 1, axis=1,
                                                keepdims=False)

    def run(carry):
      robust, x_adv = carry
      x_start = x
      if num_restarts > 1:
        noise = rng.uniform_like(rng.fold(key, j), x, -1.0, 1.0)
        scale = 0.5 * epsilon / jnp.maximum(_linf(noise), 1e-12)
        random_start = jnp.clip(x + scale.reshape((-1,) + (1,) * (x.ndim - 1)) * noise, 0.0, 1.0)
        x_start = jnp.where(j % num_restarts > 0, random_start, x)
      best, found = single_run(target_class, x_start)
      candidate = jnp.where(found[:, None], best, x0).reshape(x.shape)
      fooled = robust & misclassified(candidate) & (_linf(candidate - x) <= epsilon)
      return robust & ~fooled, jnp.where(fooled.reshape((-1,) + (1,) * (x.ndim - 1)),
                                         candidate, x_adv)

    return jax.lax.cond(jnp.any(carry[0]), run, lambda c: c, carry)

  _, x_adv = jax.lax.fori_loop(0, num_targets * num_restarts, attack_round, (robust, x))
  return jax.lax.stop_gradient(project(x_adv, x, epsilon))
