"""The configuration schema: every field, its default, and the checks run before training starts.

Config files in `configs/` start from `base_config()` and set plain values, so every field can be
overridden on the command line (`--config.data.batch_size=256`; `from_command_line` does the same
in Python). `validate(config)` fails at start with a message naming the field for an unknown
field, a value of the wrong type, or an unknown or inconsistent choice. The allowed values of a
choice live beside the code that uses them (`parallel.KINDS`, `data.SOURCES`, ...); this module
imports them. Defaults follow the CIFAR-10 recipes in docs/methods.md.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from typing import Any, Sequence

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from regmix_jax import attacks, cpu, data, methods, models, parallel, robustbench, train_state
from regmix_jax.cpu import host

# Fields renamed since earlier releases: old dotted path -> new one. An old name on the command
# line or in a saved config.json still works (with a warning saying what it became).
RENAMED_FIELDS = {f"method.{old}": f"method.{new}" for old, new in methods.RENAMED_FIELDS.items()}


def base_config() -> ml_collections.ConfigDict:
  """All generic fields at their defaults. `method` holds only `name`: use
  `methods.method_config(name)` to get every field of a method."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_epochs = 110
  # CPU only: number of host devices for data parallelism; 0 = one per core (at most; the largest
  # count that divides the batch sizes). Ignored on GPU/TPU.
  c.cpu_devices = 0
  # CPU only: the operations XLA:CPU hands to YNNPACK (`--xla_cpu_experimental_ynn_fusion_type`,
  # a comma-separated subset of cpu.host.YNN_FUSION_TYPES), or "default" for XLA's own choice.
  # "reduce" keeps convolutions on XLA's Eigen kernels, measured faster than jaxlib 0.10.2's
  # default (docs/performance.md). Set only where the installed jaxlib knows the flag;
  # XLA_FLAGS, when it sets the flag, wins.
  c.cpu_ynn_fusion_type = "reduce"
  # CPU only: what runs the convolutions (`cpu.choose`, one of cpu.CHOICES): "xla", XLA:CPU's own
  # kernels with the library's gradient rules (regmix_jax/cpu/fast_conv.py); "onednn", oneDNN's
  # for the NHWC convolutions whose input maps are at least `cpu_onednn_min_size` wide
  # (`onednn.supports`: not strided 1x1 ones with under 16 input channels, nor bf16 without
  # AVX512-BF16 or AMX;
  # `pip install "regmix_jax[onednn]"` on x86_64 Linux, and g++; falls back to "xla" with a
  # warning where unavailable); "auto", oneDNN's on x86-64 Linux CPUs with AVX-512 where it is
  # installed and builds, "xla" elsewhere (measured faster there: docs/performance.md); "plain",
  # lax's convolution unchanged. The run's first line says which. Values change by float
  # rounding only. Convolutions on oneDNN are reverse-mode only (`jax.jvp` through them raises).
  c.cpu_convolutions = "auto"
  # CPU only, with oneDNN's convolutions: the narrowest input map (pixels) sent to oneDNN; the
  # narrower ones run on XLA's. 0: the default measured for this CPU's vendor
  # (`cpu.onednn.default_min_size`: every map on AMD CPUs with AVX-512, 16 wide elsewhere;
  # docs/performance.md, "Narrow maps"). Values change by float rounding only.
  c.cpu_onednn_min_size = 0
  # CPU only: how long a host device may wait for the others at a collective (seconds) before
  # XLA:CPU ends the process; XLA's own default, 40 s, can be reached by a slow device on a busy
  # machine (cpu.host.COLLECTIVE_TIMEOUT_FLAG). XLA_FLAGS, when it sets the flag, wins.
  c.cpu_collective_timeout_s = 600
  c.parallel = "pmap"  # parallel.KINDS: how the per-device step is mapped (pmap, shard_map)
  # Multi-process data parallelism (JAX's distributed runtime). Started when `enabled` or when
  # the environment sets JAX_COORDINATOR_ADDRESS; empty / 0 / -1 fields come from the
  # environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) or, where neither
  # gives them (TPU pods, SLURM, ...), from JAX's own cluster detection.
  c.distributed = ml_collections.ConfigDict(
      dict(enabled=False, coordinator_address="", num_processes=0, process_id=-1))
  c.log_every_steps = 50

  c.data = ml_collections.ConfigDict()
  c.data.source = "tfds"  # data.SOURCES: "tfds" | "files" | "synthetic"
  c.data.name = "cifar10"
  c.data.dir = ""  # files: a directory or an .npz; tfds: data_dir ("" = tfds default)
  c.data.download = True  # tfds only
  c.data.val_size = 0  # examples carved from train for validation (never from test)
  c.data.seed = 0  # seed of the validation split
  c.data.batch_size = 128  # global, over all devices
  c.data.eval_batch_size = 500  # global
  c.data.augment = True  # pad 4, random crop, horizontal flip (on device)
  c.data.pad_mode = "constant"  # data.PAD_MODES: the crop's padding, zeros or "reflect"
  c.data.rotate_degrees = 0.0  # a random rotation in [-d, d] degrees after crop and flip; 0 = none
  c.data.synthetic = ml_collections.ConfigDict(
      dict(num_train=5000, num_test=1000, image_size=32, num_classes=10, seed=0))

  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet18"
  # The training precision (models.DTYPES). "bfloat16" is mixed precision: the models compute in
  # bfloat16 (convolutions, matrix products, activations), while parameters, optimiser state,
  # EMA, BatchNorm statistics, losses (softmax, KL, MSE) and the attacks' perturbations and
  # input gradients stay float32 (docs/methods.md, "Precision"). Applies to every model of the
  # run; evaluation uses `eval.dtype`.
  c.model.dtype = "float32"
  # With model.dtype "bfloat16" (or eval.dtype), the first convolution computes in float32 on
  # float32 pixels and hands bfloat16 on (`models.common.model_input`): bfloat16 moves a pixel
  # of 0.5 in steps of 2^-8, coarser than the 0.001 start of TRADES' attack. Ours (the released
  # recipes are float32); no effect in float32. Applies to every model of the run.
  c.model.first_conv_float32 = False
  # A fixed per-channel input normalisation as the models' first layer (models.NORMALIZATIONS:
  # "cifar10", "cifar100", and the values some RobustBench models use; "" = none), for the
  # recipes whose released code normalises (FGSM-RS, N-FGSM, PGD-AT); applies to every model of
  # the run. Attack radii stay in pixel units.
  c.model.normalize = ""
  # The RobustBench leaderboard entry these weights are ("<dataset>/<threat model>/<name>", a key
  # of `robustbench.ENTRIES`), written by `convert --robustbench`; "" = none. `evaluate` then
  # defaults to the entry's threat model and radius and prints the leaderboard's figures.
  c.model.robustbench = ""
  # BatchNorm statistics over the global batch (as one GPU of the references sees it), so results
  # do not depend on the device count.
  c.model.sync_batch_norm = True
  # Size fields, passed to the models that take them (0 = the model's default): small_cnn takes
  # width (32); wrn takes depth and width (34, 10); dm_wrn depth and width (28, 10).
  c.model.width = 0
  c.model.depth = 0
  # The second model of two-model methods (D2R's guide); dtype and sync_batch_norm as `model`.
  c.guide_model = ml_collections.ConfigDict(dict(name="lbgat_resnet18", width=0, depth=0))

  c.method = ml_collections.ConfigDict({"name": "standard"})

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 0.1  # peak rate for "cyclic"
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 5e-4  # coupled L2, as PyTorch SGD's weight_decay
  c.optim.grad_clip_norm = 0.0  # 0 = off
  c.optim.schedule = "multistep"  # train_state.SCHEDULES, stepped per iteration
  c.optim.milestones = (100, 105)  # multistep: epochs where the rate is multiplied by gamma
  c.optim.gamma = 0.1
  c.optim.boundaries = (0,)  # piecewise: epochs where the rate changes to the next value
  c.optim.rates = (0.1, 0.1)  # piecewise: len(boundaries) + 1 rates
  # cyclic: PyTorch's CyclicLR, 0 -> learning_rate at this fraction of the run -> 0 (the released
  # FGSM-RS / N-FGSM scripts: step_size_up = step_size_down = half the run).
  c.optim.cyclic_peak_fraction = 0.5
  # cyclic: also cycle the momentum against the rate, `momentum` -> `base_momentum` at the peak ->
  # `momentum` (PyTorch's CyclicLR default cycle_momentum=True, base_momentum 0.8).
  c.optim.cycle_momentum = False
  c.optim.base_momentum = 0.8
  # Iteration k uses the schedule's value at k + 1 (Rice et al. set the rate from
  # `epoch + (i + 1) / len(loader)` before each step); False: at k, as a torch scheduler stepped
  # after each update.
  c.optim.schedule_at_step_end = False

  c.ema = ml_collections.ConfigDict()
  c.ema.enabled = False
  c.ema.decay = 0.999  # warmed up as min(decay, (t + 1) / (t + 10))

  c.eval = ml_collections.ConfigDict()
  c.eval.every_epochs = 1  # and always after the last epoch
  c.eval.attacks = "clean,pgd20,cw20"  # clean, fgsm, pgd<K>, cw<K>
  # The evaluation's precision (models.DTYPES), float32 unless asked: robust accuracy is
  # reported in full precision whatever the training used.
  c.eval.dtype = "float32"
  c.eval.epsilon = 8 / 255
  c.eval.step_size = 2 / 255
  # Examples in each per-epoch evaluation (0 = all); the final one always uses the whole split.
  c.eval.num_examples = 1000
  c.eval.split = "test"  # data.EVAL_SPLITS: "test" or "val" (needs data.val_size > 0)
  # Models evaluated, comma-separated roles of the method ("target", and "guide" for D2R);
  # metrics of a role other than the target are prefixed with it ("guide_pgd20").
  c.eval.roles = "target"

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 0  # 0 = only at the end of each epoch
  c.checkpoint.max_to_keep = 2
  c.checkpoint.async_save = True
  # "" or the name of an evaluated attack (e.g. "pgd10"): also keep, in `<workdir>/best/`, the
  # state whose per-epoch evaluation on the validation split scored highest on it (ties: the later
  # epoch). Needs eval.split = "val": a model is never chosen on the test split.
  c.checkpoint.keep_best = ""
  return c


