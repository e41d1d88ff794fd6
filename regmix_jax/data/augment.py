"""Pad-and-crop plus horizontal-flip augmentation, pure JAX (jittable, one key per example)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _augment_one(image: jax.Array, key: jax.Array, pad: int, flip: bool) -> jax.Array:
  h, w, c = image.shape
  k_y, k_x, k_flip = jax.random.split(key, 3)
  if flip:
    image = jnp.where(jax.random.bernoulli(k_flip, 0.5), image[:, ::-1], image)
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  oy = jax.random.randint(k_y, (), 0, 2 * pad + 1)
  ox = jax.random.randint(k_x, (), 0, 2 * pad + 1)
  return jax.lax.dynamic_slice(padded, (oy, ox, 0), (h, w, c))


def augment(images: jax.Array, keys: jax.Array, *, pad: int = 4, flip: bool = True) -> jax.Array:
  """Random crop of the zero-padded image plus random horizontal flip, per example.

  Args:
    images: float `[B, H, W, C]`.
    keys: `[B]` typed keys (`jax.random.key`), one per example; all of an example's draws come
      from its own key.
    pad: zero padding on each side; crop offsets are uniform in `[0, 2 * pad]` on each axis.
    flip: flip horizontally with probability 1/2.

  Returns:
    `[B, H, W, C]`, the same dtype as `images`.
  """
  return jax.vmap(lambda x, k: _augment_one(x, k, pad, flip))(images, keys)
