"""CIFAR ResNet-18 (kuangliu/pytorch-cifar, as FGSM-PGK's CIFAR10_models/resnet.py), its LBGAT /
D2R guide variant (lusti-Yu/D2R models/resnetcifar.py) and the PreActResNet-18s of the released
code: Wong et al.'s (locuslab/fast_adversarial CIFAR10/preact_resnet.py, also N-FGSM's), Rice et
al.'s (locuslab/robust_overfitting preactresnet.py) and FGSM-PGK's Tiny ImageNet one
(jiaxiaojunQAQ/FGSM-PGK ImageNet_models/preact_resnet.py). Every one uses PyTorch's default
initialisation (none of their own); module names follow the PyTorch attributes."""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from regmix_jax.models.common import (ConvFn, PreActBlock, batch_norm, check_images, conv, linear,
                                      model_input, pooled_head)

STAGE_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
  """Post-activation basic block: conv-BN-ReLU-conv-BN, + shortcut, ReLU. The shortcut is a
  1x1 conv + BN (`shortcut_0`, `shortcut_1`) when the stride or the width changes
  (CIFAR10_models/resnet.py:14-39 of FGSM-PGK)."""
  features: int
  stride: int = 1
  axis_name: str | None = None
  dtype: Any = jnp.float32
  conv_general_dilated: ConvFn = lax.conv_general_dilated

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: batch_norm(train, self.axis_name, self.dtype, name=name)
    cv = lambda k, stride, name: conv(self.features, k, stride, self.dtype, name=name,
                                      conv_general_dilated=self.conv_general_dilated)
    y = nn.relu(bn("bn1")(cv(3, self.stride, "conv1")(x)))
    y = bn("bn2")(cv(3, 1, "conv2")(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = bn("shortcut_1")(cv(1, self.stride, "shortcut_0")(x))
    return nn.relu(y + x)


class ResNet18(nn.Module):
  """ResNet-18, CIFAR variant: 3x3 conv 64 (stride 1)-BN-ReLU, BasicBlock stages [2, 2, 2, 2] of
  widths 64, 128, 256, 512, global average pooling, linear.

  `stage_strides` (1, 2, 2, 2) is kuangliu's ResNet-18 (4x4 final map at 32x32, where global
  pooling equals its avg_pool 4); (1, 1, 2, 2) is the LBGAT / D2R guide (resnetcifar.py:76-79;
  8x8 final map, where global pooling equals its avg_pool 8). Global pooling also makes 64x64
  inputs work. Input: [B, H, W, 3] in [0, 1], H = W in (32, 64); `normalize` names a fixed
  per-channel normalisation applied first ("" = none). Output: float32 logits.
  """
  num_classes: int
  stage_strides: Sequence[int] = (1, 2, 2, 2)
  axis_name: str | None = None
  dtype: Any = jnp.float32
  normalize: str = ""
  conv_general_dilated: ConvFn = lax.conv_general_dilated
  first_conv_float32: bool = False  # `common.model_input`

  @nn.compact
  def __call__(self, x, train: bool):
    check_images(x)
    x, stem = model_input(x, self.normalize, self.dtype, self.first_conv_float32)
    x = conv(64, 3, 1, stem, name="conv1",
             conv_general_dilated=self.conv_general_dilated)(x).astype(self.dtype)
    x = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn1")(x))
    for stage, (width, stride) in enumerate(zip(STAGE_WIDTHS, self.stage_strides), 1):
      for i in range(2):
        x = BasicBlock(width, stride if i == 0 else 1, self.axis_name, self.dtype,
                       self.conv_general_dilated, name=f"layer{stage}_{i}")(x, train)
    return pooled_head(x, self.num_classes, self.dtype)


class PreActResNet18(nn.Module):
  """PreActResNet-18: 3x3 conv 64, pre-activation blocks [2, 2, 2, 2] (widths 64..512, strides
  1, 2, 2, 2; 1x1 conv shortcut without BN), then one of the released variants:

  - `variant="wong"` (Wong et al.; fast_adversarial CIFAR10/preact_resnet.py, N-FGSM
    architectures/preact_resnet.py): the shortcut conv sees the raw block input (l.24); a final
    BN-ReLU (`bn`, l.68, 85); avg_pool 4 (= global pooling at 32x32); `linear` 512 -> classes.
  - `variant="rice"` (Rice et al.; robust_overfitting preactresnet.py): as "wong", but the
    shortcut conv sees BN-ReLU(input) (l.30).
  - `variant="fgsm_pgk"` (FGSM-PGK's Tiny ImageNet model, ImageNet_models/preact_resnet.py): the
    shortcut conv sees BN-ReLU(input) (l.32); no final BN-ReLU (forward l.87-96); `avg_pool2d(4)`
    on the final map, flattened in PyTorch's (C, H, W) order, then `linear`: at 64x64 the 8x8 map
    pools to 2x2, so the head is Linear(2048, classes) (l.77); 11,575,816 parameters at 200
    classes. Needs inputs whose final map divides by 4 (64x64).
  - `variant="robustbench"` (RobustBench's `PreActResNet(PreActBlock, [2, 2, 2, 2])`, its
    defaults bn_before_fc=False, out_shortcut=False: RobustBench/robustbench@78fcc9e
    robustbench/model_zoo/architectures/resnet.py:121-257, `PreActBlock` and `PreActResNet`): as
    "wong" without the final BN-ReLU.
  Input: [B, H, W, 3] in [0, 1]; `normalize` as ResNet18. Output: float32 logits.
  """
  num_classes: int
  variant: str = "wong"
  axis_name: str | None = None
  dtype: Any = jnp.float32
  normalize: str = ""
  conv_general_dilated: ConvFn = lax.conv_general_dilated
  first_conv_float32: bool = False  # `common.model_input`

  @nn.compact
  def __call__(self, x, train: bool):
    if self.variant not in ("wong", "rice", "fgsm_pgk", "robustbench"):
      raise ValueError(f"PreActResNet18 variant must be wong, rice, fgsm_pgk or robustbench, "
                       f"got {self.variant!r}.")
    check_images(x)
    x, stem = model_input(x, self.normalize, self.dtype, self.first_conv_float32)
    x = conv(64, 3, 1, stem, name="conv1",
             conv_general_dilated=self.conv_general_dilated)(x).astype(self.dtype)
    for stage, (width, stride) in enumerate(zip(STAGE_WIDTHS, (1, 2, 2, 2)), 1):
      for i in range(2):
        x = PreActBlock(width, stride if i == 0 else 1,
                        shortcut_from_activation=self.variant in ("rice", "fgsm_pgk"),
                        axis_name=self.axis_name, dtype=self.dtype,
                        conv_general_dilated=self.conv_general_dilated,
                        name=f"layer{stage}_{i}")(x, train)
    if self.variant == "robustbench":
      return pooled_head(x, self.num_classes, self.dtype)
    if self.variant != "fgsm_pgk":
      x = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn")(x))
      return pooled_head(x, self.num_classes, self.dtype)
    b, h, w, c = x.shape
    if (h, w) != (8, 8):
      raise ValueError(f"the fgsm_pgk PreActResNet-18 pools its final map by 4 into the 2x2 map "
                       f"its Linear(2048, classes) head takes (avg_pool2d(out, 4)); its final map "
                       f"here is {h}x{w}: use 64x64 inputs (Tiny ImageNet).")
    x = nn.avg_pool(x, (4, 4), strides=(4, 4))
    # PyTorch flattens [B, C, H, W]: the head's inputs in (C, H, W) order.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(b, -1)
    return linear(x, self.num_classes, self.dtype)
