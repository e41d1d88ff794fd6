"""Pad-and-crop plus horizontal-flip augmentation, pure JAX (jittable, one key per example)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


# How the image is padded before the random crop (`config.data.pad_mode`): zeros, as
# torchvision's RandomCrop(32, padding=4) and most recipes, or the mirror image, as Rice et al.'s
# robust_overfitting utils.py:26-27 (`np.pad(..., mode='reflect')`).
PAD_MODES = ("constant", "reflect")


def _rotate_nearest(image: jax.Array, degrees: jax.Array) -> jax.Array:
  """`image` [H, W, C] rotated by `degrees` (counter-clockwise) about its centre, nearest
  neighbour, zeros outside: PIL's `Image.rotate(angle)` as torchvision's RandomRotation applies
  it to the PIL images of robust_overfitting's CIFAR-100 pipeline."""
  h, w, _ = image.shape
  theta = jnp.deg2rad(degrees)
  # Output pixel centres relative to the image centre; sample the input where they come from.
  yy, xx = jnp.meshgrid(jnp.arange(h) + 0.5 - h / 2, jnp.arange(w) + 0.5 - w / 2, indexing="ij")
  src_x = jnp.cos(theta) * xx - jnp.sin(theta) * yy + w / 2
  src_y = jnp.sin(theta) * xx + jnp.cos(theta) * yy + h / 2
  iy, ix = jnp.floor(src_y).astype(jnp.int32), jnp.floor(src_x).astype(jnp.int32)
  inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
  pixels = image[jnp.clip(iy, 0, h - 1), jnp.clip(ix, 0, w - 1)]
  return jnp.where(inside[..., None], pixels, 0).astype(image.dtype)


def _augment_one(image: jax.Array, key: jax.Array, pad: int, flip: bool,
                 pad_mode: str, rotate_degrees: float) -> jax.Array:
  h, w, c = image.shape
  k_y, k_x, k_flip = jax.random.split(key, 3)
  if flip:
    image = jnp.where(jax.random.bernoulli(k_flip, 0.5), image[:, ::-1], image)
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode=pad_mode)
  oy = jax.random.randint(k_y, (), 0, 2 * pad + 1)
  ox = jax.random.randint(k_x, (), 0, 2 * pad + 1)
  image = jax.lax.dynamic_slice(padded, (oy, ox, 0), (h, w, c))
  if rotate_degrees:
    angle = jax.random.uniform(jax.random.fold_in(key, 3), (), minval=-rotate_degrees,
                               maxval=rotate_degrees)
    image = _rotate_nearest(image, angle)
  return image


def augment(images: jax.Array, keys: jax.Array, *, pad: int = 4, flip: bool = True,
            pad_mode: str = "constant", rotate_degrees: float = 0.0) -> jax.Array:
  """Random crop of the padded image plus random horizontal flip, then (if `rotate_degrees`) a
  random rotation, per example.

  Args:
    images: float `[B, H, W, C]`.
    keys: `[B]` typed keys (`jax.random.key`), one per example; all of an example's draws come
      from its own key.
    pad: padding on each side; crop offsets are uniform in `[0, 2 * pad]` on each axis.
    flip: flip horizontally with probability 1/2.
    pad_mode: "constant" (zeros) or "reflect" (`PAD_MODES`).
    rotate_degrees: rotate by an angle uniform in [-rotate_degrees, rotate_degrees], nearest
      neighbour, zeros outside (torchvision's RandomRotation on a PIL image); 0 = none.

  Returns:
    `[B, H, W, C]`, the same dtype as `images`.
  """
  if pad_mode not in PAD_MODES:
    raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r} (config field "
                     "`data.pad_mode`).")
  return jax.vmap(lambda x, k: _augment_one(x, k, pad, flip, pad_mode, rotate_degrees))(
      images, keys)
