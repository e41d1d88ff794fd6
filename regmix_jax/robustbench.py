"""RobustBench's CIFAR-10 / CIFAR-100 leaderboard entries whose architectures regmix_jax has:
which model each is, and what the leaderboard reports for it.

`ENTRIES` maps "<dataset>/<threat model>/<name>" (e.g. "cifar10/Linf/Gowal2020Uncovering_70_16")
to an `Entry`, generated from RobustBench's own code and model cards by
experiments/robustbench/make_table.py (`robustbench_table.COMMIT`; docs/robustbench.md lists
them). `find` looks a name up as `robustbench.utils.load_model(name, dataset=, threat_model=)`
does (CIFAR-10, L-inf by default); `state_dict` reads a checkpoint the user downloaded as
`load_model` reads it. `python -m regmix_jax.convert --robustbench=NAME --checkpoint=NAME.pt
--workdir=DIR` turns it into a run directory that `python -m regmix_jax.evaluate` evaluates,
printing the leaderboard's figures beside ours. Nothing here downloads.
"""

from __future__ import annotations

import dataclasses
import difflib
import fractions
from typing import Any, Mapping

import numpy as np

from regmix_jax import robustbench_table
from regmix_jax.models import NORMALIZATIONS
from regmix_jax.models import torch_weights

DATASETS = ("cifar10", "cifar100")
THREAT_MODELS = ("Linf", "L2")
# Buffers some RobustBench models keep in their state_dict (`register_buffer('mu', ...)`): the
# normalisation, which the model's `normalize` already applies.
_NORMALIZATION_BUFFERS = (("mu", "sigma"), ("mean", "std"))


@dataclasses.dataclass(frozen=True)
class Entry:
  """One leaderboard entry: our model for it and the leaderboard's figures.

  model / sizes / normalize / num_classes: `models.get_model`'s arguments that build it.
  wrapper: the key `load_model` takes the weights from before the state_dict ("last"), or "".
  epsilon: the radius as its model card writes it ("8/255", "0.5", "0.031"); `radius` its value.
  clean / autoattack: the leaderboard's accuracies, in percent, on the full test set (10,000).
  """
  name: str
  dataset: str
  threat_model: str
  model: str
  sizes: tuple[tuple[str, int], ...]
  normalize: str
  num_classes: int
  wrapper: str
  epsilon: str
  clean: float
  autoattack: float
  architecture: str
  paper: str
  extra_data: bool

  @property
  def key(self) -> str:
    return f"{self.dataset}/{self.threat_model}/{self.name}"

  @property
  def radius(self) -> float:
    return float(fractions.Fraction(self.epsilon))

  def describe(self) -> str:
    return (f"RobustBench {self.key} ({self.architecture}): leaderboard clean "
            f"{self.clean:.2f}%, AutoAttack {self.autoattack:.2f}% ({self.threat_model} eps "
            f"{self.epsilon}, the full test set)")


def _entry(fields: Mapping[str, Any]) -> Entry:
  return Entry(**{**fields, "sizes": tuple(sorted(fields["sizes"].items()))})


ENTRIES: dict[str, Entry] = {k: _entry(v) for k, v in robustbench_table.ENTRIES.items()}
NOT_COVERED = tuple(robustbench_table.NOT_COVERED)


def find(name: str, dataset: str = "cifar10", threat_model: str = "Linf") -> Entry:
  """The entry `name` of `dataset` and `threat_model` (RobustBench's `load_model` defaults), or
  a full key "cifar100/Linf/NAME". ValueError naming where else the name is, whether it is an
  entry we do not cover, or the closest names."""
  if name.count("/") == 2:
    dataset, threat_model, name = name.split("/")
  if dataset not in DATASETS or threat_model not in THREAT_MODELS:
    raise ValueError(f"RobustBench dataset must be one of {DATASETS} and threat model one of "
                     f"{THREAT_MODELS}, got {dataset!r} and {threat_model!r}.")
  key = f"{dataset}/{threat_model}/{name}"
  if key in ENTRIES:
    return ENTRIES[key]
  elsewhere = [k for k, e in ENTRIES.items() if e.name == name]
  if elsewhere:
    flags = [f"--dataset={k.split('/')[0]} --threat_model={k.split('/')[1]}" for k in elsewhere]
    raise ValueError(f"{name!r} is no {dataset} {threat_model} entry; it is "
                     f"{' and '.join(elsewhere)}: pass {' or '.join(flags)}.")
  if (dataset, threat_model, name) in NOT_COVERED:
    raise ValueError(f"{key} is a RobustBench entry whose architecture regmix_jax does not "
                     "have (yet); docs/robustbench.md lists the entries it covers.")
  close = difflib.get_close_matches(name, sorted({e.name for e in ENTRIES.values()}), n=5)
  raise ValueError(f"No RobustBench entry {name!r} among the {len(ENTRIES)} regmix_jax covers"
                   f"{'; close: ' + ', '.join(close) if close else ''} (docs/robustbench.md).")