def eval_roles(config: ml_collections.ConfigDict) -> list[str]:
  """The model roles `config.eval.roles` names, in order ("target", "guide")."""
  return [r.strip() for r in config.eval.roles.split(",") if r.strip()]


def _type_name(value: Any) -> str:
  return type(value).__name__


def load_json(path: str) -> ml_collections.ConfigDict:
  """The config a run saved (`<workdir>/config.json`), on top of today's defaults: fields added
  since the run was trained take their defaults; JSON lists become tuples where the schema has
  tuples. Validated like a config file; every error is a ValueError naming `path` (and the
  field)."""
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"Cannot read the run's config {path}: {e}. Is --workdir a training run's "
                     "workdir (it holds config.json)?") from e

  def bad(field, what):
    return ValueError(f"{path}: config field `{field}` {what}. Correct it in the file (or remove "
                      "it: a field the file lacks takes its default).")

  if not isinstance(saved, dict):
    raise ValueError(f"{path} holds a JSON {type(saved).__name__}, not a config (a JSON object "
                     "of fields, as training writes it): the file is damaged or not a run's "
                     "config.json.")
  method = saved.get("method", {})
  if not isinstance(method, dict):
    raise bad("method", f"must be a group of fields (a JSON object), got {method!r}")
  config = base_config()
  try:
    config.method = methods.method_config(method.get("name", "standard"))
  except (ValueError, TypeError):  # an unknown name; a number or a list
    raise bad("method.name", f"= {method.get('name')!r} names no training method (known: "
              f"{', '.join(sorted(methods.METHODS))})") from None

  def merge(group, values, prefix=""):
    for key, value in values.items():
      if f"{prefix}{key}" in RENAMED_FIELDS:
        new = RENAMED_FIELDS[f"{prefix}{key}"]
        logging.warning("%s: config field `%s%s` is now `%s`; reading it as that.", path,
                        prefix, key, new)
        key = new.rsplit(".", 1)[1]
      if isinstance(group.get(key), ml_collections.ConfigDict):
        if not isinstance(value, dict):
          raise bad(f"{prefix}{key}", f"must be a group of fields (a JSON object), got {value!r}")
        merge(group[key], value, f"{prefix}{key}.")
      elif key not in group:
        raise ValueError(f"{path}: unknown config field `{prefix}{key}`.")
      else:
        try:
          group[key] = tuple(value) if isinstance(value, list) else value
        except TypeError:  # ml_collections refuses a value of another type
          raise bad(f"{prefix}{key}", f"must be {_type_name(group[key])} (like "
                    f"{group[key]!r}), got {_type_name(value)} {value!r}") from None

  merge(config, saved)
  try:
    validate(config)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{path}: {e}") from e
  return config


