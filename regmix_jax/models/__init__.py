"""Model registry: `get_model(name, num_classes, axis_name=..., dtype=..., **kwargs)`, and
`build_models(config, roles, num_classes)`, every model of a run from its config.

Every model is a Flax Linen module called as `model.apply(variables, x, train=...)` with x float
images in [0, 1], NHWC [B, H, W, 3], and returns float32 logits [B, num_classes]. `normalize`
("", "cifar10", "cifar100") adds the fixed per-channel normalisation of the recipes that use one
as the first layer. BatchNorm follows PyTorch (`common.BatchNorm`: momentum 0.1, eps 1e-5,
unbiased running variance) and is synchronised over `axis_name` when given (run the model inside
pmap / shard_map with that axis). Each model is initialised as its PyTorch reference
(`common.INITS`). `dtype` is the computation dtype; parameters stay float32. `conv` is the
function the convolutions compute with (default `lax.conv_general_dilated`; the commands pass
`regmix_jax.cpu`'s on CPU): it changes how, never what, a model computes.
"""

import inspect
from typing import Any, Callable, Iterable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from regmix_jax.parallel import AXIS
from regmix_jax.models.common import NORMALIZATIONS, PreActBlock, check_images
from regmix_jax.models.deepmind import DMPreActResNet18, DMWideResNet
from regmix_jax.models.resnet import BasicBlock, PreActResNet18, ResNet18
from regmix_jax.models.small_cnn import SmallCNN
from regmix_jax.models.wideresnet import WideResNet


def _small_cnn(num_classes, *, width=32, **common):
  return SmallCNN(num_classes, width=width, **common)


def _resnet18(num_classes, **common):
  return ResNet18(num_classes, stage_strides=(1, 2, 2, 2), **common)


def _lbgat_resnet18(num_classes, **common):
  return ResNet18(num_classes, stage_strides=(1, 1, 2, 2), **common)


def _preact_resnet18(num_classes, **common):
  return PreActResNet18(num_classes, variant="wong", **common)


def _preact_resnet18_rice(num_classes, **common):
  return PreActResNet18(num_classes, variant="rice", **common)


def _preact_resnet18_fgsm_pgk(num_classes, **common):
  return PreActResNet18(num_classes, variant="fgsm_pgk", **common)


def _preact_resnet18_robustbench(num_classes, **common):
  return PreActResNet18(num_classes, variant="robustbench", **common)


def _dm_wrn(num_classes, *, depth=28, width=10, **common):
  return DMWideResNet(num_classes, depth=depth, width=width, **common)


def _dm_preact_resnet18(num_classes, **common):
  return DMPreActResNet18(num_classes, **common)


def _wrn(num_classes, *, depth=34, width=10, **common):
  return WideResNet(num_classes, depth=depth, width=width, **common)


def _wrn34_10(num_classes, **common):
  return WideResNet(num_classes, depth=34, width=10, **common)


# name -> constructor(num_classes, *, axis_name, dtype, normalize, **model kwargs) -> nn.Module
MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": _small_cnn,
    "resnet18": _resnet18,  # kuangliu's CIFAR ResNet-18 (FGSM-PGK)
    "preact_resnet18": _preact_resnet18,  # Wong et al.'s (FGSM-RS, N-FGSM)
    "preact_resnet18_rice": _preact_resnet18_rice,  # Rice et al.'s (PGD-AT)
    "preact_resnet18_fgsm_pgk": _preact_resnet18_fgsm_pgk,  # FGSM-PGK's Tiny ImageNet model
    "lbgat_resnet18": _lbgat_resnet18,  # D2R's guide (ResNet18_cifar)
    "wrn": _wrn,  # TRADES' WideResNet (= RobustBench's WideResNet)
    "wrn34_10": _wrn34_10,
    # RobustBench's leaderboard architectures (`regmix_jax.robustbench`):
    "preact_resnet18_robustbench": _preact_resnet18_robustbench,  # no final BN-ReLU
    "dm_wrn": _dm_wrn,  # DeepMind's WideResNet, Swish (Gowal et al., Rebuffi et al.)
    "dm_preact_resnet18": _dm_preact_resnet18,  # DeepMind's PreActResNet-18, Swish
}


# `config.model.dtype` -> the computation dtype.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_kwargs(name: str) -> tuple[str, ...]:
  """The model-specific keyword arguments `name` accepts (config `model.width`, `model.depth`)."""
  params = inspect.signature(MODELS[name]).parameters.values()
  return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def get_model(name: str, num_classes: int, *, axis_name: str | None = None,
              dtype: Any = jnp.float32, normalize: str = "", conv: Callable | None = None,
              first_conv_float32: bool = False, **kwargs) -> nn.Module:
  """Builds model `name` with `num_classes` outputs, its convolutions computed by `conv` (None:
  `lax.conv_general_dilated`), its first convolution in float32 with `first_conv_float32`
  (`common.model_input`). ValueError for an unknown name or for keyword arguments the model
  does not take."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r} (config field model.name); available: "
                     f"{', '.join(sorted(MODELS))}")
  unknown = sorted(set(kwargs) - set(model_kwargs(name)))
  if unknown:
    accepted = ", ".join(model_kwargs(name)) or "none"
    raise ValueError(f"model {name!r} got unknown kwargs {unknown} (config fields `model.width`, `model.depth`; 0 = default); "
                     f"accepted: {accepted}")
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
  if normalize and normalize not in NORMALIZATIONS:
    raise ValueError(f"model normalize must be '' or one of {sorted(NORMALIZATIONS)}, got "
                     f"{normalize!r} (config field `model.normalize`).")
  if conv is not None:
    kwargs["conv_general_dilated"] = conv
  return MODELS[name](num_classes, axis_name=axis_name, dtype=dtype, normalize=normalize,
                      first_conv_float32=first_conv_float32, **kwargs)


def build_models(config: ml_collections.ConfigDict, roles: Iterable[str],
                 num_classes: int, dtype: str | None = None,
                 conv: Callable | None = None) -> dict[str, nn.Module]:
  """Role -> Flax module, from `config.model` (the target) and `config.<role>_model` (others,
  e.g. D2R's `guide_model`). BatchNorm is synchronised over the data-parallel axis
  (`parallel.AXIS`) when `model.sync_batch_norm` (the statistics of the global batch, as on one
  GPU); every model computes in `dtype` (default `model.dtype`, the training precision; the
  evaluation passes `eval.dtype`) and normalises its inputs by `model.normalize`, its first
  convolution in float32 with `model.first_conv_float32`; `conv` as `get_model`."""
  axis_name = AXIS if config.model.sync_batch_norm else None
  dtype = DTYPES[config.model.dtype if dtype is None else dtype]
  built = {}
  for role in roles:
    model_cfg = config.model if role == "target" else config[f"{role}_model"]
    sizes = {k: model_cfg[k] for k in ("width", "depth") if model_cfg[k]}
    built[role] = get_model(model_cfg.name, num_classes, axis_name=axis_name, dtype=dtype,
                            normalize=config.model.normalize, conv=conv,
                            first_conv_float32=config.model.first_conv_float32, **sizes)
  return built


__all__ = ["DTYPES", "MODELS", "NORMALIZATIONS", "BasicBlock", "DMPreActResNet18", "DMWideResNet",
           "PreActBlock", "PreActResNet18", "ResNet18",
           "SmallCNN", "WideResNet", "build_models", "check_images", "get_model", "model_kwargs"]
