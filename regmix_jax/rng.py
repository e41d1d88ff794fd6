"""Per-example randomness.

A training or evaluation step derives one key per example from a step key and the example's
dataset index (`example_keys`). Every random draw for an example (augmentation, attack start) comes
from its own key, so results do not depend on how a batch is split across devices or processes:
one device, `pmap` on 4 and `shard_map` on 4 draw exactly the same numbers. This replaces the usual
`fold_in(axis_index)`, which would make results depend on the device count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


# Independent streams derived from the run's root key: training steps and evaluation never share
# a key (`stream(root, TRAIN)` then the step; `stream(root, EVAL)` then the attack's position).
TRAIN, EVAL = 0, 1


def stream(key: jax.Array, name: int) -> jax.Array:
  """The sub-key of stream `name` (`TRAIN` or `EVAL`) of a root key."""
  return jax.random.fold_in(as_typed_key(key), name)


def as_typed_key(key: jax.Array) -> jax.Array:
  """Accepts a typed key (`jax.random.key`) or raw `uint32` key data (`[..., 2]`)."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(key)


def example_keys(key: jax.Array, index: jax.Array) -> jax.Array:
  """`[B]` typed keys, one per example: `fold_in(key, index[b])`; `index` is `[B]` int."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(as_typed_key(key), index)


def fold(key: jax.Array, data) -> jax.Array:
  """`fold_in(key, data)` for one key or for each of `[B]` per-example keys (same shape out)."""
  key = as_typed_key(key)
  if key.ndim == 0:
    return jax.random.fold_in(key, data)
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(key, data)


def split_keys(keys: jax.Array, num: int) -> tuple[jax.Array, ...]:
  """Splits `[B]` per-example keys into `num` independent `[B]` key arrays."""
  split = jax.vmap(lambda k: jax.random.split(k, num))(as_typed_key(keys))
  return tuple(split[:, i] for i in range(num))


def _like(draw, key: jax.Array, x: jax.Array) -> jax.Array:
  """`draw(key, shape)` shaped like `x [B, ...]`: `key` is one key (one draw for the whole batch)
  or `[B]` per-example keys (row b drawn from `key[b]`, the form train and eval steps use)."""
  key = as_typed_key(key)
  if key.ndim == 0:
    return draw(key, x.shape)
  return jax.vmap(lambda k: draw(k, x.shape[1:]))(key)


def uniform_like(key: jax.Array, x: jax.Array, minval: float, maxval: float) -> jax.Array:
  """`U(minval, maxval)` noise shaped like `x [B, ...]` (see `_like` for `key`)."""
  return _like(lambda k, s: jax.random.uniform(k, s, x.dtype, minval, maxval), key, x)


def normal_like(key: jax.Array, x: jax.Array) -> jax.Array:
  """Standard normal noise shaped like `x [B, ...]` (see `_like` for `key`)."""
  return _like(lambda k, s: jax.random.normal(k, s, x.dtype), key, x)
