"""FAB (Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
attack", ICML 2020) for the L-inf, L2 and L1 threat models, targeted (FAB-T, AutoAttack
"standard") and untargeted (AutoAttack "plus").

FAB looks for the smallest perturbation in the attack's norm that changes the prediction. Every
iteration linearises the decision boundary at the current point `x1`: targeted, the boundary
`z_t = z_y` of the target class `t` (the k-th most likely class of the clean point, k = 2 ..
num_target_classes + 1); untargeted, every boundary `z_k = z_y` (the full Jacobian), of which it
takes the closest in the dual norm (`fab_base.py:170-187`). It projects both `x1` and the clean
point `x0` onto that hyperplane intersected with the [0, 1] box (`projection_linf`,
`projection_l2`, `projection_l1`: the exact algorithms of `fab_projections.py`, L-inf without
its sort). With `d1`,
`d2` the two projection steps and `alpha = clip(|d1| / (|d1| + |d2|), 0, alpha_max)` (norms of
the attack, each at least 1e-8), the next point is
`x1 = clip((x1 + eta d1) (1 - alpha) + (x0 + eta d2) alpha, 0, 1)` (`:190-222`). When `x1` is
misclassified (any class), it is kept if its distance to `x0` is the smallest so far, and `x1`
steps back toward the clean point, `x1 = x0 + beta (x1 - x0)` (`:224-254`). A run returns the
best point it found, or the clean point if none.

Reference: the official PyTorch code, fra31/auto-attack (MIT), `autoattack/fab_base.py`
(`FABAttack.attack_single_run`, `perturb`), `autoattack/fab_pt.py`
(`get_diff_logits_grads_batch` `:77-98`, `get_diff_logits_grads_batch_targeted` `:100-114`) and
`autoattack/fab_projections.py`. AutoAttack runs FAB with `n_iter=100, alpha_max=0.1, eta=1.05,
beta=0.9` for every norm; FAB-T with `n_target_classes=9, n_restarts=1`, untargeted FAB ("plus")
with 5 restarts. As in `perturb` (`fab_base.py:265-329`), the passes (target rank x restart, or
restarts) are tried in order and each attacks only the examples not yet fooled; a pass's result
counts only if it is misclassified and within `epsilon` of the clean point. Restart 0 starts at
the clean point; restarts r > 0 at `clip(x + (epsilon / 2) u / ||u||, 0, 1)` (`:130-161`; Linf:
`u ~ U(-1, 1)` and the max norm, L2: `u ~ N(0, 1)` and the 2-norm, L1: `u ~ N(0, 1)` and the
1-norm), so with `num_restarts=1` the attack draws no random numbers at all.

Deviations from the official code, none of which changes the algorithm:
- Fixed shapes instead of subset selection: every pass and every iteration runs on the whole
  batch it is given, and masks decide which examples' results are kept. Results for the attacked
  examples are the same as long as `logits_fn` treats examples independently (inference mode).
  `run_autoattack` gathers the still-robust points between passes, as the official does.
- Gradients: targeted, one `jax.vjp` of `logits_fn` with the cotangent `onehot(t) - onehot(y)`
  (the official back-propagates the batch sum of the differences: the same per-example
  gradients); untargeted, the full Jacobian as one `vmap` of the vjp over the K one-hot
  cotangents (the official runs K backward passes in a Python loop).
- Randomness (restarts r > 0 only): each example's start comes from its own key folded with the
  pass index; the official draws from torch's global generator. The start's noise is divided by
  `max(||u||, 1e-12)`.
- Ties: the target ranking is a stable descending sort of the clean logits and predictions are
  `argmax` (first index among equal logits); torch's order among ties is unspecified. The
  projections use stable sorts; ties among the sorted break points do not change a projection.
- The projections evaluate every closed-form case on every row and select per row with `where`;
  divisions are guarded against a zero denominator on rows where the case does not apply.
- The best distance starts at `inf` rather than `1e10` ("nothing found yet").
- The result is projected onto the `epsilon`-ball around `x` and onto [0, 1] at the end, a no-op
  up to float rounding.

Cost: per pass, `num_steps` forward-backward passes (untargeted: one forward and a K-cotangent
backward) plus `num_steps + 1` forward passes, and per example and iteration two projections
of `H * W * C` values (L-inf: 31 bisection passes over them; L2 / L1: one or two sorts).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from regmix_jax import rng
from regmix_jax.attacks import norms
from regmix_jax.attacks.apgd import (CLEAN_CALL, RANK_CALL, Model, as_model,
                                     example_keys_for, model_key, run_passes)


def _safe_div(num, den):
  return num / jnp.where(den == 0, 1.0, den)


def projection_linf(points: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """The L-inf projection of each point onto `{z : <w, z> = b}` within `[0, 1]^D`, as a step.

  The official `projection_linf` (`fab_projections.py:7-59`) with fixed shapes and without its
  sort. After orienting each row so that `<w, t> >= b`, moving each coordinate i by at most `lam`
  toward the box face that lowers `<w, z>` changes `<w, z>` by
  `g(lam) = -sum_i |w_i| min(lam, p_i)`, `p_i` being the distance to that face: piecewise linear
  and non-increasing in `lam`, with break points at the `p_i`. The official sorts the `p_i` and
  binary-searches the sorted break points for the segment where `g` crosses the needed change
  `c`; the step is then `lam = (c - sum_{i not in T} |w_i| p_i) / -sum_{i in T} |w_i|` on the
  segment's set `T` of coordinates that move by `lam` (the break points above it). Here the same
  `T` is found without sorting: it is `{i : p_i >= tau}` for the smallest float `tau` with
  `g(tau) < c`, found by bisection over the bit patterns of non-negative floats (monotone in the
  value; 31 halvings reach adjacent floats from any interval in [0, 1]). Each halving is one pass
  over the row, where XLA:CPU's sort of the `2B x D` values was an order of magnitude slower
  (docs/performance.md).
  The sums are taken in another order than the official's cumulative sums, so results agree up
  to float rounding. Rows whose target lies before the first break point move every coordinate
  by the same `lam`; rows whose hyperplane does not meet the box get the step to the box corner
  that comes closest to it (every coordinate to its face); coordinates with `w_i = 0` never move.

  Args:
    points: `[N, D]` points `t` in [0, 1].
    w: `[N, D]` hyperplane normals.
    b: `[N]` hyperplane offsets.

  Returns:
    `d [N, D]`: `t + d` is the projection (or the closest box corner, when the hyperplane misses the
    box).
  """
  t = points
  sign = jnp.where(jnp.sum(w * t, axis=1) - b >= 0, 1.0, -1.0).astype(w.dtype)
  w = w * sign[:, None]
  b = b * sign
  moves = (w != 0).astype(t.dtype)
  a = (w < 0).astype(t.dtype)  # the box face each coordinate moves toward: 1 where w < 0, else 0
  d = (a - t) * moves  # the full move to that face
  p = jnp.maximum(a - t * (2 * a - 1), 0.0)  # its length
  aw = jnp.abs(w)
  c = b - jnp.sum(w * t, axis=1)  # the change of <w, z> needed, <= 0
  b0 = jnp.sum(w * d, axis=1)  # the largest decrease the box allows, <= 0 (= g(max p))
  total_w = jnp.sum(aw, axis=1)
  total_wp = b0 + jnp.sum(aw * p, axis=1)  # the official's last cumulative sum (0 up to rounding)
  p_min = jnp.min(p, axis=1)

  # Value of the change at lam = the smallest distance: if the target lies above it, every
  # coordinate moves by the same lam (case "low"); else if the box reaches the hyperplane at all,
  # lam lies between two break points (case "mid"); else the row is infeasible.
  low = c - (total_wp - total_w * p_min) > 0
  mid = (c - b0 > 0) & ~low

  def g(tau):  # [N]: the change at lam = tau
    return b0 + jnp.sum(aw * jnp.maximum(p - tau[:, None], 0.0), axis=1)

  as_bits = lambda v: jax.lax.bitcast_convert_type(v, jnp.int32)
  as_float = lambda v: jax.lax.bitcast_convert_type(v, t.dtype)

  def search(_, bounds):  # invariant: g(lo) >= c > g(hi)
    lo, hi = bounds
    m = lo + (hi - lo) // 2
    overshoots = c - g(as_float(m)) > 0
    return jnp.where(overshoots, lo, m), jnp.where(overshoots, m, hi)

  _, hi = jax.lax.fori_loop(0, 31, search, (as_bits(p_min), as_bits(jnp.max(p, axis=1))))
  moving = (p >= as_float(hi)[:, None]).astype(t.dtype)  # T: the coordinates that move by lam
  s_t = jnp.sum(aw * moving, axis=1)
  sb_t = b0 + jnp.sum(aw * p * moving, axis=1)

  lam_low = jnp.maximum(_safe_div(c - total_wp, -total_w), 0.0)[:, None]
  d_low = (2 * a - 1) * lam_low
  lam_mid = jnp.maximum(_safe_div(c - sb_t, -s_t), 0.0)[:, None]
  d_mid = jnp.minimum(lam_mid, d) * a + jnp.maximum(-lam_mid, d) * (1 - a)
  d = jnp.where(low[:, None], d_low, jnp.where(mid[:, None], d_mid, d))
  return d * moves


def _oriented(t: jax.Array, w: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The hyperplane `<w, z> = b` of each row, flipped so that the point lies on its positive
  side: `(w', c)` with `c = <w', t> - b' >= 0`; `[N, D]`, `[N]`."""
  c = jnp.sum(w * t, axis=1) - b
  sign = jnp.where(c >= 0, 1.0, -1.0).astype(w.dtype)
  return w * sign[:, None], c * sign


