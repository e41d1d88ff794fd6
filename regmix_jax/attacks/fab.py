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
  projections sort nothing; ties among break points change no L-inf or L2 projection, and in the
  L1 one the first tied coordinate in index order moves partly (a stable sort's choice; the
  official's `torch.sort` is not stable and may pick another: a step of the same L1 length).
- The projections evaluate every closed-form case on every row and select per row with `where`;
  divisions are guarded against a zero denominator on rows where the case does not apply.
- The best distance starts at `inf` rather than `1e10` ("nothing found yet").
- The result is projected onto the `epsilon`-ball around `x` and onto [0, 1] at the end, a no-op
  up to float rounding.

Cost: per pass, `num_steps` forward-backward passes (untargeted: one forward and a K-cotangent
backward) plus `num_steps + 1` forward passes, and per example and iteration two projections
of `H * W * C` values (31 bisection passes over them each; no sort).
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
  value; 31 halvings reach adjacent floats from any interval in [0, 1]; `_segment`). Each halving
  is one pass over the row, where XLA:CPU's sort of the `2B x D` values was an order of magnitude
  slower (docs/performance.md).
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

  moving, s_t, sb_t = _segment(aw, p, b0, c, p_min, jnp.max(p, axis=1))

  lam_low = jnp.maximum(_safe_div(c - total_wp, -total_w), 0.0)[:, None]
  d_low = (2 * a - 1) * lam_low
  lam_mid = jnp.maximum(_safe_div(c - sb_t, -s_t), 0.0)[:, None]
  d_mid = jnp.minimum(lam_mid, d) * a + jnp.maximum(-lam_mid, d) * (1 - a)
  d = jnp.where(low[:, None], d_low, jnp.where(mid[:, None], d_mid, d))
  return d * moves


def _segment(aw, p, b0, c, p_lo, p_hi):
  """The segment of `g(lam) = b0 + sum_i aw_i max(p_i - lam, 0)` (`= -sum_i aw_i min(lam, p_i)`:
  non-increasing, piecewise linear, break points `p_i >= 0`) on which `g` crosses `c`, without
  sorting: `T = {i : p_i >= tau}` for the smallest float `tau` in `[p_lo, p_hi]` with
  `g(tau) < c`, by bisection over the bit patterns of non-negative floats (monotone in the
  value; 31 halvings reach adjacent floats). Returns `(T as 0 / 1 [N, D], sum_T aw [N],
  b0 + sum_T aw p [N])`: on the segment, `g(lam) = b0 + sum_T aw p - lam sum_T aw`."""
  as_bits = lambda v: jax.lax.bitcast_convert_type(v, jnp.int32)
  as_float = lambda v: jax.lax.bitcast_convert_type(v, p.dtype)

  def g(tau):  # [N]: the change at lam = tau
    return b0 + jnp.sum(aw * jnp.maximum(p - tau[:, None], 0.0), axis=1)

  def search(_, bounds):  # invariant: g(lo) >= c > g(hi)
    lo, hi = bounds
    m = lo + (hi - lo) // 2
    overshoots = c - g(as_float(m)) > 0
    return jnp.where(overshoots, lo, m), jnp.where(overshoots, m, hi)

  _, hi = jax.lax.fori_loop(0, 31, search, (as_bits(p_lo), as_bits(p_hi)))
  moving = (p >= as_float(hi)[:, None]).astype(p.dtype)
  return moving, jnp.sum(aw * moving, axis=1), b0 + jnp.sum(aw * p * moving, axis=1)


