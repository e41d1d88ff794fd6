"""FAB-T (L-inf): the exact projection against hand values and a linear program; the attack on
linear models, whose minimal L-inf adversarial distance is known in closed form."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regmix_jax import rng
from regmix_jax.attacks.fab import fab_targeted, projection_linf

scipy_optimize = pytest.importorskip("scipy.optimize")


def _project(t, w, b):
  return np.asarray(projection_linf(jnp.asarray(t, jnp.float32), jnp.asarray(w, jnp.float32),
                                    jnp.asarray(b, jnp.float32)))


def test_projection_linf_hand_values():
  t = [[0.5, 0.5], [0.1, 0.5], [0.1, 0.5], [0.5, 0.5], [0.5, 0.5], [0.3, 0.8]]
  w = [[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [1.0, -2.0], [1.0, 1.0], [0.0, 1.0]]
  b = [0.5, 0.2, -0.2, 0.1, 3.0, 0.5]
  expected = [
      [-0.25, -0.25],  # both coordinates move by the same lam
      [-0.1, -0.3],  # coordinate 0 hits the box at 0, coordinate 1 takes the rest
      [-0.1, -0.3],  # the same hyperplane with w, b negated
      [0.2, -0.2],  # the point below the hyperplane: <w, z> rises, w's sign sets the direction
      [0.5, 0.5],  # hyperplane outside the box: the closest corner
      [0.0, -0.3],  # w = 0 coordinates never move
  ]
  np.testing.assert_allclose(_project(t, w, b), expected, atol=1e-6)


def _min_linf_step(t, w, b):
  """min ||delta||_inf s.t. <w, t + delta> = b, t + delta in [0, 1]^D, by linear programming."""
  dims = len(t)
  cost = np.zeros(dims + 1)
  cost[-1] = 1.0
  a_ub = np.block([[np.eye(dims), -np.ones((dims, 1))], [-np.eye(dims), -np.ones((dims, 1))]])
  result = scipy_optimize.linprog(
      cost, A_ub=a_ub, b_ub=np.zeros(2 * dims), A_eq=np.append(w, 0.0)[None],
      b_eq=[b - w @ t], bounds=[(-ti, 1 - ti) for ti in t] + [(0, None)], method="highs")
  return result.fun if result.status == 0 else None


def test_projection_linf_is_the_minimal_step_in_the_box():
  rs = np.random.RandomState(0)
  n, dims = 120, 7
  t = rs.rand(n, dims)
  t[:10] = np.round(t[:10])  # points on the box's faces
  w = rs.randn(n, dims)
  w[rs.rand(n, dims) < 0.25] = 0.0
  b = (w * rs.rand(n, dims)).sum(1) * rs.choice([0.3, 1.0, 4.0], n)
  d = _project(t, w, b)
  z = t + d
  assert (z >= -1e-6).all() and (z <= 1 + 1e-6).all()
  np.testing.assert_array_equal(d[w == 0], 0.0)
  feasible = 0
  for i in range(n):
    optimum = _min_linf_step(t[i], w[i], b[i])
    if optimum is None:  # the hyperplane misses the box: the corner that comes closest
      side = np.sign(w[i] @ t[i] - b[i])
      corner = np.where(w[i] * side < 0, 1.0, 0.0)
      np.testing.assert_allclose(z[i][w[i] != 0], corner[w[i] != 0], atol=1e-6)
      continue
    feasible += 1
    assert abs(w[i] @ z[i] - b[i]) < 1e-4, i
    np.testing.assert_allclose(np.abs(d[i]).max(), optimum, atol=1e-5, err_msg=str(i))
  assert 60 < feasible < n  # both cases are exercised


def _binary_linear_problem(batch=6):
  """A linear 2-class model on 4x4x3 images near 0.5, where the box never binds."""
  k1, k2 = jax.random.split(jax.random.key(0))
  w = jax.random.normal(k1, (4 * 4 * 3, 2))
  bias = jnp.array([0.3, -0.3])
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w + bias
  x = 0.4 + 0.2 * jax.random.uniform(k2, (batch, 4, 4, 3))
  labels = jnp.argmax(logits_fn(x), axis=1)
  logits = np.asarray(logits_fn(x))
  rows = np.arange(batch)
  w_diff = np.asarray(w)[:, 1 - np.asarray(labels)] - np.asarray(w)[:, np.asarray(labels)]
  # Minimal L-inf distance to the boundary: |margin| / ||w_t - w_y||_1.
  distance = (logits[rows, labels] - logits[rows, 1 - labels]) / np.abs(w_diff).sum(0)
  return logits_fn, x, labels, distance


@functools.lru_cache(maxsize=None)
def _jitted(logits_fn, **kwargs):
  return jax.jit(lambda x, y, key, eps: fab_targeted(logits_fn, x, y, key, epsilon=eps, **kwargs))


def test_fab_finds_the_minimal_linf_adversarial_of_a_linear_model():
  logits_fn, x, labels, distance = _binary_linear_problem()
  assert (distance > 0.03).all() and (distance < 0.08).all()  # the box does not bind
  attack = _jitted(logits_fn, num_steps=10)
  x_adv = attack(x, labels, jax.random.key(1), 1.0)
  assert (np.asarray(jnp.argmax(logits_fn(x_adv), axis=1)) != np.asarray(labels)).all()
  found = np.abs(np.asarray(x_adv - x)).reshape(len(x), -1).max(1)
  assert (found >= distance * (1 - 1e-5)).all()
  np.testing.assert_allclose(found, distance, rtol=0.01)
  # Points at or beyond the minimal distance are kept only within eps.
  eps = float(np.median(distance))
  x_adv = attack(x, labels, jax.random.key(1), eps)
  changed = np.abs(np.asarray(x_adv - x)).reshape(len(x), -1).max(1) > 0
  np.testing.assert_array_equal(changed, found <= eps)
  x_adv = attack(x, labels, jax.random.key(1), 0.9 * float(distance.min()))
  np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(x))


def _multiclass_problem(batch=8):
  """A fixed random 5-class linear model on 4x4x3 images, two of them with pixels at the box."""
  k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
  w = jax.random.normal(k1, (4 * 4 * 3, 5))
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
  x = jax.random.uniform(k2, (batch, 4, 4, 3))
  x = x.at[:2].set(jnp.where(x[:2] > 0.5, 1.0, 0.0))
  labels = jnp.argmax(logits_fn(x), axis=1)
  labels = labels.at[-2:].set((labels[-2:] + 1) % 5)  # two misclassified to begin with
  return logits_fn, x, labels


def test_fab_invariants_and_per_example_keys():
  logits_fn, x, labels = _multiclass_problem()
  eps = 0.1
  attack = _jitted(logits_fn, num_steps=6, num_restarts=2)  # 9 target classes, capped at 4
  keys = rng.example_keys(jax.random.key(5), jnp.arange(len(x)))
  x_adv = np.asarray(attack(x, labels, keys, eps))
  x_np = np.asarray(x)
  assert (x_adv >= 0).all() and (x_adv <= 1).all()
  assert np.abs(x_adv - x_np).max() <= eps + 1e-6
  np.testing.assert_array_equal(x_adv[-2:], x_np[-2:])  # already misclassified: unchanged
  changed = np.abs(x_adv - x_np).reshape(len(x), -1).max(1) > 0
  fooled = np.asarray(jnp.argmax(logits_fn(jnp.asarray(x_adv)), axis=1)) != np.asarray(labels)
  assert changed[:-2].any()
  np.testing.assert_array_equal(changed[:-2], fooled[:-2])  # kept only if it fools the model
  # Each example's result depends only on its own key, so `shard_map` over 4 devices (2 examples
  # each) gives the same rows.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("d",))
  spec = jax.sharding.PartitionSpec("d")
  sharded = jax.jit(jax.shard_map(
      lambda x, y, k: fab_targeted(logits_fn, x, y, k, epsilon=eps, num_steps=6, num_restarts=2),
      mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec))
  np.testing.assert_allclose(np.asarray(sharded(x, labels, keys)), x_adv, atol=1e-6)
  # One key for the whole batch also works.
  x_adv_one_key = np.asarray(attack(x, labels, jax.random.key(5), eps))
  assert np.abs(x_adv_one_key - x_np).max() <= eps + 1e-6
