"""WideResNet (Zagoruyko & Komodakis), the TRADES / MART / D2R WRN-34-10."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from regmix_jax.models.common import PreActBlock, batch_norm, check_images, conv, pooled_head


def check_depth(depth: int) -> int:
  """Blocks per stage, n = (depth - 4) / 6; ValueError unless that is a positive integer."""
  if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
    raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (e.g. 16, 28, 34), got "
                     f"depth={depth!r}")
  return (depth - 4) // 6


class WideResNet(nn.Module):
  """WRN-depth-width: 3x3 conv 16, three stages of n = (depth - 4) / 6 pre-activation blocks of
  widths 16k, 32k, 64k (k = width) and strides 1, 2, 2 (1x1 conv shortcut on BN-ReLU(input) when
  the width changes), final BN-ReLU, global average pooling (= avg_pool 8 at 32x32), linear.
  TRADES' unused `sub_block1` is not built. Input: [B, H, W, 3] in [0, 1], H = W in (32, 64),
  no normalisation. Output: float32 logits.
  """
  num_classes: int
  depth: int = 34
  width: int = 10
  axis_name: str | None = None
  dtype: Any = jnp.float32

  def __post_init__(self):
    check_depth(self.depth)
    if not isinstance(self.width, int) or self.width < 1:
      raise ValueError(f"WideResNet width must be a positive integer, got width={self.width!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool):
    check_images(x)
    n = check_depth(self.depth)
    x = conv(16, 3, 1, self.dtype)(jnp.asarray(x, self.dtype))
    for base, stride in ((16, 1), (32, 2), (64, 2)):
      for i in range(n):
        x = PreActBlock(base * self.width, stride if i == 0 else 1, shortcut_from_activation=True,
                        axis_name=self.axis_name, dtype=self.dtype)(x, train)
    x = nn.relu(batch_norm(train, self.axis_name, self.dtype)(x))
    return pooled_head(x, self.num_classes, self.dtype)