def _oriented(t: jax.Array, w: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The hyperplane `<w, z> = b` of each row, flipped so that the point lies on its positive
  side: `(w', c)` with `c = <w', t> - b' >= 0`; `[N, D]`, `[N]`."""
  c = jnp.sum(w * t, axis=1) - b
  sign = jnp.where(c >= 0, 1.0, -1.0).astype(w.dtype)
  return w * sign[:, None], c * sign


def projection_l2(points: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """The L2 projection of each point onto `{z : <w, z> = b}` within `[0, 1]^D`, as a step.

  The official `projection_l2` (`fab_projections.py:62-114`) with fixed shapes and without its
  sort. With the row oriented so that `<w, t> >= b` (needed change `-c`, `c >= 0`), the step
  `d(lam) = clip(-lam w, -t, 1 - t) = -w min(lam, r)` (`r_i` the `lam` at which coordinate i
  reaches its face) changes `<w, z>` by `g(lam) = -sum_i w_i^2 min(lam, r_i)`: `projection_linf`'s
  function with weights `w_i^2` and break points `r_i`. The official sorts the `r_i` and
  binary-searches their cumulative sums for the segment where `g` reaches `-c`; here `_segment`
  finds the same segment by bisection (no sort: XLA:CPU's sort of the `2B x D` values dominated
  FAB's L2 step), then `lam = (c + sum_{saturated} w_i^2 r_i) / sum_{unsaturated} w_i^2` (before
  the first break point nothing is saturated: the official's `lam = c / sum w^2`); a hyperplane
  beyond the box gets every coordinate at its face. Coordinates with `|w_i| < 1e-8` never
  move (the official gives them `r = 1e12`). Sums in another order than the official's cumulative
  sums: results agree up to float rounding.

  Args:
    points: `[N, D]` points `t` in [0, 1]; w: `[N, D]` normals; b: `[N]` offsets.

  Returns:
    `d [N, D]`.
  """
  t = points
  w, c = _oriented(t, w, b)  # :66-68
  small = jnp.abs(w) < 1e-8
  w_safe = jnp.where(small, 1.0, w)
  r = jnp.clip(jnp.maximum(t / w_safe, (t - 1) / w_safe), -1e12, 1e12)  # :70-72
  r = jnp.maximum(jnp.where(small, 0.0, r), 0.0)  # small: never moves (weight 0 below)
  w2 = jnp.where(small, 0.0, w * w)
  d = -(r * w) * (~small)  # :85, every coordinate to its face
  b0 = -jnp.sum(w2 * r, axis=1)  # the change at full saturation, = <w, d>
  r_min = jnp.min(jnp.where(small, jnp.inf, r), axis=1)
  r_min = jnp.where(jnp.isfinite(r_min), r_min, 0.0)
  beyond = b0 + c > 0  # :93 c3: not reached at full saturation
  # The official's case c4 (reached before the first break point: lam = c / sum w^2, :98-100)
  # is the segment where nothing saturates, which `_segment` finds like the others.
  _, s_t, sb_t = _segment(w2, r, b0, -c, r_min, jnp.max(r, axis=1))
  lam = jnp.where(s_t == 0, 0.0, _safe_div(sb_t + c, s_t))  # :105-107
  d = jnp.where(beyond[:, None], d, -jnp.minimum(lam[:, None], r) * w)
  return d * (~small)


def projection_l1(points: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """The L1 projection of each point onto `{z : <w, z> = b}` within `[0, 1]^D`, as a step.

  The official `projection_l1` (`fab_projections.py:117-162`) with fixed shapes and without its
  sort: with the row oriented so that `<w, t> >= b`, the coordinates move to the box face that
  lowers `<w, z>` greedily in order of decreasing `|w_i|` (increasing `r_i = 1 / |w_i|`, ties in
  index order, as the official's stable sort), the last one partially; rows whose hyperplane the
  box does not reach get the box corner. The official sorts and binary-searches the cumulative
  changes; here the `r` at which the running change reaches the target is found by bisection
  over the bit patterns of the `r_i` (`F(rho) = c + sum_{r_i <= rho} ds_i` is non-increasing),
  and only the coordinates tied at that `r` are summed in index order (a cumulative sum, no
  sort). Sums in another order than the official's: results agree up to float rounding.
  Arguments and result as `projection_l2`.
  """
  t = points
  w, c = _oriented(t, w, b)  # :121-123
  r = jnp.minimum(jnp.abs(_safe_div(1.0, w)) + jnp.where(w == 0, 1e12, 0.0), 1e12)  # :125
  d = ((w < 0).astype(t.dtype) - t) * (w != 0)  # :129-130, every coordinate to its face
  ds = jnp.minimum(-w * t, w * (1 - t))  # its change of <w, z>, <= 0
  reachable = c + jnp.sum(ds, axis=1) < 0  # :134 c2
  as_bits = lambda v: jax.lax.bitcast_convert_type(v, jnp.int32)
  as_float = lambda v: jax.lax.bitcast_convert_type(v, r.dtype)

  def search(_, bounds):  # invariant: F(lo) > 0 >= F(hi)
    lo, hi = bounds
    m = lo + (hi - lo) // 2
    reached = c + jnp.sum(jnp.where(r <= as_float(m)[:, None], ds, 0.0), axis=1) <= 0
    return jnp.where(reached, lo, m), jnp.where(reached, m, hi)

  _, hi = jax.lax.fori_loop(0, 31, search, (as_bits(jnp.min(r, axis=1)) - 1,
                                             as_bits(jnp.max(r, axis=1))))
  rho = as_float(hi)[:, None]
  tie = r == rho
  base = c + jnp.sum(jnp.where(r < rho, ds, 0.0), axis=1)  # > 0: before the tie group
  running = base[:, None] + jnp.cumsum(jnp.where(tie, ds, 0.0), axis=1)  # through coordinate i
  full = (r < rho) | (tie & (running > 0))
  partial = tie & (running <= 0) & (running - ds > 0)  # :153-156, the one that reaches it
  alpha = -_safe_div(running - ds, w)
  d_reached = jnp.where(full, d, jnp.where(partial, alpha, 0.0))
  d = jnp.where(reachable[:, None], d_reached, d)
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