def changed_fields(before: ml_collections.ConfigDict, after: ml_collections.ConfigDict
                   ) -> list[str]:
  """The fields whose values differ between two configs, as `path: before -> after` (a field
  one of them lacks shows as `(absent)`), in the order of `before`'s fields."""
  def flat(config):
    out = {}

    def walk(values, prefix):
      for key, value in values.items():
        if isinstance(value, dict):
          walk(value, f"{prefix}{key}.")
        else:
          out[f"{prefix}{key}"] = value
    walk(json.loads(config.to_json_best_effort()), "")
    return out
  old, new = flat(before), flat(after)
  return [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
          for k in list(old) + [k for k in new if k not in old] if old.get(k) != new.get(k)]


def _check_types(config, schema, prefix: str = "") -> None:
  """Every field of `config` must exist in `schema` and have a compatible type."""
  for key in config.keys():
    path = f"{prefix}{key}"
    if key not in schema:
      if path in RENAMED_FIELDS:
        raise ValueError(f"Config field `{path}` was renamed to `{RENAMED_FIELDS[path]}`: set "
                         "that instead (the command line and saved runs' config.json still "
                         "accept the old name).")
      close = difflib.get_close_matches(key, list(schema.keys()), n=1)
      hint = f" Did you mean `{prefix}{close[0]}`?" if close else ""
      raise ValueError(f"Unknown config field `{path}`.{hint} Known fields of "
                       f"`{prefix or 'config.'}`: {', '.join(sorted(schema.keys()))}.")
    value, default = config[key], schema[key]
    if isinstance(default, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise TypeError(f"Config field `{path}` must be a group of fields, got {value!r}.")
      _check_types(value, default, path + ".")
      continue
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        tuple: lambda v: isinstance(v, (tuple, list)),
    }.get(type(default), lambda v: True)
    if not ok(value):
      raise TypeError(f"Config field `{path}` must be {_type_name(default)} (like {default!r}), "
                      f"got {_type_name(value)} {value!r}.")


