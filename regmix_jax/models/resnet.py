"""CIFAR ResNet-18 (kuangliu/pytorch-cifar), its LBGAT guide variant and PreActResNet-18
(Wong et al. fast adversarial training, as used by FGSM-PGK)."""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from regmix_jax.models.common import PreActBlock, batch_norm, check_images, conv, pooled_head

STAGE_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
  """Post-activation basic block: conv-BN-ReLU-conv-BN, + shortcut, ReLU. The shortcut is a
  1x1 conv + BN when the stride or the width changes."""
  features: int
  stride: int = 1
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda: batch_norm(train, self.axis_name, self.dtype)
    y = nn.relu(bn()(conv(self.features, 3, self.stride, self.dtype)(x)))
    y = bn()(conv(self.features, 3, 1, self.dtype)(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = bn()(conv(self.features, 1, self.stride, self.dtype, name="shortcut")(x))
    return nn.relu(y + x)


class ResNet18(nn.Module):
  """ResNet-18, CIFAR variant: 3x3 conv 64 (stride 1)-BN-ReLU, BasicBlock stages [2, 2, 2, 2] of
  widths 64, 128, 256, 512, global average pooling, linear.

  `stage_strides` (1, 2, 2, 2) is kuangliu's ResNet-18 (4x4 final map at 32x32, where global
  pooling equals its avg_pool 4); (1, 1, 2, 2) is the LBGAT / D2R guide (8x8 final map, where
  global pooling equals its avg_pool 8). Global pooling also makes 64x64 inputs work.
  Input: [B, H, W, 3] in [0, 1], H = W in (32, 64), no normalisation. Output: float32 logits.
  """
  num_classes: int
  stage_strides: Sequence[int] = (1, 2, 2, 2)
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    check_images(x)
    x = jnp.asarray(x, self.dtype)
    x = conv(64, 3, 1, self.dtype)(x)
    x = nn.relu(batch_norm(train, self.axis_name, self.dtype)(x))
    for width, stride in zip(STAGE_WIDTHS, self.stage_strides):
      for i in range(2):
        x = BasicBlock(width, stride if i == 0 else 1, self.axis_name, self.dtype)(x, train)
    return pooled_head(x, self.num_classes, self.dtype)


class PreActResNet18(nn.Module):
  """PreActResNet-18 (Wong et al. 2020; FGSM-PGK's Tiny ImageNet model): 3x3 conv 64, pre-activation
  blocks [2, 2, 2, 2] (widths 64..512, strides 1, 2, 2, 2; 1x1 conv shortcut without BN on the
  raw block input), a final BN-ReLU, global average pooling (= avg_pool 4 at 32x32), linear.
  Input: [B, H, W, 3] in [0, 1], H = W in (32, 64), no normalisation. Output: float32 logits.
  """
  num_classes: int
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    check_images(x)
    x = conv(64, 3, 1, self.dtype)(jnp.asarray(x, self.dtype))
    for width, stride in zip(STAGE_WIDTHS, (1, 2, 2, 2)):
      for i in range(2):
        x = PreActBlock(width, stride if i == 0 else 1, shortcut_from_activation=False,
                        axis_name=self.axis_name, dtype=self.dtype)(x, train)
    x = nn.relu(batch_norm(train, self.axis_name, self.dtype)(x))
    return pooled_head(x, self.num_classes, self.dtype)
