"""Threat models of AutoAttack: per-example L-inf, L2 and L1 norms, balls and the official L1
projection, over `[B, ...]` arrays (any trailing shape; NHWC images here).

Reference: fra31/auto-attack (MIT), `autoattack/other_utils.py:32-45` (`L1_norm`, `L2_norm`,
`L0_norm`) and `autoattack/autopgd_base.py:19-83` (`L1_projection`). The official code is NCHW;
these functions flatten every example, so the layout does not matter.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NORMS = ("Linf", "L2", "L1")


def check_norm(norm: str) -> str:
  """Returns `norm` or raises a ValueError naming the three choices (`autoattack.py:18`)."""
  if norm not in NORMS:
    raise ValueError(f"norm={norm!r}: AutoAttack's threat models are {', '.join(NORMS)} "
                     "(the official spelling, e.g. norm='L2').")
  return norm


def flat(v: jax.Array) -> jax.Array:
  """`[B, ...] -> [B, D]`."""
  return v.reshape(v.shape[0], -1)


def expand(v: jax.Array, like: jax.Array) -> jax.Array:
  """`[B] -> [B, 1, ..., 1]`, broadcastable against `like [B, ...]`."""
  return v.reshape((-1,) + (1,) * (like.ndim - 1))


def lp_norm(v: jax.Array, norm: str) -> jax.Array:
  """`[B, ...] -> [B]`: max |v| (Linf), sqrt(sum v^2) (L2) or sum |v| (L1) per example
  (`other_utils.py:32-42`; Linf as `autoattack.py:249`)."""
  v = flat(v)
  if norm == "Linf":
    return jnp.max(jnp.abs(v), axis=1)
  if norm == "L2":
    return jnp.sqrt(jnp.sum(v * v, axis=1))
  if norm == "L1":
    return jnp.sum(jnp.abs(v), axis=1)
  raise ValueError(check_norm(norm))


def l0_norm(v: jax.Array) -> jax.Array:
  """`[B, ...] -> [B]` float: the number of non-zero entries per example (`other_utils.py:44-45`)."""
  return jnp.sum(flat(v) != 0, axis=1).astype(v.dtype)


def dual_norm(v: jax.Array, norm: str) -> jax.Array:
  """`[B, ...] -> [B]`: the dual norm FAB divides by (`fab_base.py:170-183`): L1 for Linf, L2 for
  L2, Linf for L1."""
  return lp_norm(v, {"Linf": "L1", "L2": "L2", "L1": "Linf"}[norm])


def normalize(v: jax.Array, norm: str) -> jax.Array:
  """`v / (||v||_p + 1e-12)` per example (APGD's `normalize`, `autopgd_base.py:176-189`)."""
  return v / expand(lp_norm(v, norm) + 1e-12, v)


def kth_smallest(a: jax.Array, k: jax.Array) -> jax.Array:
  """`jnp.sort(a, axis=1)[i, k[i]]` for non-negative `a [N, D]` and `k [N]` in `[0, D)`, without
  sorting: the smallest float `v` with `#{a_i <= v} > k`, by bisection over the bit patterns of
  non-negative floats (monotone in the value; 31 halvings reach adjacent floats), one pass over
  the row each. Exact: the value is an entry of the row."""
  as_float = lambda v: jax.lax.bitcast_convert_type(v, a.dtype)

  def search(_, bounds):  # invariant: #{a_i <= lo} <= k < #{a_i <= hi} (lo = -1: below every a)
    lo, hi = bounds
    m = lo + (hi - lo) // 2
    enough = jnp.sum(a <= jnp.where(m < 0, -1.0, as_float(jnp.maximum(m, 0)))[:, None],
                     axis=1) > k
    return jnp.where(enough, lo, m), jnp.where(enough, m, hi)

  top = jax.lax.bitcast_convert_type(jnp.max(a, axis=1), jnp.int32)
  _, hi = jax.lax.fori_loop(0, 32, search, (jnp.full_like(top, -1), top))
  return as_float(hi)


def l1_projection(x: jax.Array, y: jax.Array, epsilon) -> jax.Array:
  """The official `L1_projection(x2, y2, eps1)` (`autopgd_base.py:19-83`): the same map, without
  its sort.

  Returns `delta` such that `x + y + delta` is the Euclidean projection of `x + y` onto
  `{z : ||z - x||_1 <= epsilon, 0 <= z <= 1}`: box-clipped soft thresholding of `y` with one
  threshold per example.

  Args:
    x: `[B, ...]` centres in [0, 1].
    y: `[B, ...]` perturbations (`x + y` is the point to project).
    epsilon: the radius, a scalar or `[B]`.

  Returns:
    `delta`, shaped like `y`.

  Coordinate i shrinks by `clip(alpha, e_i, |y_i|)` towards x, `e_i` its excess over the box
  (the official `-u`), so the total shrink `G(alpha)` is non-decreasing in the threshold; the
  projection's threshold is the smallest `alpha >= 0` with `G(alpha) >= ||y||_1 - epsilon` (0
  where clipping to the box alone reaches the ball: the official `c5` false). The official sorts
  the `2 D` break points of `G` and binary-searches them; here `alpha` is found by bisection
  over the bit patterns of non-negative floats (monotone in the value; 31 halvings reach
  adjacent floats), each one pass over the row, because XLA:CPU's sort of the break points took
  most of an L1 Square or APGD iteration (docs/performance.md). Results agree up to float
  rounding; a NaN in a row makes that whole row NaN (the official: its coordinate).
  """
  shape = y.shape
  x2, y2 = flat(x).astype(jnp.float32), flat(y).astype(jnp.float32)
  batch = y2.shape[0]
  eps = jnp.broadcast_to(jnp.asarray(epsilon, jnp.float32), (batch,))
  size = jnp.abs(y2)
  excess = -jnp.minimum(jnp.minimum(1.0 - x2 - y2, x2 + y2), 0.0)  # the official -u, :33-35
  target = jnp.sum(size, axis=1) - eps  # the shrink that brings ||y||_1 to epsilon
  shrink = lambda alpha: jnp.minimum(jnp.maximum(excess, alpha[:, None]), size)
  as_bits = lambda v: jax.lax.bitcast_convert_type(v, jnp.int32)
  as_float = lambda v: jax.lax.bitcast_convert_type(v, jnp.float32)

  def search(_, bounds):  # invariant: G(hi) >= target; the answer is in [lo, hi]
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = jnp.sum(shrink(as_float(mid)), axis=1) >= target
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  top = as_bits(jnp.max(size, axis=1))  # G(max |y_i|) = ||y||_1 >= target
  _, alpha = jax.lax.fori_loop(0, 31, search, (jnp.zeros_like(top), top))
  return (-jnp.sign(y2) * shrink(as_float(alpha))).reshape(shape).astype(y.dtype)


def project(x_adv: jax.Array, x: jax.Array, epsilon, norm: str) -> jax.Array:
  """`x_adv [B, ...]` moved into the `norm` ball of radius `epsilon` around `x` and into [0, 1].

  Linf: clipping; L2: the radial shrink `x + d min(1, eps / ||d||_2)`, then the box (APGD's L2
  projection, `autopgd_base.py:336-344`); L1: `x + d + l1_projection(x, d, eps)` (Euclidean
  projection onto ball and box together). A no-op (up to float rounding) on points already
  inside, which is what AutoAttack's attacks return; the official applies no such guard.
  """
  d = x_adv - x
  if norm == "Linf":
    return jnp.clip(x + jnp.clip(d, -epsilon, epsilon), 0.0, 1.0)
  if norm == "L2":
    n = lp_norm(d, "L2")
    scale = jnp.minimum(1.0, epsilon / jnp.maximum(n, 1e-30))
    return jnp.clip(x + d * expand(scale, d), 0.0, 1.0)
  if norm == "L1":
    return jnp.clip(x + d + l1_projection(x, d, epsilon), 0.0, 1.0)
  raise ValueError(check_norm(norm))