# Perturbation sizes, in [0, 1] pixel units (a field whose path ends in one of these).
_RADII = ("epsilon", "step_size", "noise_radius", "init_std")


def _field(config, path: str):
  """The value at dotted `path` of a ConfigDict."""
  for name in path.split("."):
    config = config[name]
  return config


def _flatten(config, prefix: str = ""):
  """(dotted path, value) of every leaf field."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _flatten(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def _check_numbers(config) -> None:
  """Every float is finite; every radius lies in [0, 1], with a hint for pixel units."""
  for path, value in _flatten(config):
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
      if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"Config field `{path}` = {v} is not a finite number.")
    if path.rsplit(".", 1)[-1] in _RADII and isinstance(value, (int, float)) and value > 1:
      hint = (f" It looks like pixel units: did you mean {value:g}/255 = {value / 255:.6f}? "
              f"Pass --config.{path}={value:g}/255." if value <= 255 else "")
      raise ValueError(f"Config field `{path}` = {value:g} is larger than the whole [0, 1] image "
                       f"range: radii and steps are fractions of it.{hint}")


def _choice(path: str, value: Any, choices) -> None:
  if value not in choices:
    raise ValueError(f"Config field `{path}` = {value!r} is not one of: "
                     f"{', '.join(map(str, choices))}.")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Checks names, types and consistency; raises ValueError/TypeError naming the field.

  `num_devices` (the global device count), when given, also checks that batch sizes divide.
  """
  schema = base_config()
  method = methods.get_method(config.method.name)
  schema.method = methods.method_config(config.method.name)
  _check_types(config, schema)
  missing = sorted(set(method.defaults) - set(config.method.keys()))
  if missing:
    raise ValueError(
        f"Config fields {', '.join('`method.' + k + '`' for k in missing)} are missing for method "
        f"{config.method.name!r}. Build `config.method` with "
        f"`methods.method_config({config.method.name!r})` (or start from that method's config "
        "file) rather than only changing `method.name`.")
  for key, choices in method.choices.items():
    if key in config.method:
      _choice(f"method.{key}", config.method[key], choices)
  _check_numbers(config)  # first: a NaN compares False with every bound below
  for key, spec in method.ranges.items():
    low, high, low_open = methods.Range(*spec)
    value = config.method[key]
    if ((low is not None and (value <= low if low_open else value < low))
        or (high is not None and value > high)):
      bound = " and ".join(b for b in (low is not None and f"{'>' if low_open else '>='} {low}",
                                       high is not None and f"<= {high}") if b)
      raise ValueError(f"Config field `method.{key}` must be {bound}, got {value} (the default "
                       f"of method {config.method.name!r}: {method.defaults[key]!r}).")
  _choice("parallel", config.parallel, parallel.KINDS)
  host.check_ynn_fusion_type(config.cpu_ynn_fusion_type)
  _choice("cpu_convolutions", config.cpu_convolutions, cpu.CHOICES)
  cpu.check_min_size(config.cpu_onednn_min_size)
  _choice("data.source", config.data.source, data.SOURCES)
  _choice("data.pad_mode", config.data.pad_mode, data.PAD_MODES)
  _choice("model.dtype", config.model.dtype, tuple(models.DTYPES))
  _choice("eval.dtype", config.eval.dtype, tuple(models.DTYPES))
  _choice("model.normalize", config.model.normalize, ("", *models.NORMALIZATIONS))
  if config.model.robustbench and config.model.robustbench not in robustbench.ENTRIES:
    raise ValueError(f"Config field `model.robustbench` = {config.model.robustbench!r} is no "
                     "'<dataset>/<threat model>/<name>' key of regmix_jax.robustbench.ENTRIES "
                     "(docs/robustbench.md); '' for a model that is none.")
  for group in ("model", "guide_model"):
    model_cfg = config[group]
    _choice(f"{group}.name", model_cfg.name, sorted(models.MODELS))
    for size in ("width", "depth"):
      if model_cfg[size] and size not in models.model_kwargs(model_cfg.name):
        raise ValueError(
            f"Config field `{group}.{size}` = {model_cfg[size]} is not used by model "
            f"{model_cfg.name!r} (it takes: "
            f"{', '.join(models.model_kwargs(model_cfg.name)) or 'no size fields'}); set it to 0.")
  roles = eval_roles(config)
  if not roles or any(r not in method.roles for r in roles):
    raise ValueError(f"Config field `eval.roles` = {config.eval.roles!r}: method "
                     f"{config.method.name!r} trains the roles {', '.join(method.roles)}.")
  _choice("optim.schedule", config.optim.schedule, train_state.SCHEDULES)
  _choice("eval.split", config.eval.split, data.EVAL_SPLITS)
  attacks.parse_attacks(config.eval.attacks)  # raises naming `eval.attacks`
  # eval.epsilon and eval.step_size: a zero radius evaluates nothing adversarial, and
  # `evaluate` scales the step by the ratio of its radius to eval.epsilon.
  positive = ("num_epochs", "data.batch_size", "data.eval_batch_size", "log_every_steps",
              "eval.every_epochs", "checkpoint.max_to_keep", "eval.epsilon", "eval.step_size",
              "cpu_collective_timeout_s", "data.synthetic.num_train", "data.synthetic.num_test",
              "data.synthetic.image_size")
  for path in positive:
    value = _field(config, path)
    if value <= 0:
      raise ValueError(f"Config field `{path}` must be positive, got {value} (its default: "
                       f"{_field(schema, path)!r}).")
  if config.checkpoint.max_to_keep < 2:
    raise ValueError("Config field `checkpoint.max_to_keep` must be at least 2: a damaged latest "
                     "checkpoint is then skipped for the one before it.")
  ranges = {"data.val_size": (config.data.val_size, 0, None),
            "checkpoint.every_steps": (config.checkpoint.every_steps, 0, None),
            "ema.decay": (config.ema.decay, 0.0, 1.0),
            "optim.cyclic_peak_fraction": (config.optim.cyclic_peak_fraction, 0.0, 1.0),
            "optim.base_momentum": (config.optim.base_momentum, 0.0, 1.0),
            "data.rotate_degrees": (config.data.rotate_degrees, 0.0, 180.0),
            "optim.learning_rate": (config.optim.learning_rate, 0.0, None),
            "optim.weight_decay": (config.optim.weight_decay, 0.0, None),
            "optim.momentum": (config.optim.momentum, 0.0, 1.0),
            "optim.gamma": (config.optim.gamma, 0.0, None),
            "optim.grad_clip_norm": (config.optim.grad_clip_norm, 0.0, None),
            "eval.num_examples": (config.eval.num_examples, 0, None),
            "cpu_devices": (config.cpu_devices, 0, None),
            "model.width": (config.model.width, 0, None),
            "model.depth": (config.model.depth, 0, None),
            "guide_model.width": (config.guide_model.width, 0, None),
            "guide_model.depth": (config.guide_model.depth, 0, None),
            "data.synthetic.num_classes": (config.data.synthetic.num_classes, 2, None)}
  for path, (value, low, high) in ranges.items():
    if value < low or (high is not None and value > high):
      bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
      raise ValueError(f"Config field `{path}` must be {bound}, got {value} (its default: "
                       f"{_field(schema, path)!r}).")
  for path in ("optim.milestones", "optim.boundaries", "optim.rates"):
    values = tuple(_field(config, path))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
               for v in values):
      raise ValueError(f"Config field `{path}` must hold numbers >= 0, got {values} (its "
                       f"default: {_field(schema, path)!r}).")
  for path in ("optim.milestones", "optim.boundaries"):
    values = list(config.optim[path.split(".")[1]])
    if values != sorted(values):
      raise ValueError(f"Config field `{path}` must be in increasing order, got {tuple(values)}.")
  if config.checkpoint.keep_best:
    names = [name for name, _ in attacks.parse_attacks(config.eval.attacks)]
    if config.checkpoint.keep_best not in names:
      raise ValueError(f"Config field `checkpoint.keep_best` = {config.checkpoint.keep_best!r} "
                       f"must be one of the evaluated attacks (`eval.attacks`: "
                       f"{', '.join(names)}).")
    if config.eval.split != "val":
      raise ValueError("Config field `checkpoint.keep_best` chooses a model by its evaluation "
                       "and needs `eval.split` = 'val' (with `data.val_size` > 0): choosing on "
                       "the test split would report a test score the choice has seen.")
  if config.eval.split == "val" and config.data.val_size == 0:
    raise ValueError("Config field `eval.split` = 'val' needs a validation split: set "
                     "`data.val_size` > 0 (it is carved from the training set).")
  if config.optim.schedule == "piecewise" and (
      len(config.optim.rates) != len(config.optim.boundaries) + 1):
    raise ValueError("Config fields `optim.rates` and `optim.boundaries`: piecewise needs "
                     f"len(rates) == len(boundaries) + 1, got {len(config.optim.rates)} and "
                     f"{len(config.optim.boundaries)}.")
  if num_devices is not None:
    for path, value in (("data.batch_size", config.data.batch_size),
                        ("data.eval_batch_size", config.data.eval_batch_size)):
      if value % num_devices:
        raise ValueError(f"Config field `{path}` = {value} must be divisible by the number of "
                         f"devices ({num_devices}); on CPU, `cpu_devices` sets that number.")


