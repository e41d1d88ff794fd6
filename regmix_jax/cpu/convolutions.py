"""Which convolutions a CPU run uses, as a value: chosen once from the top (`choose`, from
`config.cpu_convolutions`) and handed to the models (`Convolutions.conv`) or wrapped around a
user's function (`Convolutions.accelerate`, `accelerate`)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
from absl import logging

from regmix_jax.cpu import fast_conv, onednn, rewrite

# `config.cpu_convolutions`: "auto" (oneDNN's where `onednn.auto_choice` picks it, XLA's
# elsewhere), "xla" (XLA:CPU's kernels with `fast_conv`'s gradient rules), "onednn" (oneDNN's
# where `onednn.supports` them, the rest as "xla"), "plain" (lax's convolution as it is).
CHOICES = ("auto", "xla", "onednn", "plain")
_NAMES = {"plain": "lax's, unchanged", "xla": "XLA's", "onednn": "oneDNN's"}


@dataclasses.dataclass(frozen=True)
class Convolutions:
  """What runs convolutions: `name` "plain", "xla" or "onednn" (what `choose` resolved), and the
  `reason` a run's output gives. `onednn_min_size`: the narrowest input map routed to oneDNN (0:
  this CPU's measured default, `onednn.default_min_size`).
  `onednn_threads`: OpenMP threads per oneDNN call, 0 for the cores shared among the host devices
  (right for a step mapped over all of them; `on_one_device` for work on one of several).
  `onednn_pack`: kernels packed for loops that reuse them (`for_attacks`)."""

  name: str
  reason: str = ""
  onednn_min_size: int = 0
  onednn_threads: int = 0
  onednn_pack: bool = False

  def __post_init__(self):
    if self.name not in _NAMES:
      raise ValueError(f"Convolutions name must be one of {', '.join(_NAMES)}, got "
                       f"{self.name!r}.")

  @property
  def conv(self) -> Callable | None:
    """A `conv_general_dilated` for a model (`models.build_models(..., conv=...)`), or None for
    "plain" (the model keeps lax's)."""
    if self.name == "plain":
      return None
    return fast_conv.FastConv(onednn=self.name == "onednn",
                              onednn_min_size=self.onednn_min_size,
                              onednn_threads=self.onednn_threads,
                              onednn_pack=self.onednn_pack)

  def on_one_device(self) -> "Convolutions":
    """These convolutions for a computation that runs on one host device of several while the
    others wait (AutoAttack's batches on CPU, `run_autoattack(devices=None)`): each oneDNN call
    may use every core; with the per-device count the waiting devices' cores stay idle
    (docs/performance.md, "One device, every core")."""
    return dataclasses.replace(self, onednn_threads=onednn.host_cores())

  def for_attacks(self) -> "Convolutions":
    """These convolutions for attacks, whose iterations apply the same weights again and again:
    each oneDNN kernel is reordered to oneDNN's layout once per call of the jitted attack, not in
    every iteration. Not for single passes or training steps, which it slows (figures:
    docs/performance.md, "Packed kernels for attack loops")."""
    return dataclasses.replace(self, onednn_pack=True)

  def accelerate(self, fn: Callable) -> Callable:
    """`fn` (e.g. a `logits_fn` of a model the library did not build) with its convolutions
    run as chosen: the same values up to float rounding. "plain" returns `fn` itself."""
    conv = self.conv
    return fn if conv is None else rewrite.replace_convolutions(fn, conv.bind)

  def describe(self) -> str:
    """A line for a run's output: what runs the CPU convolutions, and why."""
    where = ""
    if self.name == "onednn":
      size = onednn.resolve_min_size(self.onednn_min_size)
      where = (" for every map" if size <= 1 else f" for input maps at least {size} wide"
               ", XLA's for the rest")
    return f"Convolutions on CPU: {_NAMES[self.name]}{where} ({self.reason})."


def choose(setting: str = "auto", backend: str | None = None,
           onednn_min_size: int = 0) -> Convolutions:
  """`config.cpu_convolutions` (and `config.cpu_onednn_min_size`, 0: this CPU's default) -> the
  `Convolutions` to use on `backend` (default: JAX's default
  backend, so call it after the host devices are configured). Off CPU always "plain": on GPU and
  TPU nothing of this package is traced. "auto" resolves by `onednn.auto_choice`; "onednn"
  where oneDNN cannot be built or loaded warns with the cause and runs "xla" (a run trained
  elsewhere still resumes and evaluates here). ValueError for a setting not in CHOICES."""
  if setting not in CHOICES:
    raise ValueError(f"Config field `cpu_convolutions`: {setting!r} is not one of "
                     f"{', '.join(CHOICES)}.")
  check_min_size(onednn_min_size)
  backend = backend or jax.default_backend()
  why = f'cpu_convolutions="{setting}"'
  if backend != "cpu":
    return Convolutions("plain", f"the backend is {backend}; the CPU rules apply on CPU only")
  if setting == "auto":
    name, reason = onednn.auto_choice()
    return Convolutions(name, f"{why}: {reason}", onednn_min_size)
  if setting == "onednn":
    try:
      onednn.load()
    except onednn.OnednnUnavailable as e:
      logging.warning('cpu_convolutions="onednn", but oneDNN is unavailable here, so XLA\'s '
                      'convolutions run (the same values up to float rounding): %s', e)
      return Convolutions("xla", f"{why}, but oneDNN is unavailable here")
  return Convolutions(setting, why, onednn_min_size)


def convolutions_for(config) -> Convolutions:
  """`choose` for a run's config: its `cpu_convolutions` and `cpu_onednn_min_size`."""
  return choose(config.cpu_convolutions, onednn_min_size=config.cpu_onednn_min_size)


def check_min_size(value) -> None:
  """ValueError unless `value` is a valid `config.cpu_onednn_min_size` (an integer >= 0)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f"Config field `cpu_onednn_min_size` must be an integer >= 0 (the narrowest "
                     f"input map, in pixels, sent to oneDNN; 0 for this CPU's measured default, "
                     f"{onednn.default_min_size()}), got {value!r}.")


def accelerate(fn: Callable, convolutions: str | Convolutions = "auto") -> Callable:
  """`fn` with its convolutions run by `choose(convolutions)` (or the given `Convolutions`): the
  one line that gives a user's `logits_fn` the speed the library's commands have on CPU, e.g.
  `run_autoattack(regmix_jax.cpu.accelerate(logits_fn), ...)`. Off CPU it returns `fn`. The
  result re-traces `fn` at each call: call it under `jax.jit` (as the attacks do) or jit it."""
  if not isinstance(convolutions, Convolutions):
    convolutions = choose(convolutions)
  return convolutions.accelerate(fn)
