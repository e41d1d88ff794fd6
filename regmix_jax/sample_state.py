"""Per-example training state kept on the host, keyed by dataset index (FGSM-PGK's buffers).

Some methods carry state from one visit of an example to the next: FGSM-PGK keeps, for every
training image, a prior perturbation and a momentum of the image's shape. That state lives here,
in host memory, as numpy arrays; the train loop gathers the rows of a batch into
`batch["sample"]`, the train step returns their new values, and the loop scatters them back.

Layout. Training data is split into `num_shards` fixed shards (one per global device, see
`data.TrainLoader`): example `i` belongs to shard `i % S`, at position `i // S`. A process holds
rows only for its own shards (`shard_ids`), each shard padded to `L = ceil(N / S)` rows, so row of
example `i` is `local_shard_position(i % S) * L + i // S`. Under several processes each one
therefore keeps only its own examples. For checkpoints the rows become one global `jax.Array`
`[S * L, ...]` sharded over the devices (`to_global`), which Orbax saves and restores across
processes like any other sharded array.

Memory: each buffer costs `N * H * W * C * 4` bytes in float32: CIFAR-10 (50000 x 32x32x3)
614 MB, so FGSM-PGK's two buffers take 1.23 GB; Tiny ImageNet (100000 x 64x64x3) 4.9 GB each,
9.8 GB for both; divided by the number of processes. A checkpoint save briefly holds one more copy
(on the accelerator when there is one).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class SampleStateSpec:
  """What a method keeps per example.

  names: the buffers, each shaped like one image `[H, W, C]`, float32.
  reset_due: `(method_cfg, epoch) -> bool`: whether every buffer is re-initialised at the start of
    `epoch` (always true at epoch 0).
  initial: `(method_cfg, rng: np.random.Generator, shape) -> {name: array of shape}`: the values
    after a reset, for the rows of one shard (`shape = [rows, H, W, C]`).
  """

  names: tuple[str, ...]
  reset_due: Callable[[Mapping[str, Any], int], bool]
  initial: Callable[[Mapping[str, Any], np.random.Generator, tuple[int, ...]],
                    dict[str, np.ndarray]]


class SampleState:
  """This process's rows of every per-example buffer (see the module docstring for the layout)."""

  def __init__(self, spec: SampleStateSpec, *, num_examples: int, image_shape: Sequence[int],
               num_shards: int, shard_ids: Sequence[int]):
    self.spec = spec
    self.num_examples = num_examples
    self.num_shards = num_shards
    self.shard_ids = list(shard_ids)
    self.rows_per_shard = -(-num_examples // num_shards)
    self.image_shape = tuple(image_shape)
    self._shard_position = np.full((num_shards,), -1, np.int64)
    self._shard_position[self.shard_ids] = np.arange(len(self.shard_ids))
    shape = (len(self.shard_ids) * self.rows_per_shard, *self.image_shape)
    self.arrays = {name: np.zeros(shape, np.float32) for name in spec.names}

  def rows(self, index: np.ndarray) -> np.ndarray:
    """Local rows of dataset indices `index [B]`; raises if one is not this process's."""
    index = np.asarray(index, np.int64)
    position = self._shard_position[index % self.num_shards]
    if (position < 0).any() or (index < 0).any() or (index >= self.num_examples).any():
      raise IndexError(f"Examples {index[(position < 0) | (index < 0)][:5]} are not held by this "
                       f"process (shards {self.shard_ids} of {self.num_shards}).")
    return position * self.rows_per_shard + index // self.num_shards

  def gather(self, index: np.ndarray) -> dict[str, np.ndarray]:
    """`{name: [B, H, W, C]}`: the buffers of examples `index [B]` (copies)."""
    rows = self.rows(index)
    return {name: array[rows] for name, array in self.arrays.items()}

  def scatter(self, index: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
    """Writes `values {name: [B, H, W, C]}` into the rows of examples `index [B]`."""
    rows = self.rows(index)
    for name in self.spec.names:
      self.arrays[name][rows] = np.asarray(values[name], np.float32)

  def maybe_reset(self, cfg: Mapping[str, Any], epoch: int, seed: int) -> bool:
    """Re-initialises every buffer if `spec.reset_due(cfg, epoch)`; returns whether it did.

    Shard `d`'s values come from `np.random.default_rng([seed, epoch, d, 1])` (the data order
    uses `[seed, epoch, d]`): the same whichever process holds the shard."""
    if not self.spec.reset_due(cfg, epoch):
      return False
    L = self.rows_per_shard
    for position, shard in enumerate(self.shard_ids):
      generator = np.random.default_rng([seed, epoch, shard, 1])
      values = self.spec.initial(cfg, generator, (L, *self.image_shape))
      for name in self.spec.names:
        self.arrays[name][position * L:(position + 1) * L] = values[name]
    return True

  # Checkpointing: the rows of all processes as global arrays sharded over the devices.

  def _global_shape(self) -> tuple[int, ...]:
    return (self.num_shards * self.rows_per_shard, *self.image_shape)

  def to_global(self, mesh) -> dict[str, jax.Array]:
    """`{name: jax.Array [S * L, ...]}` sharded along the mesh's axis (shard d on device d).
    The arrays are copies: later scatters do not change them."""
    sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
    return {name: jax.make_array_from_process_local_data(sharding, np.array(array),
                                                         self._global_shape())
            for name, array in self.arrays.items()}

  def abstract_global(self, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The restore target matching `to_global`."""
    sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
    return {name: jax.ShapeDtypeStruct(self._global_shape(), np.float32, sharding=sharding)
            for name in self.spec.names}

  def load_global(self, arrays: Mapping[str, jax.Array]) -> None:
    """Inverse of `to_global`: keeps this process's rows of restored global arrays."""
    for name in self.spec.names:
      shards = sorted(arrays[name].addressable_shards, key=lambda s: s.index[0].start or 0)
      self.arrays[name] = np.concatenate([np.asarray(s.data) for s in shards]).astype(np.float32)
