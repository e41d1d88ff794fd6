"""`run_autoattack` against the official AutoAttack (fra31/auto-attack) on the same weights and
points: L2 and L1 "standard" robust accuracy within 1 point on a small trained model (and within 2
points after each attack), and Square alone (Square with 1000 queries on both sides instead of
5000, to keep the test short).

Needs torch (the `crosscheck` extra) and the official code at ../shared/reference/auto-attack
(beside the checkout); skipped when either is absent. The model is a one-hidden-layer MLP trained
here for a few seconds on the synthetic set, so that points are neither all robust nor all
fooled; its weights are copied into an equivalent torch module (NHWC flattening kept).
"""

from __future__ import annotations

import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regmix_jax import attacks, data

torch = pytest.importorskip("torch")
REFERENCE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))), "shared", "reference", "auto-attack")
if not os.path.isdir(os.path.join(REFERENCE, "autoattack")):
  pytest.skip(f"the official AutoAttack code is not at {REFERENCE}", allow_module_level=True)

N_POINTS = 300
RADII = {"L2": 0.3, "L1": 3.0}
# Square's query budget on both sides (official 5000): the rest of "standard" is unchanged.
SQUARE_QUERIES = 1000


def _mlp(params, x):
  h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


@pytest.fixture(scope="module")
def trained():
  """`(params, x_test [N, 8, 8, 3], y_test)`: the MLP after 600 SGD steps."""
  dataset = data.synthetic(num_train=2048, num_test=N_POINTS, image_size=8, seed=1)
  x = dataset.train.x.astype(np.float32) / 255.0
  y = dataset.train.y.astype(np.int32)
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"w1": jax.random.normal(k1, (192, 64)) * 0.1, "b1": jnp.zeros(64),
            "w2": jax.random.normal(k2, (64, 10)) * 0.1, "b2": jnp.zeros(10)}

  def loss(p, xb, yb):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(_mlp(p, xb)), yb[:, None], 1))

  @jax.jit
  def step(p, xb, yb):
    return jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(loss)(p, xb, yb))

  for i in range(600):
    sl = slice((i * 128) % 2048, (i * 128) % 2048 + 128)
    params = step(params, x[sl], y[sl])
  params = jax.tree.map(np.asarray, params)
  return params, dataset.test.x.astype(np.float32) / 255.0, dataset.test.y.astype(np.int64)


class _TorchMLP(torch.nn.Module):
  """The same MLP on NCHW input (flattened in NHWC order, as the JAX model)."""

  def __init__(self, params):
    super().__init__()
    t = lambda a: torch.nn.Parameter(torch.from_numpy(np.array(a, np.float32)),
                                     requires_grad=False)
    self.w1, self.b1, self.w2, self.b2 = (t(params[k]) for k in ("w1", "b1", "w2", "b2"))

  def forward(self, x):
    h = torch.relu(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1) @ self.w1 + self.b1)
    return h @ self.w2 + self.b2


def _official(params, x, y, norm, eps, log_path):
  """`(robust accuracy, {attack: robust accuracy after it}, clean logits)` of the official
  `run_standard_evaluation` (the per-attack figures read from its log)."""
  sys.path.insert(0, REFERENCE)
  try:
    from autoattack import AutoAttack  # pylint: disable=g-import-not-at-top  (test-only, optional)
  finally:
    sys.path.remove(REFERENCE)
  torch.set_num_threads(1)  # a tiny model: threads only add overhead
  net = _TorchMLP(params).eval()
  adversary = AutoAttack(net, norm=norm, eps=eps, version="standard", seed=0, device="cpu",
                         verbose=True, log_path=log_path)
  adversary.square.n_queries = SQUARE_QUERIES
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  yt = torch.from_numpy(y)
  x_adv = adversary.run_standard_evaluation(xt, yt, bs=N_POINTS)
  after = {}
  with open(log_path) as f:
    for line in f:
      match = re.match(r"robust accuracy after (\S+): ([\d.]+)%", line)
      if match:
        after[match.group(1).lower()] = float(match.group(2)) / 100
  with torch.no_grad():
    return float((net(x_adv).argmax(1) == yt).float().mean()), after, net(xt).numpy()


@pytest.mark.parametrize("norm", ["L2", "L1"])
def test_robust_accuracy_matches_the_official_code(trained, norm, tmp_path):
  params, x, y = trained
  official, official_after, torch_logits = _official(params, x, y, norm, RADII[norm],
                                                     str(tmp_path / "official.log"))
  np.testing.assert_allclose(np.asarray(_mlp(params, jnp.asarray(x))), torch_logits, atol=1e-4)
  ours = attacks.run_autoattack(lambda z: _mlp(params, z), x, y, jax.random.key(0),
                                epsilon=RADII[norm], norm=norm, version="standard",
                                batch_size=N_POINTS, progress=False,
                                overrides={"square": {"num_queries": SQUARE_QUERIES}})
  clean = ours.accuracy["clean"]
  assert 0.05 < ours.robust_accuracy < clean - 0.1, ours.accuracy  # neither trivial
  assert abs(ours.robust_accuracy - official) <= 0.01, (ours.accuracy, official)
  # And after each attack (the official log's cumulative robust accuracy), within 2 points: the
  # single-restart APGD-CE starts from other random points (measured: L2 43.7 vs 45.0 after
  # APGD-CE, 42.7 vs 42.7 in the end); a wrong step rule moves it by tens of points.
  assert set(official_after) == set(ours.accuracy) - {"clean"}, official_after
  for name, value in official_after.items():
    assert abs(ours.accuracy[name] - value) <= 0.02, (name, ours.accuracy, official_after)