def renamed_arguments(argv: Sequence[str]) -> list[str]:
  """Command-line arguments with renamed config fields (`RENAMED_FIELDS`) given their new names,
  logging a warning for each; `--config.method.target=agr` -> `--config.method.ce_target=agr`."""
  out = []
  for arg in argv:
    for old, new in RENAMED_FIELDS.items():
      flag = f"--config.{old}"
      if arg == flag or arg.startswith(flag + "="):
        logging.warning("`%s` is now `--config.%s`; using that.", flag, new)
        arg = f"--config.{new}" + arg[len(flag):]
    out.append(arg)
  return out


_FRACTION = re.compile(r"^(--config\.[\w.]+=)([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)/([0-9.]+(?:[eE][-+]?[0-9]+)?)$")


def fraction_arguments(argv: Sequence[str]) -> list[str]:
  """Command-line arguments with a fraction as a config value written as its decimal, so that a
  radius can be given as the papers write it: `--config.method.epsilon=8/255` ->
  `--config.method.epsilon=0.03137254901960784` (absl parses float fields with `float()`). A
  zero denominator raises ValueError naming the argument (absl said "could not convert string
  to float")."""
  out = []
  for arg in argv:
    match = _FRACTION.match(arg)
    if match:
      try:
        arg = f"{match[1]}{float(match[2]) / float(match[3])!r}"
      except ZeroDivisionError:
        raise ValueError(f"{arg}: the fraction divides by zero. Write the radius as the papers "
                         "do, e.g. 8/255.") from None
      except ValueError:
        pass
    out.append(arg)
  return out


