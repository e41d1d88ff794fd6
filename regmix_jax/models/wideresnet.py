"""WideResNet (Zagoruyko & Komodakis), the TRADES / MART / D2R WRN-34-10
(yaodongyu/TRADES models/wideresnet.py; MART's and D2R's are the same file)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from regmix_jax.models.common import (ConvFn, PreActBlock, batch_norm, check_images, conv,
                                      model_input, pooled_head)


def check_depth(depth: int, width: int = 1) -> int:
  """Blocks per stage, n = (depth - 4) / 6; ValueError unless that is a positive integer and
  `width` one too."""
  if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
    raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (e.g. 16, 28, 34), got "
                     f"depth={depth!r}")
  if not isinstance(width, int) or width < 1:
    raise ValueError(f"WideResNet width must be a positive integer, got width={width!r}")
  return (depth - 4) // 6


class NetworkBlock(nn.Module):
  """`n` pre-activation blocks (`layer_0` ...), the first with `stride` (wideresnet.py:37-47)."""
  n: int
  features: int
  stride: int
  axis_name: str | None = None
  dtype: Any = jnp.float32
  conv_general_dilated: ConvFn = lax.conv_general_dilated

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(self.n):
      x = PreActBlock(self.features, self.stride if i == 0 else 1, shortcut_from_activation=True,
                      axis_name=self.axis_name, dtype=self.dtype, init="wrn",
                      shortcut_name="convShortcut",
                      conv_general_dilated=self.conv_general_dilated, name=f"layer_{i}")(x, train)
    return x


class WideResNet(nn.Module):
  """WRN-depth-width: 3x3 conv 16, three stages (`block1`..`block3`) of n = (depth - 4) / 6
  pre-activation blocks of widths 16k, 32k, 64k (k = width) and strides 1, 2, 2 (1x1 conv
  shortcut on BN-ReLU(input) when the width changes), final BN-ReLU (`bn1`), global average
  pooling (= avg_pool 8 at 32x32), linear (`fc`). Initialisation as the reference
  (`common.INITS`, "wrn"). TRADES' unused `sub_block1` (wideresnet.py:63, never called in
  forward) is not built. Input: [B, H, W, 3] in [0, 1], H = W in (32, 64); `normalize` as
  ResNet18. Output: float32 logits.
  """
  num_classes: int
  depth: int = 34
  width: int = 10
  axis_name: str | None = None
  dtype: Any = jnp.float32
  normalize: str = ""
  conv_general_dilated: ConvFn = lax.conv_general_dilated
  first_conv_float32: bool = False  # `common.model_input`

  def __post_init__(self):
    check_depth(self.depth, self.width)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool):
    check_images(x)
    n = check_depth(self.depth)
    x, stem = model_input(x, self.normalize, self.dtype, self.first_conv_float32)
    x = conv(16, 3, 1, stem, name="conv1", init="wrn",
             conv_general_dilated=self.conv_general_dilated)(x).astype(self.dtype)
    for stage, (base, stride) in enumerate(((16, 1), (32, 2), (64, 2)), 1):
      x = NetworkBlock(n, base * self.width, stride, self.axis_name, self.dtype,
                       self.conv_general_dilated, name=f"block{stage}")(x, train)
    x = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn1")(x))
    return pooled_head(x, self.num_classes, self.dtype, init="wrn", name="fc")