@pytest.mark.parametrize("norm", ["L2", "L1"])
def test_square_alone_matches_the_official_code(trained, norm):
  """Square's L2 / L1 random search alone (in "standard" almost nothing is left for it), 1000
  queries: within 3 points (measured: L2 96.3 vs 96.0, L1 42.3 vs 44.0 on these 300 points; the
  two draw their windows differently, per batch there and per example here)."""
  sys.path.insert(0, REFERENCE)
  try:
    from autoattack import AutoAttack  # pylint: disable=g-import-not-at-top  (test-only, optional)
  finally:
    sys.path.remove(REFERENCE)
  params, x, y = trained
  torch.set_num_threads(1)  # a tiny model: threads only add overhead
  net = _TorchMLP(params).eval()
  adversary = AutoAttack(net, norm=norm, eps=RADII[norm], version="custom",
                         attacks_to_run=["square"], seed=0, device="cpu", verbose=False)
  adversary.square.n_queries = SQUARE_QUERIES
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  yt = torch.from_numpy(y)
  x_adv = adversary.run_standard_evaluation(xt, yt, bs=N_POINTS)
  with torch.no_grad():
    official = float((net(x_adv).argmax(1) == yt).float().mean())
  ours = attacks.run_autoattack(lambda z: _mlp(params, z), x, y, jax.random.key(0),
                                epsilon=RADII[norm], norm=norm, version=["square"],
                                batch_size=N_POINTS, progress=False,
                                overrides={"square": {"num_queries": SQUARE_QUERIES}})
  assert ours.robust_accuracy < 0.99  # Square fools some points
  assert abs(ours.robust_accuracy - official) <= 0.03, (ours.robust_accuracy, official)


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_fab_projection_matches_the_official_on_image_sized_rows(norm):
  """The sort-free projections against the official sort-based ones on
  CIFAR-sized rows (3072 coordinates): points on the box faces, zero normals, and hyperplanes
  that the box meets before the first break point, between break points, and not at all."""
  sys.path.insert(0, REFERENCE)
  try:
    from autoattack import fab_projections  # pylint: disable=g-import-not-at-top  (test-only)
  finally:
    sys.path.remove(REFERENCE)
  from regmix_jax.attacks.fab import PROJECTIONS  # pylint: disable=g-import-not-at-top
  rs = np.random.RandomState(0)
  n, dims = 96, 3072
  t = rs.rand(n, dims).astype(np.float32)
  t[:16] = np.round(t[:16])
  t[16:32, :1000] = 0.0
  w = rs.randn(n, dims).astype(np.float32)
  w[rs.rand(n, dims) < 0.2] = 0.0
  scale = [0.01, 0.3, 1.0, 3.0] if norm == "Linf" else [1e-4, 0.01, 0.3, 3.0]
  if norm == "L1":  # ties in |w|: the official's stable order decides which one moves partly
    w[48:64] = np.round(w[48:64] * 4) / 4
  b = ((w * rs.rand(n, dims)).sum(1) * rs.choice(scale, n)).astype(np.float32)
  if norm != "Linf":  # the official's other cases: reached before the first break point (points
    # inside the box, target just off <w, t>), and not reached even at the box's corner
    t[32:40] = 0.25 + 0.5 * t[32:40]
    b[32:40] = (w[32:40] * t[32:40]).sum(1) + 1e-3 * rs.choice([-1, 1], 8)
    b[40:48] = (w[40:48] * t[40:48]).sum(1) + 2 * np.abs(w[40:48]).sum(1) * rs.choice([-1, 1], 8)
  ours = np.asarray(PROJECTIONS[norm](jnp.asarray(t), jnp.asarray(w), jnp.asarray(b)))
  reference = {"Linf": fab_projections.projection_linf, "L2": fab_projections.projection_l2,
               "L1": fab_projections.projection_l1}
  official = reference[norm](torch.from_numpy(t), torch.from_numpy(w),
                             torch.from_numpy(b)).numpy()
  if norm == "L1":  # the official's torch.sort is not stable: which of the tied coordinates
    # moves partly is its sort's choice; ours takes the first (a stable sort's). Both steps are
    # minimal: the same L1 length, onto the same hyperplane.
    ties = slice(48, 64)
    np.testing.assert_allclose(np.abs(ours[ties]).sum(1), np.abs(official[ties]).sum(1),
                               rtol=1e-5)
    np.testing.assert_allclose((w[ties] * (t[ties] + ours[ties])).sum(1), b[ties], atol=1e-3,
                               rtol=1e-5)
    ours, official = np.delete(ours, ties, 0), np.delete(official, ties, 0)
  # L1's partial step divides a sum of up to 3072 terms, added in another order: 1e-5.
  np.testing.assert_allclose(ours, official, atol=2e-6 if norm != "L1" else 1e-5)
  assert np.abs(official).max() > 0.05  # not a trivial set of steps
