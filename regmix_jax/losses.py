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
