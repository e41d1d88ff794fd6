"""Training methods: a registry of pure loss functions the generic train step calls.

A method is data plus a pure function. `loss(params, batch_stats, batch, keys, *, models, cfg,
axis_name) -> LossOutput`, where
  params, batch_stats: dicts keyed by model role ("target", and "guide" for two-model methods);
  batch: {"image": float [B, H, W, C] in [0, 1] (augmented), "label": [B], "index": [B],
          "mask": [B]};
  keys: [B] per-example keys (see `regmix_jax.rng`);
  models: {role: flax module}; cfg: the method's config as a plain dict;
  axis_name: the data-parallel axis or None (for methods that need global counts).
Methods with per-example state (FGSM-PGK) also find it in `batch["sample"]` (`{name: [B, ...]}`)
and return its new values in `LossOutput.sample_state`; their module's `SAMPLE_STATE` says what it
holds (`regmix_jax.sample_state`). The loss is the mean over the local batch; the train step
averages gradients, batch statistics and metrics over devices. Adding a method adds a module here
and a config; `train.py` and `train_step.py` do not change.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Mapping

import ml_collections

from regmix_jax.methods import d2r, fgsm_agr, fgsm_amr, fgsm_pgk, fgsm_rs, mart, n_fgsm, pgd_at
from regmix_jax.methods import standard, trades
from regmix_jax.methods.base import LossOutput, Range, apply_model, logits_fn
from regmix_jax.sample_state import SampleStateSpec


@dataclasses.dataclass(frozen=True)
class Method:
  """A registered training method.

  name: the registry name (`config.method.name`).
  loss: the pure loss function described in this module's docstring.
  defaults: every field of `config.method` the method reads, with its default (docs/methods.md).
  roles: the model roles the method trains ("target" always first).
  choices: allowed values of the method's string fields, checked when the config is validated.
  sample_state: what the method keeps per example between visits (None: nothing).
  ranges: `{field: (low, high)}` inclusive bounds of numeric fields (None = unbounded), or a
    `base.Range` (`base.POSITIVE`: > 0, for radii and step sizes); every numeric field has one
    (tested), checked when the config is validated.
  metrics: the names of the scalars the loss reports in `LossOutput.metrics` (the train step
    adds "learning_rate", "ema_decay" when EMA is on, and "ema_applied" when the loss gates the
    EMA).
  post_update: optional `(new params, batch_stats, batch, *, models, cfg) -> batch_stats`, run
    by the train step after the optimiser update: forward passes the released code makes with
    the new weights, for their BatchNorm running averages only (PGD-AT's logging pass).
  """

  name: str
  loss: Callable[..., LossOutput]
  defaults: Mapping[str, Any]
  roles: tuple[str, ...] = ("target",)
  choices: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
  sample_state: SampleStateSpec | None = None
  ranges: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
  metrics: tuple[str, ...] = ("loss", "accuracy")
  post_update: Callable[..., Any] | None = None


METHODS: dict[str, Method] = {
    m.NAME: Method(m.NAME, m.loss, m.DEFAULTS, getattr(m, "ROLES", ("target",)),
                   getattr(m, "CHOICES", {}), getattr(m, "SAMPLE_STATE", None),
                   getattr(m, "RANGES", {}), m.METRICS, getattr(m, "post_update", None))
    for m in (standard, fgsm_rs, pgd_at, trades, mart, n_fgsm, fgsm_pgk, fgsm_amr, fgsm_agr,
              d2r)
}


# Method config fields renamed since earlier releases: old name -> new name. `method_config`,
# the command line and saved runs' config.json accept the old name, with a warning.
RENAMED_FIELDS = {"target": "ce_target"}  # FGSM-PGK's CE target, not the trained model's role


def get_method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f"Unknown training method {name!r} (config field `method.name`). "
                     f"Available: {', '.join(sorted(METHODS))}.")
  return METHODS[name]


def method_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """`config.method` for `name`: every field the method reads, at its default, then `overrides`
  (renamed fields, `RENAMED_FIELDS`, under their new names, with a warning)."""
  method = get_method(name)
  for old, new in RENAMED_FIELDS.items():
    if old in overrides:
      warnings.warn(f"method field `{old}` is now `{new}`.", DeprecationWarning, stacklevel=2)
      overrides[new] = overrides.pop(old)
  cfg = ml_collections.ConfigDict({"name": name, **method.defaults})
  cfg.update(overrides)
  return cfg
