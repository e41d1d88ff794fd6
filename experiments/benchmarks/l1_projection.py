"""The L1 ball-and-box projection (`attacks.norms.l1_projection`: APGD's and Square's L1 steps and
every attack's final L1 projection) against the official algorithm's sort-based form, side by
side in one process, on this CPU.

The library finds each row's threshold by bisection over float bit patterns; the official
`L1_projection` (fra31/auto-attack `autopgd_base.py:19-83`) sorts the row's `2 D` break points.
`sorted_l1_projection` below is our port of the official (the library's until 2026-12-07), kept
here as the baseline. Both are timed on the same rows (best of `--reps` calls after a compile),
their results compared, and then Square L1 alone on a tiny model (the crosscheck test's size,
with `--square_points` points and 1000 queries) with each projection.

  python experiments/benchmarks/l1_projection.py --out=experiments/results/l1_projection_cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from regmix_jax import attacks
from regmix_jax.attacks import norms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# (rows, coordinates): Square / APGD batches of the crosscheck's 8x8x3 MLP and of CIFAR images.
SHAPES = [(300, 192), (64, 3072), (500, 3072)]


def sorted_l1_projection(x, y, epsilon):
  """The official `L1_projection` as the library ported it before (sort + binary search)."""
  shape = y.shape
  x2, y2 = norms.flat(x).astype(jnp.float32), norms.flat(y).astype(jnp.float32)
  batch, dims = y2.shape
  eps = jnp.broadcast_to(jnp.asarray(epsilon, jnp.float32), (batch,))
  sigma = jnp.sign(y2)
  u = jnp.minimum(jnp.minimum(1.0 - x2 - y2, x2 + y2), 0.0)
  l = -jnp.abs(y2)
  vals = -jnp.concatenate([u, l], axis=1)
  order = jnp.argsort(vals, axis=1)
  bs = jnp.take_along_axis(vals, order, axis=1)
  bs2 = jnp.concatenate([bs[:, 1:], jnp.zeros((batch, 1), bs.dtype)], axis=1)
  size1 = jnp.cumsum(jnp.where(order < dims, 1.0, -1.0), axis=1)
  s1 = -jnp.sum(u, axis=1)
  c = eps - jnp.sum(jnp.abs(y2), axis=1)
  c5 = s1 + c < 0
  s = s1[:, None] + jnp.cumsum((bs2 - bs) * size1, axis=1)
  n = 2 * dims

  def search(_, bounds):
    lb, ub = bounds
    m = (lb + ub) // 2
    below = jnp.take_along_axis(s, m[:, None], axis=1)[:, 0] + c < 0
    return jnp.where(below, m, lb), jnp.where(below, ub, m)

  lb, _ = jax.lax.fori_loop(0, math.ceil(math.log2(n)), search,
                            (jnp.zeros_like(c, jnp.int32), jnp.full_like(c, n - 1, jnp.int32)))
  take = lambda a, i: jnp.take_along_axis(a, i[:, None], axis=1)[:, 0]
  den = take(size1, jnp.minimum(lb + 1, n - 1))
  alpha = (-take(s, lb) - c) / jnp.where(den == 0, 1.0, den) + take(bs2, lb)
  d = jnp.where(c5[:, None], -jnp.minimum(jnp.maximum(-u, alpha[:, None]), -l), u)
  return (sigma * d).reshape(shape).astype(y.dtype)


def _square_seconds(points: int, projection) -> tuple[float, float]:
  """Square L1 alone (1000 queries, eps 3) on a random 8x8x3 MLP with `projection` in place of
  the library's: (wall seconds, robust accuracy)."""
  rs = np.random.RandomState(0)
  w1, w2 = rs.randn(192, 64).astype(np.float32) * 0.3, rs.randn(64, 10).astype(np.float32)
  logits_fn = lambda z: jax.nn.relu(z.reshape(z.shape[0], -1) @ w1) @ w2
  x = rs.rand(points, 8, 8, 3).astype(np.float32)
  y = np.asarray(jnp.argmax(logits_fn(jnp.asarray(x)), -1))
  jax.clear_caches()  # the attacks' jitted functions trace the projection anew
  with mock.patch.object(norms, "l1_projection", projection):
    start = time.perf_counter()
    result = attacks.run_autoattack(logits_fn, x, y, jax.random.key(0), epsilon=3.0, norm="L1",
                                    version=["square"], batch_size=points, progress=False,
                                    overrides={"square": {"num_queries": 1000}})
  return time.perf_counter() - start, float(result.robust_accuracy)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--square_points", type=int, default=300)
  parser.add_argument("--out", default="")
  flags = parser.parse_args()
  rows = []
  for batch, dims in SHAPES:
    rs = np.random.RandomState(batch + dims)
    x = jnp.asarray(rs.rand(batch, dims).astype(np.float32))
    y = jnp.asarray((rs.randn(batch, dims) * 0.05).astype(np.float32))
    eps = 0.25 * float(jnp.abs(y).sum(1).mean())  # a quarter of the rows' L1 norm: a real shrink
    ours, official = (jax.jit(lambda x, y, f=f: f(x, y, eps))
                      for f in (norms.l1_projection, sorted_l1_projection))
    diff = float(jnp.abs(ours(x, y) - official(x, y)).max())
    row = dict(rows=batch, coordinates=dims,
               ours_ms=1e3 * harness.best_seconds(ours, (x, y), flags.reps),
               sorted_ms=1e3 * harness.best_seconds(official, (x, y), flags.reps),
               max_abs_difference=diff)
    rows.append(row)
    print(f"[{batch}, {dims}]: bisection {row['ours_ms']:.2f} ms, sorted {row['sorted_ms']:.2f} ms "
          f"({row['sorted_ms'] / row['ours_ms']:.1f}x), max |difference| {diff:.2e}", flush=True)
  square = {}
  for name, fn in (("bisection", norms.l1_projection), ("sorted", sorted_l1_projection)):
    seconds, robust = _square_seconds(flags.square_points, fn)
    square[name] = dict(seconds=seconds, robust_accuracy=robust)
    print(f"Square L1 alone, {flags.square_points} points, 1000 queries, {name}: {seconds:.1f} s, "
          f"robust {100 * robust:.1f}%", flush=True)
  record = dict(date=time.strftime("%Y-%m-%d %H:%M"), machine=harness.machine(),
                command=" ".join(sys.argv), jax=jax.__version__, projection=rows, square=square)
  if flags.out:
    with open(flags.out, "w") as f:
      json.dump(record, f, indent=1)


if __name__ == "__main__":
  main()
