"""DeepMind's WideResNet and PreActResNet (Gowal et al. 2020, Rebuffi et al. 2021), as RobustBench
builds them for its leaderboard entries: RobustBench/robustbench@78fcc9e
robustbench/model_zoo/architectures/dm_wide_resnet.py (from google-deepmind/deepmind-research
adversarial_robustness/pytorch/model_zoo.py).

What sets them apart from the WideResNet of TRADES (`wideresnet.py`): Swish activations
(x * sigmoid(x); RobustBench's custom `Swish` and `nn.SiLU` compute the same function), the
input normalisation inside the model, TensorFlow's "SAME" padding for strided convolutions
(pad 0 before and 1 after each spatial axis, `F.pad(v, (0, 1, 0, 1))`, where PyTorch's own
padding=1 pads 1 on both sides), the shortcut of the PreActResNet a 3x3 convolution of the raw
block input, and a biased Linear head (`logits`). PyTorch's default initialisation (the file
defines none).

Flax module names are the PyTorch attribute names, and a `Sequential`'s children are named "0",
"1", ...: the Flax path joined with "." is the PyTorch key (`models.torch_weights` recognises
these names by their digit-only components), e.g. `layer.0.block.3.batchnorm_1.weight`,
`layer_2.0.shortcut.weight`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from regmix_jax.models.common import (TORCH_DEFAULT_INIT, ConvFn, batch_norm, check_images,
                                      model_input, pooled_head)
from regmix_jax.models.wideresnet import check_depth

def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str, conv_fn: ConvFn,
          same: bool) -> nn.Conv:
  """Bias-free conv. `same`: RobustBench's manual padding before a padding-0 conv (stride 1:
  1 on every side; stride 2: 0 before, 1 after, as TensorFlow's SAME); otherwise PyTorch's
  padding kernel // 2 on every side."""
  if same:
    padding = ((1, 1), (1, 1)) if stride == 1 else ((0, 1), (0, 1))
    if stride not in (1, 2):
      raise ValueError(f"Unsupported stride {stride} (RobustBench's _Block: 1 or 2).")
  else:
    padding = ((kernel // 2,) * 2,) * 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 use_bias=False, kernel_init=TORCH_DEFAULT_INIT, dtype=dtype, name=name,
                 conv_general_dilated=conv_fn)


class _Common(nn.Module):
  """Fields every block shares."""
  axis_name: str | None = None
  dtype: Any = jnp.float32
  conv_general_dilated: ConvFn = lax.conv_general_dilated

  def bn(self, train, name):
    return batch_norm(train, self.axis_name, self.dtype, name=name)


class DMBlock(_Common):
  """dm_wide_resnet.py:54-109 `_Block`: BN-Swish of the input (the shortcut's input too when the
  width changes: a 1x1 conv, stride `stride`), SAME-padded 3x3 conv (stride), BN-Swish, 3x3 conv."""
  in_planes: int = 16
  out_planes: int = 16
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    act = nn.swish(self.bn(train, "batchnorm_0")(x))
    out = _conv(self.out_planes, 3, self.stride, self.dtype, "conv_0",
                self.conv_general_dilated, same=True)(act)
    out = nn.swish(self.bn(train, "batchnorm_1")(out))
    out = _conv(self.out_planes, 3, 1, self.dtype, "conv_1", self.conv_general_dilated,
                same=False)(out)
    if self.in_planes != self.out_planes:
      x = _conv(self.out_planes, 1, self.stride, self.dtype, "shortcut",
                self.conv_general_dilated, same=False)(act)
    return x + out


class _Sequential(_Common):
  """A `Sequential` of `block`s (children "0", "1", ...): the first from `in_planes` with
  `stride`, the rest `out_planes` to `out_planes` with stride 1."""
  block: Any = None
  num_blocks: int = 1
  in_planes: int = 16
  out_planes: int = 16
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(self.num_blocks):
      x = self.block(self.axis_name, self.dtype, self.conv_general_dilated,
                     in_planes=self.in_planes if i == 0 else self.out_planes,
                     out_planes=self.out_planes, stride=self.stride if i == 0 else 1,
                     name=str(i))(x, train)
    return x


class _BlockGroup(_Sequential):
  """dm_wide_resnet.py:112-132 `_BlockGroup`: its `DMBlock`s, a `_Sequential`, in `block`."""

  @nn.compact
  def __call__(self, x, train: bool):
    return _Sequential(self.axis_name, self.dtype, self.conv_general_dilated, self.block,
                       self.num_blocks, self.in_planes, self.out_planes, self.stride,
                       name="block")(x, train)


class _Groups(_Common):
  """DMWideResNet's `layer`: three `_BlockGroup`s (children "0", "1", "2")."""
  num_blocks: int = 1
  width: int = 10

  @nn.compact
  def __call__(self, x, train: bool):
    planes = (16, 16 * self.width, 32 * self.width, 64 * self.width)
    for g, stride in enumerate((1, 2, 2)):
      x = _BlockGroup(self.axis_name, self.dtype, self.conv_general_dilated, DMBlock,
                      self.num_blocks, planes[g], planes[g + 1], stride, name=str(g))(x, train)
    return x


class DMWideResNet(nn.Module):
  """dm_wide_resnet.py:135-194 `DMWideResNet`, Swish: normalisation, `init_conv` 3x3 16, three
  groups (`layer`) of (depth - 4) / 6 `DMBlock`s of widths 16k, 32k, 64k (k = width), strides 1, 2,
  2, final BN-Swish (`batchnorm`), global average pooling (= avg_pool 8 at 32x32), `logits`. Input:
  [B, 32, 32, 3] in [0, 1]; `normalize` as the other models (RobustBench: "cifar10" or "cifar100",
  its CIFAR10_MEAN / CIFAR100_MEAN). Output: float32 logits."""
  num_classes: int
  depth: int = 28
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
    check_images(x, sizes=(32,))
    x, stem = model_input(x, self.normalize, self.dtype, self.first_conv_float32)
    x = _conv(16, 3, 1, stem, "init_conv", self.conv_general_dilated, same=False)(x).astype(
        self.dtype)
    x = _Groups(self.axis_name, self.dtype, self.conv_general_dilated, (self.depth - 4) // 6,
                self.width, name="layer")(x, train)
    x = nn.swish(batch_norm(train, self.axis_name, self.dtype, name="batchnorm")(x))
    return pooled_head(x, self.num_classes, self.dtype, name="logits")


class DMPreActBlock(_Common):
  """dm_wide_resnet.py:197-232 `_PreActBlock`: BN-Swish, SAME-padded 3x3 conv (stride), BN-Swish,
  3x3 conv, plus the shortcut: the raw input, or (stride or width changing) a SAME-padded 3x3 conv
  of the raw input, not of its activation."""
  in_planes: int = 64
  out_planes: int = 64
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    out = nn.swish(self.bn(train, "batchnorm_0")(x))
    if self.stride != 1 or self.in_planes != self.out_planes:
      shortcut = _conv(self.out_planes, 3, self.stride, self.dtype, "shortcut",
                       self.conv_general_dilated, same=True)(x)
    else:
      shortcut = x
    out = _conv(self.out_planes, 3, self.stride, self.dtype, "conv_2d_1",
                self.conv_general_dilated, same=True)(out)
    out = nn.swish(self.bn(train, "batchnorm_1")(out))
    out = _conv(self.out_planes, 3, 1, self.dtype, "conv_2d_2", self.conv_general_dilated,
                same=False)(out)
    return out + shortcut


class DMPreActResNet18(nn.Module):
  """dm_wide_resnet.py:235-299 `DMPreActResNet` (depth 18), Swish: normalisation, `conv_2d` 3x3 64,
  `layer_0`..`layer_3` of two `DMPreActBlock`s (widths 64..512, strides 1, 2, 2, 2), final
  BN-Swish (`batchnorm`), avg_pool 4 (= global pooling at 32x32), `logits`. Input and output as
  DMWideResNet."""
  num_classes: int
  axis_name: str | None = None
  dtype: Any = jnp.float32
  normalize: str = ""
  conv_general_dilated: ConvFn = lax.conv_general_dilated
  first_conv_float32: bool = False  # `common.model_input`

  @nn.compact
  def __call__(self, x, train: bool):
    check_images(x, sizes=(32,))
    x, stem = model_input(x, self.normalize, self.dtype, self.first_conv_float32)
    x = _conv(64, 3, 1, stem, "conv_2d", self.conv_general_dilated, same=False)(x).astype(
        self.dtype)
    planes = (64, 64, 128, 256, 512)
    for i, stride in enumerate((1, 2, 2, 2)):
      x = _Sequential(self.axis_name, self.dtype, self.conv_general_dilated, DMPreActBlock, 2,
                      planes[i], planes[i + 1], stride, name=f"layer_{i}")(x, train)
    x = nn.swish(batch_norm(train, self.axis_name, self.dtype, name="batchnorm")(x))
    return pooled_head(x, self.num_classes, self.dtype, name="logits")