def check_override_paths(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Raises ValueError naming the first `--config.<path>=...` override whose path `config` does
  not have, with the closest existing name (a mistyped group such as `optimizer` for `optim`)."""
  for arg in overrides:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    node, walked = config, []
    for name in path.split("."):
      if not isinstance(node, ml_collections.ConfigDict):
        break
      if name not in node:
        where = ".".join(walked)
        known = sorted(node.keys())
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f" Did you mean `{'.'.join(walked + close)}`?" if close else ""
        raise ValueError(f"Unknown config field `{'.'.join(walked + [name])}` (in {arg}).{hint} "
                         f"Known fields of `{where or 'config'}`: {', '.join(known)}.")
      node = node[name]
      walked.append(name)


def from_command_line(config_file: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config `python -m regmix_jax.main --config=<config_file> <overrides>` would train, e.g.
  `from_command_line("configs/cifar10/fgsm_pgk.py", ["--config.num_epochs=5"])`: the file's
  `get_config()` with the `--config.<field>=<value>` overrides applied (and renamed fields
  renamed), parsed exactly as the command line parses them. Not validated (`validate`)."""
  if not os.path.isfile(config_file):
    raise FileNotFoundError(f"No config file {config_file!r}.")
  argv = ["from_command_line", f"--config={config_file}", *renamed_arguments(list(overrides))]
  flag_values = flags.FlagValues()
  # The override flags (`--config.<field>`) are found in `sys_argv` when the flag is defined.
  config_flags.DEFINE_config_file("config", config_file, flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config
