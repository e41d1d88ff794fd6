"""Pure, per-example losses: `[B, C]` logits in, `[B]` values out; the caller reduces.

All losses work on log-probabilities from `jax.nn.log_softmax`, never on the log of a softmax, so
they stay finite for logits as large as 1e4. KL divergences name their direction in the signature:
`kl_div(p_logits, q_logits)` is `KL(P(p) || Q(q))`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross-entropy per example.

  Args:
    logits: `[B, C]`.
    targets: integer labels `[B]`, or a probability distribution `[B, C]` (soft targets, e.g.
      smoothed labels).

  Returns:
    `[B]`: `-sum_c t_c log_softmax(logits)_c` (for integer labels, `-log_softmax(logits)_y`).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  if targets.ndim == logits.ndim - 1:
    return -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return -jnp.sum(targets * log_probs, axis=-1)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """`[B]` float: 1.0 where the arg-max of `logits [B, C]` equals the integer label."""
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """C&W margin per example, `[B, C] -> [B]`: `max_{j != y} z_j - z_y` (positive = misclassified).

  Maximising it is the C&W-inf attack objective `-(z_y - max_{j != y} z_j)`.
  """
  logits = logits.astype(jnp.float32)
  true = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  is_true = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  other = jnp.max(jnp.where(is_true, -jnp.inf, logits), axis=-1)
  return other - true


def smooth_labels(labels: jax.Array, num_classes: int, factor: float) -> jax.Array:
  """FGSM-PGK's label smoothing, `[B] -> [B, C]`: the true class gets `factor`, every other class
  `(1 - factor) / (C - 1)` (note: `factor` is the mass kept on the true class, not the mass
  removed as in the usual convention)."""
  other = (1.0 - factor) / (num_classes - 1)
  return jnp.where(jax.nn.one_hot(labels, num_classes, dtype=bool), factor, other)


def kl_div(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
  """`KL(P || Q)` per example, `[B, C], [B, C] -> [B]`, with `P = softmax(p_logits)` (the
  reference, first argument) and `Q = softmax(q_logits)`: `sum_c P_c (log P_c - log Q_c)`.

  Computed from log-softmax on both sides, so it is finite (and has finite gradients) for logits
  as large as 1e4 and for one-hot-like distributions; no stop-gradient inside.
  """
  log_p = jax.nn.log_softmax(p_logits.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(q_logits.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def logit_mse(a: jax.Array, b: jax.Array) -> jax.Array:
  """`[B, C], [B, C] -> [B]`: `mean_c (a_c - b_c)^2`. Its batch mean equals PyTorch's
  `F.mse_loss(a, b)` (the mean over B*C elements)."""
  return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=-1)


def trades_loss(clean_logits: jax.Array, adv_logits: jax.Array, labels: jax.Array, *,
                beta: float) -> jax.Array:
  """TRADES (Zhang et al. 2019) per example, `[B, C] x2, [B] -> [B]`:
  `CE(f(x), y) + beta * KL(P(f(x)) || P(f(x')))`, the clean distribution as the reference (first
  argument of the KL) and not detached."""
  return cross_entropy(clean_logits, labels) + beta * kl_div(clean_logits, adv_logits)


def mart_loss(clean_logits: jax.Array, adv_logits: jax.Array, labels: jax.Array, *,
              beta: float) -> jax.Array:
  """MART (Wang et al. 2020) per example, `[B, C] x2, [B] -> [B]`:
  `CE(f(x'), y) - log(1.0001 - P(f(x'))_{y'}) + beta * KL(P(f(x)) || P(f(x'))) *
  (1.0000001 - P(f(x))_y)`, with y' the most likely wrong class under `P(f(x'))` (the constants
  are the released code's). The first two terms are the boosted cross-entropy."""
  num_classes = adv_logits.shape[-1]
  adv_probs = jax.nn.softmax(adv_logits.astype(jnp.float32), axis=-1)
  clean_probs = jax.nn.softmax(clean_logits.astype(jnp.float32), axis=-1)
  is_true = jax.nn.one_hot(labels, num_classes, dtype=bool)
  wrong = jnp.argmax(jnp.where(is_true, -jnp.inf, adv_probs), axis=-1)
  p_wrong = jnp.take_along_axis(adv_probs, wrong[:, None], axis=-1)[:, 0]
  boosted_ce = cross_entropy(adv_logits, labels) - jnp.log(1.0001 - p_wrong)
  p_true_clean = jnp.take_along_axis(clean_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  return boosted_ce + beta * kl_div(clean_logits, adv_logits) * (1.0000001 - p_true_clean)
