"""A small, fast CNN for tests and the quickstart (trains in seconds on CPU)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from regmix_jax.models.common import batch_norm, check_images, conv, pooled_head


class SmallCNN(nn.Module):
  """Three 3x3 conv-BN-ReLU layers (widths w, 2w, 4w; strides 1, 2, 2), global average pooling,
  linear. Input: [B, H, W, 3] in [0, 1] with H = W >= 8, no normalisation. Output: float32
  logits [B, num_classes]."""
  num_classes: int
  width: int = 32
  axis_name: str | None = None
  dtype: Any = jnp.float32

  def __post_init__(self):
    if not isinstance(self.width, int) or self.width < 1:
      raise ValueError(f"small_cnn width must be a positive integer, got width={self.width!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool):
    check_images(x, sizes=None, min_size=8)
    x = jnp.asarray(x, self.dtype)
    for mult, stride in ((1, 1), (2, 2), (4, 2)):
      x = conv(self.width * mult, 3, stride, self.dtype)(x)
      x = nn.relu(batch_norm(train, self.axis_name, self.dtype)(x))
    return pooled_head(x, self.num_classes, self.dtype)
