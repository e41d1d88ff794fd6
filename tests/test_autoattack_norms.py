"""AutoAttack's L-inf, L2 and L1 threat models: the projections against brute force, the official
tables (Square sides and eta, APGD's L1 largereps schedule, the versions' settings), every attack
inside its ball and [0, 1] in every norm, and `run_autoattack` giving `autoattack`'s flags."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regmix_jax import attacks
from regmix_jax.attacks import norms

apgd_lib = importlib.import_module("regmix_jax.attacks.apgd")
fab_lib = importlib.import_module("regmix_jax.attacks.fab")
square_lib = importlib.import_module("regmix_jax.attacks.square")
aa_lib = importlib.import_module("regmix_jax.attacks.autoattack")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = {"Linf": 0.03, "L2": 0.3, "L1": 2.0}


def _brute_l1_ball_box(x, y, eps):
  """The Euclidean projection of x + y onto {||z - x||_1 <= eps} n [0, 1], minus x: soft
  thresholding of y clipped to the box, the threshold found by bisection."""
  limit = np.where(y >= 0, 1 - x, x)
  delta = lambda a: np.sign(y) * np.minimum(np.maximum(np.abs(y) - a, 0), limit)
  if np.abs(delta(0)).sum() <= eps:
    return delta(0)
  lo, hi = 0.0, np.abs(y).max()
  for _ in range(100):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if np.abs(delta(mid)).sum() > eps else (lo, mid)
  return delta(hi)


def test_l1_projection_is_the_projection_onto_ball_and_box():
  rs = np.random.RandomState(0)
  x = rs.rand(64, 20)
  x[:16] = np.round(x[:16] * 4) / 4  # ties and points on the box
  y = rs.randn(64, 20) * rs.uniform(0.05, 1, (64, 1))
  eps = rs.uniform(0.05, 3, 64)
  y[5] = 0.0  # nothing to project
  eps[6], eps[7] = 0.0, 1e4  # everything shrinks to x; only the box binds
  got = y + np.asarray(norms.l1_projection(jnp.float32(x), jnp.float32(y), jnp.float32(eps)))
  ref = np.stack([_brute_l1_ball_box(x[i], y[i], eps[i]) for i in range(64)])
  np.testing.assert_allclose(got, ref, atol=2e-5)
  # Image-sized rows: the L1 norm lands on the radius, up to float32 sums over 3072 values.
  x, y = rs.rand(8, 3072), rs.randn(8, 3072) * 0.05
  got = y + np.asarray(norms.l1_projection(jnp.float32(x), jnp.float32(y), 12.0))
  np.testing.assert_allclose(np.abs(got).sum(1), 12.0, rtol=1e-4)
  assert np.all((x + got >= -1e-6) & (x + got <= 1 + 1e-6))


def _brute_l2(t, w, b):
  """min ||d||_2 s.t. <w, t + d> = b, t + d in the box: d = clip(-lam w, -t, 1 - t) by bisection
  (None when infeasible)."""
  c = w @ t - b
  if c < 0:
    w, c = -w, -c
  g = lambda lam: w @ np.clip(-lam * w, -t, 1 - t)
  if g(1e9) + c > 0:
    return None
  lo, hi = 0.0, 1.0
  while g(hi) + c > 0:
    hi *= 2
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if g(mid) + c > 0 else (lo, mid)
  return np.clip(-hi * w, -t, 1 - t)


def test_fab_l2_and_l1_projections_are_the_minimal_steps():
  linprog = pytest.importorskip("scipy.optimize").linprog
  rs = np.random.RandomState(1)
  n, dims = 60, 9
  t, w = rs.rand(n, dims), rs.randn(n, dims)
  w[::5, 0] = 0.0
  b = (w * t).sum(1) + rs.randn(n) * rs.uniform(0.01, 2, n)
  d2 = np.asarray(fab_lib.projection_l2(jnp.float32(t), jnp.float32(w), jnp.float32(b)))
  d1 = np.asarray(fab_lib.projection_l1(jnp.float32(t), jnp.float32(w), jnp.float32(b)))
  checked = 0
  for i in range(n):
    ref = _brute_l2(t[i], w[i], b[i])
    if ref is not None:
      np.testing.assert_allclose(d2[i], ref, atol=1e-4)
      checked += 1
    # L1: the smallest L1 step onto the hyperplane inside the box, by linear programming.
    a_eq = np.concatenate([w[i], -w[i]])[None]
    a_ub = np.block([[np.eye(dims), -np.eye(dims)], [-np.eye(dims), np.eye(dims)]])
    res = linprog(np.ones(2 * dims), A_ub=a_ub, b_ub=np.concatenate([1 - t[i], t[i]]),
                  A_eq=a_eq, b_eq=[b[i] - w[i] @ t[i]], bounds=(0, None), method="highs")
    if res.status == 0:
      assert abs(np.abs(d1[i]).sum() - res.fun) < 1e-4
      assert abs(w[i] @ (t[i] + d1[i]) - b[i]) < 1e-4
  assert checked > 20
  np.testing.assert_array_equal(d2[::5, 0], 0.0)


def test_square_tables_follow_the_official_formulas():
  sides = [square_lib.lp_square_side(square_lib.p_selection(0.8, i, 5000), 32, 32)
           for i in (0, 11, 51, 201, 501, 1001, 2001, 4001)]
  assert sides == [29, 21, 15, 11, 7, 5, 5, 3]
  eta5 = square_lib.eta_table(5, "L2")
  np.testing.assert_allclose(eta5[1], [0.049, 0.16, 0.602, 0.16, 0.049], atol=1e-3)
  np.testing.assert_allclose(eta5[3], [-0.046, -0.148, -0.558, -0.148, -0.046], atol=1e-3)
  assert abs(np.sqrt((eta5 ** 2).sum()) - 1) < 1e-6
  assert abs(np.abs(square_lib.eta_table(7, "L1")).sum() - 1) < 1e-6


def test_versions_have_the_official_settings():
  specs = {s.name: s for s in aa_lib.attack_specs("L1", "standard", 10, epsilon=12.0)}
  assert list(specs) == ["apgd-ce", "apgd-t", "fab-t", "square"]
  assert specs["apgd-ce"].num_passes == 5 and specs["apgd-ce"].settings["use_largereps"]
  assert specs["apgd-t"].num_passes == 5 and specs["apgd-t"].settings["use_largereps"]
  assert specs["fab-t"].num_passes == 9 and specs["square"].settings["num_queries"] == 5000
  assert apgd_lib.largereps_schedule(1.0, 100) == [(3.0, 30), (2.0, 30), (1.0, 40)]
  plus = {s.name: s for s in aa_lib.attack_specs("L2", "plus", 10, epsilon=0.5)}
  assert list(plus) == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
  assert plus["apgd-dlr"].num_passes == 5 and plus["fab"].num_passes == 5
  assert not plus["apgd-ce"].settings["use_largereps"]
  rand = aa_lib.attack_specs("Linf", "rand", 10, epsilon=0.03)
  assert [(s.name, s.num_passes, s.settings["eot_iter"]) for s in rand] == [
      ("apgd-ce", 1, 20), ("apgd-dlr", 1, 20)]
  capped = {s.name: s.num_passes for s in aa_lib.attack_specs("Linf", "standard", 4,
                                                               epsilon=0.03)}
  assert capped["apgd-t"] == 3 and capped["fab-t"] == 3


def _linear(seed=0, shape=(6, 6, 3), n=24, classes=10):
  w = jax.random.normal(jax.random.key(seed), (int(np.prod(shape)), classes)) * 0.3
  x = jax.random.uniform(jax.random.key(seed + 1), (n, *shape))
  x = x.at[:4].set(jnp.round(x[:4]))  # pixels on the box faces
  return (lambda z: z.reshape(z.shape[0], -1) @ w), x


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_every_attack_stays_in_its_ball_and_the_box(norm):
  logits_fn, x = _linear()
  pred = jnp.argmax(logits_fn(x), -1)
  labels = pred.at[:3].set((pred[:3] + 1) % 10)  # misclassified from the start: left alone
  eps = EPS[norm]
  short = {"apgd-ce": dict(num_steps=8), "apgd-dlr": dict(num_steps=8),
           "apgd-t": dict(num_steps=8, num_target_classes=2), "fab": dict(num_steps=8,
                                                                          num_restarts=2),
           "fab-t": dict(num_steps=8, num_target_classes=2), "square": dict(num_queries=30)}
  if norm == "L1":
    short["apgd-ce"].update(use_largereps=True, num_steps=10)
  fooled_any = np.zeros(len(x), bool)
  for name in attacks.AUTOATTACK_NAMES:
    adv = jax.jit(lambda x, y, k, name=name: attacks.AUTOATTACK_ATTACKS[name](
        logits_fn, x, y, k, epsilon=eps, norm=norm, **short[name]))(x, labels, jax.random.key(2))
    size = np.asarray(norms.lp_norm(adv - x, norm))
    assert size.max() <= eps * (1 + 1e-5), (name, size.max())
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0, name
    np.testing.assert_array_equal(adv[:3], x[:3])
    fooled = np.asarray(jnp.argmax(logits_fn(adv), -1) != labels)
    unchanged = np.asarray(jnp.all((adv == x).reshape(len(x), -1), axis=1))
    assert np.all(unchanged | fooled), name  # a point not fooled comes back clean
    fooled_any |= fooled
  assert fooled_any[3:].sum() >= 5  # the radii fool some points in every norm


@pytest.mark.parametrize("norm,version,split,batch,grad_batch", [
    ("Linf", "standard", False, 12, None), ("L1", "standard", True, 12, None),
    ("L2", ["apgd-dlr", "fab", "square"], False, 12, None),
    ("Linf", "standard", False, 40, 24)])  # gradient batches of 24 and 16 points
def test_run_autoattack_gives_the_flags_of_autoattack(norm, version, split, batch, grad_batch):
  logits_fn, x = _linear(seed=3, shape=(5, 5, 3), n=40)
  labels = np.array(jnp.argmax(logits_fn(x), -1))
  labels[:3] = (labels[:3] + 1) % 10
  eps = EPS[norm] * 0.6
  over = {"apgd-ce": dict(num_steps=6, num_restarts=2), "apgd-t": dict(num_steps=6,
                                                                       num_target_classes=3),
          "apgd-dlr": dict(num_steps=6, num_restarts=2), "fab": dict(num_steps=6,
                                                                     num_restarts=2),
          "fab-t": dict(num_steps=6, num_target_classes=3), "square": dict(num_queries=60)}
  key = jax.random.key(7)
  x_fixed, robust_fixed = attacks.autoattack(logits_fn, x, labels, key, epsilon=eps, norm=norm,
                                             version=version, overrides=over)
  result = attacks.run_autoattack(logits_fn, np.asarray(x), labels, key, epsilon=eps,
                                  norm=norm, version=version, batch_size=batch, progress=False,
                                  overrides=over, devices=jax.devices()[:2] if split else None,
                                  grad_batch_size=grad_batch)
  np.testing.assert_array_equal(result.robust, np.asarray(robust_fixed))
  # The same points too (the random starts come from the same per-example keys).
  np.testing.assert_allclose(result.x_adv, np.asarray(x_fixed), atol=1e-5)
  assert 0 < result.robust.sum() < 37  # neither trivial
  assert result.accuracy["clean"] == pytest.approx(37 / 40)
  accs = [result.accuracy[a] for a in result.attacks if a in result.accuracy]
  assert accs == sorted(accs, reverse=True) and accs[-1] == result.robust_accuracy
  size = np.asarray(norms.lp_norm(jnp.asarray(result.x_adv) - x, norm))
  assert size.max() <= eps * (1 + 1e-5)
  # Every non-robust point's x_adv is misclassified; robust points keep the clean image.
  wrong = np.asarray(jnp.argmax(logits_fn(jnp.asarray(result.x_adv)), -1)) != labels
  np.testing.assert_array_equal(wrong, ~result.robust)
  np.testing.assert_array_equal(result.x_adv[result.robust], np.asarray(x)[result.robust])


def test_bucket_sizes_bound_the_padding_and_the_compiles():
  sizes = {attacks.autoattack_runner.bucket_size(n, 500) for n in range(1, 501)}
  assert sizes == {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 500}
  for n in range(1, 501):  # padding: under half the points below 16, a third from there
    assert attacks.autoattack_runner.bucket_size(n, 500) < (2 * n if n < 16 else 1.5 * n + 1)
  assert attacks.autoattack_runner.bucket_size(5, 12) == 8
  assert attacks.autoattack_runner.bucket_size(9, 12) == 12
  assert all(attacks.autoattack_runner.bucket_size(n, 250, 2) % 2 == 0 for n in range(1, 251))
  # Square's finer ladder: no padded point up to 16 (but to a multiple of the devices), at most
  # 7 up to 128, a quarter above.
  for n in range(1, 501):
    size = attacks.autoattack_runner.bucket_size(n, 500, fine=True)
    assert (size == n if n <= 16 else size - n < 8) if n <= 128 else size < 1.25 * n + 1, (
        n, size)
  assert [attacks.autoattack_runner.bucket_size(n, 250, 2, fine=True) for n in range(1, 8)] == [
      2, 2, 4, 4, 6, 6, 8]


def test_gradient_batches_cover_the_points_with_the_least_padding():
  """`split_sizes`: under 16 points one batch of `bucket_size`; from 16, ladder sizes of 16 and
  up whose sum is the smallest one that holds the points, in as few batches as that sum allows
  (both found here by brute force over the ladder)."""
  for cap, multiple in ((64, 1), (64, 2), (24, 1), (8, 1)):
    full = attacks.autoattack_runner._ladder(cap, multiple)  # pylint: disable=protected-access
    ladder = [s for s in full if s >= min(16, full[-1])]
    fewest = {0: 0}  # exact sum -> fewest batches
    for total in range(1, 700):
      options = [fewest[total - s] + 1 for s in ladder if total - s in fewest]
      if options:
        fewest[total] = min(options)
    for n in range(1, 600):
      sizes = attacks.autoattack_runner.split_sizes(n, cap, multiple)
      if n < 16 and n <= full[-1]:
        assert sizes == [attacks.autoattack_runner.bucket_size(n, cap, multiple)], (n, sizes)
        continue
      assert set(sizes) <= set(ladder), (n, sizes)
      least = min(t for t in fewest if t >= n)
      assert sum(sizes) == least, (n, sizes, least)
      assert len(sizes) == fewest[least], (n, sizes)
  assert attacks.autoattack_runner.split_sizes(70, 64) == [48, 24]
  assert attacks.autoattack_runner.split_sizes(5, 64) == [8]
  assert attacks.autoattack_runner.split_sizes(1, 64) == [1]
  assert attacks.autoattack_runner.split_sizes(0, 64) == []


def test_batches_hold_every_point_once_and_none_is_empty():
  """`_Batcher.chunks` in both modes, batch sizes that are not a multiple of the device count
  included (padded sizes rounded up to it must not shift the points between batches)."""
  for devices, batch_size, n, split_at in ((2, 499, 1000, None), (1, 500, 501, None),
                                           (1, 500, 70, 64), (2, 12, 37, 12), (2, 63, 200, 63)):
    batcher = attacks.autoattack_runner._Batcher(batch_size, jax.devices()[:devices])  # pylint: disable=protected-access
    pairs = list(batcher.chunks(np.arange(n), split_at))
    np.testing.assert_array_equal(np.concatenate([c for c, _ in pairs]), np.arange(n))
    assert all(len(c) > 0 and len(p) % devices == 0 for c, p in pairs), pairs
    assert all(set(p) == set(c) for c, p in pairs)  # padding repeats a point of its own batch


def test_shrinking_passes_pad_and_compile_no_more_than_the_ladder():
  """A gradient attack's passes (`_passes_host`) run on ever fewer points. With the sizes already
  compiled remembered, a set of one batch runs at its own size when no compiled size within its
  ladder size holds it: never more padded points per pass, never more distinct sizes (compiles)
  than the ladder alone, and e.g. 28 points at 28, not 32."""
  rs = np.random.RandomState(0)
  for devices, cap in ((1, 64), (2, 64), (1, 500)):
    batcher = attacks.autoattack_runner._Batcher(500, jax.devices()[:devices])  # pylint: disable=protected-access
    split_at = cap if cap < 500 else None
    for _ in range(200):
      n = int(rs.randint(1, 300))
      counts = sorted({n, *rs.randint(1, n + 1, size=rs.randint(1, 10))}, reverse=True)
      compiled, ladder_sizes = set(), set()
      for m in counts:
        ours = list(batcher.chunks(np.arange(m), split_at, compiled=compiled))
        plain = list(batcher.chunks(np.arange(m), split_at))
        ladder_sizes |= {len(p) for _, p in plain}
        np.testing.assert_array_equal(np.concatenate([c for c, _ in ours]), np.arange(m))
        assert all(len(p) % devices == 0 and set(p) == set(c) for c, p in ours)
        assert sum(len(p) for _, p in ours) <= sum(len(p) for _, p in plain), (counts, m)
        assert {len(p) for _, p in ours} <= compiled
      assert len(compiled) <= len(ladder_sizes), (counts, compiled, ladder_sizes)
  batcher = attacks.autoattack_runner._Batcher(500, None)  # pylint: disable=protected-access
  compiled = set()
  assert [len(p) for _, p in batcher.chunks(np.arange(28), 64, compiled=compiled)] == [28]
  assert [len(p) for _, p in batcher.chunks(np.arange(25), 64, compiled=compiled)] == [28]
  assert [len(p) for _, p in batcher.chunks(np.arange(20), 64, compiled=compiled)] == [20]
  assert compiled == {28, 20}


def test_kth_smallest_is_the_sorted_rows_entry():
  """APGD-L1's sparsity threshold, `sort(|g|)[k]` (`autopgd_base.py:346-356`), found without a
  sort: exactly the sorted entry, with ties, zeros, a zero row and the first and last ranks."""
  rs = np.random.RandomState(0)
  a = np.abs(rs.randn(64, 3072)).astype(np.float32)
  a[:8] = np.round(a[:8] * 2) / 2  # ties and zeros
  a[8] = 0.0
  a[9, :5] = np.float32(1e-38)  # subnormal-adjacent values
  k = rs.randint(0, 3072, 64)
  k[:4] = [0, 3071, 1, 3070]
  got = np.asarray(norms.kth_smallest(jnp.asarray(a), jnp.asarray(k)))
  np.testing.assert_array_equal(got, np.sort(a, axis=1)[np.arange(64), k])


_CACHE_SCRIPT = """
import sys
import jax, numpy as np
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
from regmix_jax import attacks
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
apply = lambda p, z: z.reshape(z.shape[0], -1) @ p["w"]
x = np.asarray(jax.random.uniform(jax.random.key(1), (12, 4, 4, 3)))
over = {"apgd-ce": dict(num_steps=4), "apgd-t": dict(num_steps=4, num_target_classes=2),
        "fab-t": dict(num_steps=4, num_target_classes=2), "square": dict(num_queries=20)}
