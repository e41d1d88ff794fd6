"""A small, fast CNN for tests and the quickstart (trains in seconds on CPU)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from regmix_jax.models.common import ConvFn, batch_norm, check_images, conv, model_input, pooled_head


class SmallCNN(nn.Module):
  """Three 3x3 conv-BN-ReLU layers (`conv1`/`bn1` .. `conv3`/`bn3`; widths w, 2w, 4w; strides 1,
  2, 2), global average pooling, `linear`; PyTorch's default initialisation. Ours (no released
  counterpart): tests, the quickstart and CPU-sized studies. Input: [B, H, W, 3] in [0, 1] with
  H = W >= 8; `normalize` as ResNet18. Output: float32 logits [B, num_classes]."""
  num_classes: int
  width: int = 32
  axis_name: str | None = None
  dtype: Any = jnp.float32
  normalize: str = ""
  conv_general_dilated: ConvFn = lax.conv_general_dilated
  first_conv_float32: bool = False  # `common.model_input`

  def __post_init__(self):
    if not isinstance(self.width, int) or self.width < 1:
      raise ValueError(f"small_cnn width must be a positive integer, got width={self.width!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool):
    check_images(x, sizes=None, min_size=8)
    x, stem = model_input(x, self.normalize, self.dtype, self.first_conv_float32)
    for i, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2)), 1):
      x = conv(self.width * mult, 3, stride, stem if i == 1 else self.dtype, name=f"conv{i}",
               conv_general_dilated=self.conv_general_dilated)(x).astype(self.dtype)
      x = nn.relu(batch_norm(train, self.axis_name, self.dtype, name=f"bn{i}")(x))
    return pooled_head(x, self.num_classes, self.dtype)
