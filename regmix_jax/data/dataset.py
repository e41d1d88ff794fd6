"""In-memory dataset containers."""

from __future__ import annotations

import dataclasses

import numpy as np


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