def projection_l2(points: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """The L2 projection of each point onto `{z : <w, z> = b}` within `[0, 1]^D`, as a step.

  A port of the official `projection_l2` (`fab_projections.py:62-114`) to fixed shapes: with the
  row oriented so that `<w, t> >= b`, the step `d(lam) = clip(-lam w, -t, 1 - t)` lowers `<w, z>`
  piecewise linearly in `lam`, with break points where coordinates saturate; a binary search over
  the sorted break points finds the `lam` that reaches the hyperplane. Rows whose hyperplane does
  not meet the box get the full saturation (the box corner); coordinates with `|w_i| < 1e-8`
  never move.

  Args:
    points: `[N, D]` points `t` in [0, 1]; w: `[N, D]` normals; b: `[N]` offsets.

  Returns:
    `d [N, D]`.
  """
  t = points
  num_dims = t.shape[1]
  w, c = _oriented(t, w, b)  # :66-68
  small = jnp.abs(w) < 1e-8
  w_safe = jnp.where(small, 1.0, w)
  r = jnp.clip(jnp.maximum(t / w_safe, (t - 1) / w_safe), -1e12, 1e12)  # :70-72
  r = jnp.where(small | (r == -1e12), 1e12, r)
  order = jnp.argsort(r, axis=1, stable=True)
  rs = jnp.take_along_axis(r, order, axis=1)
  rs2 = jnp.concatenate([rs[:, 1:], jnp.zeros_like(rs[:, :1])], axis=1)
  rs = jnp.where(rs == 1e12, 0.0, rs)
  rs2 = jnp.where(rs2 == 1e12, 0.0, rs2)
  w3s = jnp.take_along_axis(w * w, order, axis=1)
  w5 = jnp.sum(w3s, axis=1, keepdims=True)
  ws = w5 - jnp.cumsum(w3s, axis=1)
  d = -(r * w) * (~small)  # :85
  s = jnp.concatenate([-w5 * rs[:, :1], jnp.cumsum((rs - rs2) * ws, axis=1) - w5 * rs[:, :1]],
                      axis=1)  # :88-89
  c4 = s[:, 0] + c < 0
  c3 = jnp.sum(d * w, axis=1) + c > 0
  c2 = ~(c4 | c3)

  def search(_, bounds):  # :95-103
    lb, ub = bounds
    m = (lb + ub) // 2
    above = jnp.take_along_axis(s, m[:, None], axis=1)[:, 0] + c > 0
    return jnp.where(above, m, lb), jnp.where(above, ub, m)

  lb, _ = jax.lax.fori_loop(0, math.ceil(math.log2(num_dims)), search,
                            (jnp.zeros_like(c, jnp.int32), jnp.full_like(c, num_dims - 1,
                                                                          jnp.int32)))
  take = lambda a: jnp.take_along_axis(a, lb[:, None], axis=1)[:, 0]
  d_c4 = -_safe_div(c, w5[:, 0])[:, None] * w  # :93
  ws_lb = take(ws)
  alpha = jnp.where(ws_lb == 0, 0.0, _safe_div(take(s) + c, ws_lb) + take(rs))  # :105-107
  c5 = alpha[:, None] > r
  d_c2 = jnp.where(c5, d, -alpha[:, None] * w)
  d = jnp.where(c4[:, None], d_c4, jnp.where(c2[:, None], d_c2, d))
  return d * (~small)


def projection_l1(points: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """The L1 projection of each point onto `{z : <w, z> = b}` within `[0, 1]^D`, as a step.

  A port of the official `projection_l1` (`fab_projections.py:117-162`) to fixed shapes: with the
  row oriented so that `<w, t> >= b`, the coordinates move to the box face that lowers `<w, z>`
  greedily in order of decreasing `|w_i|`, the last one partially; rows whose hyperplane does not
  meet the box get the box corner. Arguments and result as `projection_l2`.
  """
  t = points
  num_dims = t.shape[1]
  w, c = _oriented(t, w, b)  # :121-123
  r = jnp.minimum(jnp.abs(_safe_div(1.0, w)) + jnp.where(w == 0, 1e12, 0.0), 1e12)  # :125
  order = jnp.argsort(r, axis=1, stable=True)
  rank = jnp.argsort(order, axis=1, stable=True)
  d = ((w < 0).astype(t.dtype) - t) * (w != 0)  # :129-130
  ds = jnp.take_along_axis(jnp.minimum(-w * t, w * (1 - t)), order, axis=1)
  s = jnp.cumsum(jnp.concatenate([c[:, None], ds], axis=1), axis=1)  # [N, D + 1]
  c2 = s[:, -1] < 0

  def search(_, bounds):  # :141-151
    lb, ub = bounds
    m = (lb + ub) // 2
    above = jnp.take_along_axis(s, m[:, None], axis=1)[:, 0] > 0
    return jnp.where(above, m, lb), jnp.where(above, ub, m)

  lb, _ = jax.lax.fori_loop(0, math.ceil(math.log2(num_dims)), search,
                            (jnp.zeros_like(c, jnp.int32), jnp.full_like(c, num_dims,
                                                                          jnp.int32)))
  lb_c = jnp.minimum(lb, num_dims - 1)
  j = jnp.take_along_axis(order, lb_c[:, None], axis=1)[:, 0]
  w_j = jnp.take_along_axis(w, j[:, None], axis=1)[:, 0]
  s_lb = jnp.take_along_axis(s, lb[:, None], axis=1)[:, 0]
  alpha = -_safe_div(s_lb, w_j)  # :153-156
  d_c2 = jnp.where(rank < lb[:, None], d, 0.0)
  d_c2 = jnp.where(jnp.arange(num_dims)[None, :] == j[:, None], alpha[:, None], d_c2)
  d = jnp.where(c2[:, None], d_c2, d)
  return d * (jnp.abs(w) > 1e-8)


PROJECTIONS = {"Linf": projection_linf, "L2": projection_l2, "L1": projection_l1}


def fab_pass(model: Model, x: jax.Array, labels: jax.Array, keys: jax.Array, p, *, norm: str,
             epsilon: float, targeted: bool, num_steps: int, num_restarts: int,
             alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9
             ) -> tuple[jax.Array, jax.Array]:
  """Pass `p` of `perturb` (targeted: target rank `p // num_restarts + 2`; restart
  `p % num_restarts`, random start when > 0) on every example of `x` (clean-correct ones).

  Args:
    model: `(x, key) -> logits`; x: clean `[B, H, W, C]`; labels `[B]`; keys `[B]` per-example
      keys of the attack; p: the pass index (traced is fine).

  Returns:
    `(x_adv [B, H, W, C], fooled [B] bool)`: fooled = a point within `epsilon` misclassified
    (`fab_base.py:305-313`); x_adv is that point (the clean point where not fooled).
  """
  labels = labels.astype(jnp.int32)
  batch = x.shape[0]
  x0 = x.reshape(batch, -1)
  keys = rng.fold(keys, p)
  call = lambda z, c: model(z.reshape(x.shape), model_key(keys, c))
  clean_logits = call(x0, CLEAN_CALL)
  num_classes = clean_logits.shape[-1]
  label_onehot = jax.nn.one_hot(labels, num_classes, dtype=clean_logits.dtype)
  project = PROJECTIONS[norm]
  restart = p % num_restarts

  if targeted:  # :110-113
    order = jnp.argsort(-call(x0, RANK_CALL), axis=-1, stable=True)
    target_class = jnp.take(order, p // num_restarts + 1, axis=1)
    cotangent = jax.nn.one_hot(target_class, num_classes, dtype=clean_logits.dtype) - label_onehot

  def boundary(x1, it):
    """The closest linearised boundary: `(w [B, D], b [B])` with `<w, z> = b`."""
    logits, vjp_fn = jax.vjp(lambda z: call(z, it), x1)
    if targeted:  # fab_pt.py:100-114
      diff = (jnp.take_along_axis(logits, target_class[:, None], axis=1)
              - jnp.take_along_axis(logits, labels[:, None], axis=1))[:, 0]
      w = vjp_fn(cotangent)[0]
    else:  # fab_pt.py:77-98, fab_base.py:170-187
      eye = jnp.eye(num_classes, dtype=logits.dtype)
      jac = jax.vmap(lambda e: vjp_fn(jnp.broadcast_to(e, logits.shape))[0])(eye)  # [K, B, D]
      grad_y = jnp.take_along_axis(jac, labels[None, :, None], axis=0)[0]
      dg = jac - grad_y[None]
      df = logits - jnp.take_along_axis(logits, labels[:, None], axis=1)  # [B, K]
      df = jnp.where(label_onehot > 0, 1e10, df)
      dual = jax.vmap(lambda g: norms.dual_norm(g, norm))(dg)  # [K, B]
      k = jnp.argmin(jnp.abs(df) / (1e-12 + dual.T), axis=1)
      diff = jnp.take_along_axis(df, k[:, None], axis=1)[:, 0]
      w = jnp.take_along_axis(dg, k[None, :, None], axis=0)[0]
    b = jnp.sum(w * x1, axis=1) - diff.astype(w.dtype)  # :188-189
    return w, b

  def step(it, carry):
    x1, best, best_norm = carry
    w, b = boundary(x1, it)
    d = project(jnp.concatenate([x1, x0]), jnp.concatenate([w, w]), jnp.concatenate([b, b]))
    a = jnp.maximum(norms.lp_norm(d, norm), 1e-8)  # :207-219
    a1, a2 = a[:batch, None], a[batch:, None]
    alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)
    x1 = jnp.clip((x1 + eta * d[:batch]) * (1 - alpha) + (x0 + eta * d[batch:]) * alpha,
                  0.0, 1.0)
    is_adv = jnp.argmax(call(x1, num_steps + it), axis=-1) != labels
    dist = norms.lp_norm(x1 - x0, norm)
    better = is_adv & (dist < best_norm)
    best = jnp.where(better[:, None], x1, best)
    best_norm = jnp.where(better, dist, best_norm)
    x1 = jnp.where(is_adv[:, None], x0 + (x1 - x0) * beta, x1)
    return x1, best, best_norm

  x_start = x0
  if num_restarts > 1:  # :130-161, radius min(res2, eps) = eps
    k = rng.fold(keys, 0)
    u = (rng.uniform_like(k, x0, -1.0, 1.0) if norm == "Linf" else rng.normal_like(k, x0))
    scale = 0.5 * epsilon / jnp.maximum(norms.lp_norm(u, norm), 1e-12)
    x_start = jnp.where(restart > 0, jnp.clip(x0 + scale[:, None] * u, 0.0, 1.0), x0)
  # `*_like` of an input: inside `shard_map` the carry must vary like the data.
  init = (x_start, x0, jnp.full_like(x0[:, 0], jnp.inf))
  _, best, best_norm = jax.lax.fori_loop(0, num_steps, step, init)
  candidate = jnp.where(jnp.isfinite(best_norm)[:, None], best, x0)
  fooled = ((jnp.argmax(call(candidate, 2 * num_steps + 1), axis=-1) != labels)
            & (norms.lp_norm(candidate - x0, norm) <= epsilon))  # :305-313
  return candidate.reshape(x.shape), fooled


def _fab(logits_fn, x, labels, key, *, norm, epsilon, targeted, num_steps, num_target_classes,
         num_restarts, alpha_max, eta, beta, randomized):
  norms.check_norm(norm)
  model = as_model(logits_fn, randomized)
  x = jax.lax.stop_gradient(x)
  labels = labels.astype(jnp.int32)
  keys = example_keys_for(key, x.shape[0])
  clean_logits = model(x, model_key(keys, CLEAN_CALL))
  num_classes = clean_logits.shape[-1]
  num_targets = min(num_target_classes, num_classes - 1) if targeted else 1
  if num_targets <= 0 or num_steps <= 0:
    return x
  robust = jnp.argmax(clean_logits, axis=-1) == labels
  pass_fn = lambda x, y, k, p, active: fab_pass(
      model, x, y, k, p, norm=norm, epsilon=epsilon, targeted=targeted, num_steps=num_steps,
      num_restarts=num_restarts, alpha_max=alpha_max, eta=eta, beta=beta)
  x_adv, _ = run_passes(pass_fn, num_targets * num_restarts, x, labels, keys, robust)
  return jax.lax.stop_gradient(norms.project(x_adv, x, epsilon, norm))


def fab_targeted(logits_fn: Callable, x: jax.Array, labels: jax.Array, key: jax.Array, *,
                 epsilon: float, norm: str = "Linf", num_steps: int = 100,
                 num_target_classes: int = 9, num_restarts: int = 1, alpha_max: float = 0.1,
                 eta: float = 1.05, beta: float = 0.9, randomized: bool = False) -> jax.Array:
  """Targeted FAB (FAB-T; see the module docstring for the algorithm and the reference).

  Args:
    logits_fn: `x [B, H, W, C] -> logits [B, K]`; examples must be independent (inference
      mode). With `randomized=True`, `(x, key) -> logits`.
    x: clean images `[B, H, W, C]` in [0, 1].
    labels: `[B]` integer labels.
    key: one key or `[B]` per-example keys; used only for the random starts of restarts r > 0.
    epsilon: radius in `norm`: a found point counts only within it.
    norm: "Linf", "L2" or "L1".
    num_steps: iterations per run (official `n_iter`).
    num_target_classes: target ranks 2 .. num_target_classes + 1 of the clean logits, capped at
      `K - 1`.
    num_restarts: runs per target rank; all but the first start at a random point.
    alpha_max: the largest weight of the step from the clean point.
    eta: overshoot of the projection steps.
    beta: backward step toward the clean point after a success.

  Returns:
    `x_adv [B, H, W, C]`, no gradient path: for each example fooled within `epsilon`, the point of
    the first pass that fooled it; otherwise (including examples misclassified to begin with) `x`.
  """
  return _fab(logits_fn, x, labels, key, norm=norm, epsilon=epsilon, targeted=True,
              num_steps=num_steps, num_target_classes=num_target_classes,
              num_restarts=num_restarts, alpha_max=alpha_max, eta=eta, beta=beta,
              randomized=randomized)


def fab(logits_fn: Callable, x: jax.Array, labels: jax.Array, key: jax.Array, *,
        epsilon: float, norm: str = "Linf", num_steps: int = 100, num_restarts: int = 5,
        alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
        randomized: bool = False) -> jax.Array:
  """Untargeted FAB (AutoAttack "plus": 5 restarts), every class's boundary linearised through
  the full Jacobian. Arguments and result as `fab_targeted` (no target classes)."""
  return _fab(logits_fn, x, labels, key, norm=norm, epsilon=epsilon, targeted=False,
              num_steps=num_steps, num_target_classes=1, num_restarts=num_restarts,
              alpha_max=alpha_max, eta=eta, beta=beta, randomized=randomized)