w = jax.random.normal(jax.random.key(0), (48, 10)) * 0.1
labels = np.asarray((x.reshape(12, -1) @ w).argmax(-1))
perm = np.roll(np.arange(10), 3)  # a second checkpoint: the classes renamed, the same attacks
for params, y in (({"w": w}, labels), ({"w": w[:, perm]}, np.argsort(perm)[labels])):
  start = len(events)
  attacks.run_autoattack(apply, x, y, jax.random.key(2), epsilon=0.01, batch_size=12,
                         progress=False, overrides=over, params=params)
  new = events[start:]
  print("RUN", new.count("/jax/compilation_cache/cache_hits"),
        new.count("/jax/compilation_cache/cache_misses"))
"""


def test_weights_as_arguments_give_the_same_result_and_a_cache_for_every_checkpoint(tmp_path):
  """`params=`: the same flags and points as the weights closed over, the weights reach every
  compiled function as an argument (a tracer, never a constant), and in a new process JAX's
  persistent cache serves a second set of weights of the same architecture without a compile."""
  logits_closed, x = _linear(seed=3, shape=(5, 5, 3), n=40)
  w = jax.random.normal(jax.random.key(3), (75, 10)) * 0.3  # _linear's weights
  seen = []

  def apply(p, z):
    seen.append(isinstance(p["w"], jax.core.Tracer))
    return z.reshape(z.shape[0], -1) @ p["w"]

  labels = np.array(jnp.argmax(logits_closed(x), -1))
  labels[:3] = (labels[:3] + 1) % 10
  over = {"apgd-ce": dict(num_steps=6, num_restarts=2), "apgd-t": dict(num_steps=6,
                                                                       num_target_classes=3),
          "fab-t": dict(num_steps=6, num_target_classes=3), "square": dict(num_queries=60)}
  for devices in (None, jax.devices()[:2]):  # one device; weights replicated over two
    kwargs = dict(epsilon=0.02, batch_size=12, progress=False, overrides=over, devices=devices)
    closed = attacks.run_autoattack(logits_closed, np.asarray(x), labels, jax.random.key(7),
                                    **kwargs)
    seen.clear()
    given = attacks.run_autoattack(apply, np.asarray(x), labels, jax.random.key(7),
                                   params={"w": w}, **kwargs)
    np.testing.assert_array_equal(given.robust, closed.robust)
    np.testing.assert_allclose(given.x_adv, closed.x_adv, atol=1e-6)
    assert 0 < given.robust.sum() < 37
    # Traced once per compiled function and shape (the dynamic-defence check's trace too): no
    # call sees concrete weights.
    assert seen.count(False) == 0 and seen.count(True) >= 6, seen
  out = subprocess.run([sys.executable, "-c", _CACHE_SCRIPT, str(tmp_path / "cache")],
                       capture_output=True, text=True, check=True, cwd=ROOT).stdout
  (hits1, misses1), (hits2, misses2) = [tuple(map(int, l.split()[1:])) for l in
                                        out.splitlines() if l.startswith("RUN")]
  assert misses1 >= 5 and hits2 >= 5 and misses2 == 0, out
