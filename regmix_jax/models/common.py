"""Layers shared by the models: PyTorch-matching conv / BatchNorm, the input check, the
pre-activation residual block (PreActResNet-18 and WideResNet) and the pooled linear head."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# Kaiming normal, fan_out, as the PyTorch references (WRN: normal(0, sqrt(2 / (k*k*out)))).
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel: int, stride: int, dtype: Any, name: str | None = None) -> nn.Conv:
  """Bias-free conv with PyTorch's symmetric padding (kernel // 2 on every side), so strided
  convs see the same pixels as `nn.Conv2d(..., padding=kernel // 2)`."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=CONV_INIT,
                 dtype=dtype, name=name)


def batch_norm(train: bool, axis_name: str | None, dtype: Any, name: str | None = None):
  """PyTorch BatchNorm2d defaults (momentum 0.1 = Flax 0.9, eps 1e-5). With `axis_name` the
  batch statistics are averaged over that mapped axis (synchronised BN); None = local."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      axis_name=axis_name, dtype=dtype, name=name)


def check_images(x, sizes: tuple[int, ...] | None = (32, 64), min_size: int = 8) -> None:
  """Raises ValueError unless `x` is [B, H, W, 3] with H = W in `sizes` (or H = W >= `min_size`
  when `sizes` is None). Static: runs on the shape at trace time."""
  shape = tuple(x.shape)
  ok = len(shape) == 4 and shape[-1] == 3 and shape[1] == shape[2]
  if ok:
    ok = shape[1] in sizes if sizes is not None else shape[1] >= min_size
  if not ok:
    allowed = f"in {sizes}" if sizes is not None else f">= {min_size}"
    raise ValueError(f"expected images [B, H, W, 3] (NHWC, 3 channels) with H = W {allowed}, "
                     f"got shape {shape}")


def pooled_head(x, num_classes: int, dtype: Any) -> jnp.ndarray:
  """Global average pooling, then a linear layer; logits always float32."""
  x = jnp.mean(x, axis=(1, 2))
  return nn.Dense(num_classes, dtype=dtype, name="head")(x).astype(jnp.float32)


class PreActBlock(nn.Module):
  """Pre-activation basic block: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, plus a shortcut.

  The shortcut is the identity, or a bias-free 1x1 conv (no BN) when the stride or the width
  changes. `shortcut_from_activation` picks what that 1x1 conv sees: the raw input (False, Wong
  et al.'s PreActResNet used by FGSM-PGK) or BN-ReLU(input) (True, Zagoruyko's / TRADES' WRN).
  """
  features: int
  stride: int = 1
  shortcut_from_activation: bool = False
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    act = nn.relu(batch_norm(train, self.axis_name, self.dtype)(x))
    if self.stride != 1 or x.shape[-1] != self.features:
      source = act if self.shortcut_from_activation else x
      shortcut = conv(self.features, 1, self.stride, self.dtype, name="shortcut")(source)
    else:
      shortcut = x
    y = conv(self.features, 3, self.stride, self.dtype)(act)
    y = nn.relu(batch_norm(train, self.axis_name, self.dtype)(y))
    y = conv(self.features, 3, 1, self.dtype)(y)
    return y + shortcut
