"""Layers shared by the models, each as its PyTorch reference computes it: convolutions with
PyTorch's padding and each reference's initialisation, BatchNorm2d (momentum 0.1, eps 1e-5, the
running variance updated with the unbiased batch variance), the fixed input normalisation some
recipes use, the input check, the pre-activation residual block and the linear head.

Initialisations (`init`):
  "torch": PyTorch's default for `nn.Conv2d` and `nn.Linear`, `kaiming_uniform_(a=sqrt(5))`,
    i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the Linear bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (torch/nn/modules/conv.py and linear.py, `reset_parameters`). The CIFAR ResNet-18 of
    kuangliu (FGSM-PGK, TRADES' ResNet), D2R's ResNet18_cifar (the LBGAT guide) and every
    PreActResNet-18 of the released code define no initialisation of their own.
  "wrn": the WideResNet of TRADES / MART / D2R (models/wideresnet.py:74-82 of
    yaodongyu/TRADES@6e8e11b): conv weights N(0, sqrt(2 / (k * k * out))), BatchNorm weight 1 and
    bias 0, Linear bias 0; the Linear weight keeps PyTorch's default.
Flax module names follow the PyTorch attribute names (`conv1`, `bn1`, `layer1_0`, `shortcut_0`,
`linear`, ...: a `Sequential` index joined to its parent with "_"), so `models.torch_weights`
maps a PyTorch `state_dict` onto the params by name.
"""

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

INITS = ("torch", "wrn")
# kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in) = 1/sqrt(fan_in).
TORCH_DEFAULT_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# normal_(0, sqrt(2 / n)), n = kernel_h * kernel_w * out_channels (TRADES models/wideresnet.py:76-77).
WRN_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# Per-channel (mean, std) of the fixed first layer `(x - mean) / std` some models have.
# CIFAR-10 from locuslab/fast_adversarial CIFAR10/utils.py:8-9 (= N-FGSM utils/data_utils.py:16-17,
# robust_overfitting utils.py:17-18, DeepMind's CIFAR10_MEAN / CIFAR10_STD in RobustBench's
# dm_wide_resnet.py:25-26); CIFAR-100 from pdejorge/N-FGSM utils/data_utils.py:244-245 (= DeepMind's
# CIFAR100_MEAN / CIFAR100_STD, dm_wide_resnet.py:27-28). The rest are the values RobustBench's
# wrapper classes register (RobustBench/robustbench@78fcc9e robustbench/model_zoo/): "symmetric",
# 2x - 1 (Hendrycks2019UsingNet, cifar10.py:59-68 and cifar100.py:86-96); "cifar100_exact"
# (Wu2020AdversarialNet, Rice2020OverfittingNet, cifar100.py:40-84); "chen2020_cifar100"
# (Chen2020EfficientNet, cifar100.py:21-38); "augustin2020" (Augustin2020AdversarialWideNet,
# cifar10.py:193-213); "rony2019" (Rony2019DecouplingNet, cifar10.py:234-249). Values as written
# there: "cifar100" and "cifar100_exact" differ by under 1e-4, enough to move logits by more.
NORMALIZATIONS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "cifar100_exact": ((0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
                       (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)),
    "chen2020_cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "augustin2020": ((0.4913997551666284, 0.48215855929893703, 0.4465309133731618),
                     (0.24703225141799082, 0.24348516474564, 0.26158783926049628)),
    "rony2019": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262)),
}


def check_init(init: str) -> None:
  if init not in INITS:
    raise ValueError(f"model init must be one of {INITS}, got {init!r}.")


# What a model computes its convolutions with: `lax.conv_general_dilated` or a function of the same
# signature and values (the commands pass `regmix_jax.cpu`'s on CPU; `models.build_models(conv=)`).
ConvFn = Callable[..., Any]


