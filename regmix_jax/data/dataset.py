"""In-memory dataset containers."""

from __future__ import annotations

import dataclasses

import numpy as np

# The splits an evaluation can read (`config.eval.split`): the test set, or the validation split
# carved from the training set (`config.data.val_size`).
EVAL_SPLITS = ("test", "val")


@dataclasses.dataclass(frozen=True)
class Split:
  x: np.ndarray  # uint8 [N, H, W, C]
  y: np.ndarray  # int32 [N]


@dataclasses.dataclass(frozen=True)
class Dataset:
  train: Split
  val: Split | None
  test: Split
  num_classes: int
  name: str

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train.x.shape[1:])

  def eval_split(self, name: str) -> Split:
    """The split `name` in EVAL_SPLITS; ValueError naming `eval.split` when there is none."""
    if name not in EVAL_SPLITS:
      raise ValueError(f"Config field `eval.split` = {name!r} is not one of: "
                       f"{', '.join(EVAL_SPLITS)}.")
    split = self.test if name == "test" else self.val
    if split is None:
      raise ValueError("Config field `eval.split` = 'val' needs a validation split: set "
                       "`data.val_size` > 0 (it is carved from the training set).")
    return split