def state_dict(entry: Entry, checkpoint: Any) -> dict[str, np.ndarray]:
  """The model's state_dict, {name: numpy array}, from a checkpoint as
  `torch_weights.read_checkpoint` returns it, unwrapped as `robustbench.utils.load_model`
  does (RobustBench@78fcc9e robustbench/utils.py:156-209): `checkpoint['last']` for the entries
  that need it, then `checkpoint['state_dict']` when present, then the "module." (DataParallel)
  and "model." prefixes removed. Normalisation buffers (`mu` / `sigma`) the checkpoint carries
  must equal the entry's `normalize` (the model applies that; a checkpoint with other values
  would be a different model): ValueError otherwise."""
  if entry.wrapper:
    if not isinstance(checkpoint, Mapping) or entry.wrapper not in checkpoint:
      raise ValueError(f"{entry.key}: RobustBench reads this entry's weights from "
                       f"checkpoint[{entry.wrapper!r}], which this file does not have; is it "
                       f"the file RobustBench downloads for {entry.name}?")
    checkpoint = checkpoint[entry.wrapper]
  if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
    checkpoint = checkpoint["state_dict"]
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f"Expected a state_dict (names to tensors), got {type(checkpoint).__name__}.")
  out = {}
  for name, value in checkpoint.items():
    if not hasattr(value, "shape"):
      continue  # e.g. an epoch counter beside the tensors
    for prefix in ("module.", "model."):
      name = name[len(prefix):] if name.startswith(prefix) else name
    out[name] = torch_weights.as_numpy(value)
  _check_normalization(entry, out)
  return out


def _check_normalization(entry: Entry, state: dict[str, np.ndarray]) -> None:
  """Removes the normalisation buffers from `state` after checking them against the entry's."""
  mean, std = NORMALIZATIONS.get(entry.normalize, ((0.0,) * 3, (1.0,) * 3))
  for mean_key, std_key in _NORMALIZATION_BUFFERS:
    if mean_key not in state and std_key not in state:
      continue
    for key, want in ((mean_key, mean), (std_key, std)):
      got = np.asarray(state.pop(key, want), np.float32).reshape(-1)
      if got.shape != (3,) or not np.allclose(got, np.float32(want), rtol=0, atol=1e-7):
        raise ValueError(f"{entry.key}: the checkpoint's normalisation buffer {key!r} is "
                         f"{got.tolist()}, the model's ({entry.normalize or 'none'}) "
                         f"{list(want)}: a different model than RobustBench's {entry.name}.")


def load(entry: Entry, path: str) -> tuple[dict, dict]:
  """`(params, batch_stats)` of the entry's model from the checkpoint file `path` (the file
  RobustBench's `load_model` downloads: `<name>.pt`; `.safetensors` / `.npz` also read).
  ValueError when it does not fit, naming the entries of the same name (other datasets or
  threat models: RobustBench reuses names) whose model it does fit."""
  checkpoint = torch_weights.read_checkpoint(path)
  try:
    state = state_dict(entry, checkpoint)
    return torch_weights.from_torch(state, entry.model, entry.num_classes, **dict(entry.sizes))
  except ValueError as e:
    mismatch = str(e).split("\nPick the --model", 1)[0]  # that hint is for --model's users
    fits = [other for other in ENTRIES.values()
            if other.name == entry.name and other.key != entry.key and _fits(other, checkpoint)]
    if fits:
      flags = " or ".join(f"--dataset={o.dataset} --threat_model={o.threat_model}" for o in fits)
      raise ValueError(
          f"{path} is not {entry.key}'s checkpoint ({entry.architecture}): it fits "
          f"{' and '.join(f'{o.key} ({o.architecture})' for o in fits)}, the same name in "
          f"another {'dataset' if fits[0].dataset != entry.dataset else 'threat model'}: pass "
          f"{flags}, as RobustBench's load_model takes them.") from None
    raise ValueError(f"{path} is not RobustBench's checkpoint for {entry.key} "
                     f"({entry.architecture}): {mismatch}") from None


def _fits(entry: Entry, checkpoint: Any) -> bool:
  """Whether `checkpoint` holds exactly the variables of `entry`'s model."""
  try:
    torch_weights.from_torch(state_dict(entry, checkpoint), entry.model, entry.num_classes,
                             **dict(entry.sizes))
  except ValueError:
    return False
  return True