def conv(features: int, kernel: int, stride: int, dtype: Any, name: str | None = None,
         init: str = "torch", conv_general_dilated: ConvFn = lax.conv_general_dilated) -> nn.Conv:
  """Bias-free conv with PyTorch's symmetric padding (kernel // 2 on every side), so strided
  convs see the same pixels as `nn.Conv2d(..., padding=kernel // 2)`, computed by
  `conv_general_dilated`."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=WRN_CONV_INIT if init == "wrn" else TORCH_DEFAULT_INIT,
                 dtype=dtype, name=name, conv_general_dilated=conv_general_dilated)


class BatchNorm(nn.Module):
  """`torch.nn.BatchNorm2d` over the channels of NHWC inputs (momentum 0.1, eps 1e-5).

  Train mode (`use_running_average=False`) normalises with the batch's mean and biased variance
  and updates the running averages, `running = 0.9 running + 0.1 batch`, the variance with the
  unbiased batch variance (n / (n - 1) times the biased one, n the number of values per channel),
  as PyTorch does; inference mode uses the running averages. With `axis_name` the batch
  statistics are those of the batch over every device of that mapped axis (synchronised BN).
  Statistics are computed in float32 whatever `dtype` (the output's); variables as Flax's
  BatchNorm: params `scale`, `bias`; batch_stats `mean`, `var`.

  The output is `x * a + b`, `a = scale / sqrt(var + eps)`, `b = bias - mean * a`, as PyTorch's
  CPU kernel computes it (pytorch/pytorch@d618569, aten/src/ATen/native/cpu/
  batch_norm_kernel.cpp:25-41, `batch_norm_cpu_inference_collect_linear_and_constant_terms`;
  later versions apply the same terms in train mode, `batch_norm_cpu_collect_linear_and_constant_
  terms`; the torch 2.13 wheel we test against ships no source): one multiply-add per value, so
  XLA:CPU writes no `x - mean` of its own and the input gradient is one pass after the
  reductions (written as `(x - mean) * a + bias`, train-mode BatchNorm and ReLU wrote an
  activation-sized array four times for their gradient, now twice; docs/performance.md).
  """
  use_running_average: bool
  axis_name: str | None = None
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    x32 = x.astype(jnp.float32)
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      count = math.prod(x.shape[:-1])
      mean, mean_square = x32.mean(axes), jnp.square(x32).mean(axes)
      if self.axis_name is not None and not self.is_initializing():
        mean, mean_square = jax.lax.pmean((mean, mean_square), self.axis_name)
        count = count * jax.lax.psum(1, self.axis_name)
      var = jnp.maximum(mean_square - jnp.square(mean), 0.0)
      if not self.is_initializing():
        unbiased = var * (count / jnp.maximum(count - 1, 1))
        running_mean.value = (1.0 - self.momentum) * running_mean.value + self.momentum * mean
        running_var.value = (1.0 - self.momentum) * running_var.value + self.momentum * unbiased
    a = jax.lax.rsqrt(var + self.epsilon) * scale
    y = x32 * a + (bias - mean * a)
    return y.astype(self.dtype)


def batch_norm(train: bool, axis_name: str | None, dtype: Any, name: str | None = None):
  """`BatchNorm` in train (batch statistics) or inference mode (running averages)."""
  return BatchNorm(use_running_average=not train, axis_name=axis_name, dtype=dtype, name=name)


def model_input(x, normalization: str, dtype: Any, first_conv_float32: bool):
  """`(x, stem_dtype)`: the images `x` normalised (`normalize`, in float32) and cast to the dtype
  the model's first convolution computes in, `stem_dtype`: the model's `dtype`, or float32 with
  `first_conv_float32` (an option of the bfloat16 policy, config `model.first_conv_float32`: the
  pixels and an attack's small perturbations of them keep float32 resolution through the first
  layer, whose output the model then casts to `dtype`; bfloat16 moves a pixel of 0.5 in steps of
  2^-8 = 0.004)."""
  stem = jnp.float32 if first_conv_float32 else dtype
  return normalize(jnp.asarray(x, jnp.float32), normalization).astype(stem), stem


def normalize(x, name: str):
  """`(x - mean) / std` per channel for `name` in NORMALIZATIONS ("" = x unchanged): the fixed
  first layer of the recipes that normalise their inputs. Attacks keep working in [0, 1] pixel
  space (an eps of 8/255 there is the released code's `epsilon / std` in normalised space)."""
  if not name:
    return x
  if name not in NORMALIZATIONS:
    raise ValueError(f"model normalize must be '' or one of {sorted(NORMALIZATIONS)}, got "
                     f"{name!r} (config field `model.normalize`).")
  mean, std = (jnp.asarray(v, x.dtype) for v in NORMALIZATIONS[name])
  return (x - mean) / std


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


def _torch_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def linear(x, num_classes: int, dtype: Any, init: str = "torch", name: str = "linear"):
  """`nn.Linear(x.shape[-1], num_classes)` with the reference's initialisation (weight PyTorch's
  default; bias PyTorch's default, or 0 for "wrn"); logits always float32."""
  bias_init = nn.initializers.zeros if init == "wrn" else _torch_bias_init(x.shape[-1])
  return nn.Dense(num_classes, dtype=dtype, kernel_init=TORCH_DEFAULT_INIT, bias_init=bias_init,
                  name=name)(x).astype(jnp.float32)


def pooled_head(x, num_classes: int, dtype: Any, init: str = "torch", name: str = "linear"):
  """Global average pooling (summed in float32), then `linear`: equals the references'
  `avg_pool2d(out, k)` on their final k x k map, and also works at other input sizes."""
  pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(dtype)
  return linear(pooled, num_classes, dtype, init, name)


class PreActBlock(nn.Module):
  """Pre-activation basic block: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, plus a shortcut.

  The shortcut is the identity, or a bias-free 1x1 conv (no BN; `shortcut_0`) when the stride or
  the width changes. `shortcut_from_activation` picks what that 1x1 conv sees: the raw input
  (False: Wong et al.'s PreActResNet, fast_adversarial CIFAR10/preact_resnet.py:24) or
  BN-ReLU(input) (True: FGSM-PGK's ImageNet_models/preact_resnet.py:32, Rice et al.'s
  preactresnet.py:30, and the WideResNet's `convShortcut`, TRADES models/wideresnet.py:27-33).
  Module names: `bn1`, `conv1`, `bn2`, `conv2`, `shortcut_0` (`shortcut_name` for the WRN's
  `convShortcut`).
  """
  features: int
  stride: int = 1
  shortcut_from_activation: bool = False
  axis_name: str | None = None
  dtype: Any = jnp.float32
  init: str = "torch"
  shortcut_name: str = "shortcut_0"
  conv_general_dilated: ConvFn = lax.conv_general_dilated

  @nn.compact
  def __call__(self, x, train: bool):
    act = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn1")(x))
    if self.stride != 1 or x.shape[-1] != self.features:
      source = act if self.shortcut_from_activation else x
      shortcut = conv(self.features, 1, self.stride, self.dtype, name=self.shortcut_name,
                      init=self.init, conv_general_dilated=self.conv_general_dilated)(source)
    else:
      shortcut = x
    y = conv(self.features, 3, self.stride, self.dtype, name="conv1", init=self.init,
             conv_general_dilated=self.conv_general_dilated)(act)
    y = nn.relu(batch_norm(train, self.axis_name, self.dtype, name="bn2")(y))
    y = conv(self.features, 3, 1, self.dtype, name="conv2", init=self.init,
             conv_general_dilated=self.conv_general_dilated)(y)
    return y + shortcut
