"""Host-side batching (numpy only): sharded, resumable training epochs and padded eval batches.

Data parallelism: shard `d` of `num_shards` (one per global device) owns the training examples
`arange(d, N, num_shards)`. A process reads only its own devices' shards, so processes never
exchange data, and the global batch of a step does not depend on how devices are spread over
processes. Every batch is a dict: "image" uint8 `[B, H, W, C]`, "label" int32 `[B]`, "index" int32
`[B]` (position in the Split; -1 for padding) and "mask" bool `[B]` (False for padding).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from regmix_jax.data.sources import Split


def epoch_order(seed: int, epoch: int, shard: int, indices: np.ndarray) -> np.ndarray:
  """The order in which shard `shard` visits `indices` in epoch `epoch`: a pure function of its
  arguments (no hidden state), so a resumed run sees the same batches."""
  return np.random.default_rng([seed, epoch, shard]).permutation(np.asarray(indices))


def _batch(split: Split, index: np.ndarray,
           mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
  index = index.astype(np.int32)
  if mask is None:
    return {"image": split.x[index], "label": split.y[index].astype(np.int32), "index": index,
            "mask": np.ones(index.shape, bool)}
  safe = np.where(mask, index, 0)
  image = split.x[safe]
  image[~mask] = 0
  return {"image": image, "label": np.where(mask, split.y[safe], 0).astype(np.int32),
          "index": np.where(mask, index, -1).astype(np.int32), "mask": mask}


class TrainLoader:
  """Shuffled training batches for this process's shards; drops each shard's remainder."""

  def __init__(self, split: Split, *, batch_size: int, num_shards: int, shard_ids: Sequence[int],
               seed: int):
    if batch_size % num_shards:
      raise ValueError(f"Config field `data.batch_size` = {batch_size} must be divisible by the "
                       f"number of devices ({num_shards}).")
    bad = [d for d in shard_ids if not 0 <= d < num_shards]
    if bad or not shard_ids:
      raise ValueError(f"shard_ids {list(shard_ids)} must be a non-empty subset of "
                       f"range({num_shards}).")
    self.split = split
    self.seed = seed
    self.num_shards = num_shards
    self.shard_ids = list(shard_ids)
    self.per_shard = batch_size // num_shards
    n = len(split.y)
    # The shortest shard (the same on every process) fixes the epoch length.
    self.steps_per_epoch = (n // num_shards) // self.per_shard
    self._shards = {d: np.arange(d, n, num_shards) for d in self.shard_ids}

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Batches of epoch `epoch` from step `start_step` on (same as the uninterrupted epoch)."""
    steps, b = self.steps_per_epoch, self.per_shard
    # order[s] = concatenation over shard_ids of perm_d[s*b:(s+1)*b].
    order = np.concatenate(
        [epoch_order(self.seed, epoch, d, self._shards[d])[:steps * b].reshape(steps, b)
         for d in self.shard_ids], axis=1)
    for s in range(start_step, steps):
      yield _batch(self.split, order[s])


def eval_batch_size(n: int, batch_size: int, multiple: int) -> int:
  """The global batch for evaluating `n` examples: `batch_size` (data.eval_batch_size), or fewer
  when `n` needs less, rounded up to `multiple` (the device count). Every batch is padded to it
  and a padding row costs what a real one does: 20 examples in a batch of 500 would cost 500."""
  return min(batch_size, max(-(-n // multiple), 1) * multiple)


def num_eval_batches(n: int, batch_size: int) -> int:
  """Number of (padded) global batches covering `n` examples."""
  return -(-n // batch_size)


def eval_batches(split: Split, *, batch_size: int, process_index: int = 0,
                 process_count: int = 1, num_examples: int = 0,
                 indices: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Every example of `split` (its first `num_examples` if > 0; or the examples `indices`, in
  that order) once, in global batches of `batch_size` padded at the end; process p yields rows
  `[p*B/P, (p+1)*B/P)` of each batch. All batches have the same shape; padding rows have mask
  False, label 0, index -1, image 0."""
  if batch_size % process_count:
    raise ValueError(f"Config field `data.eval_batch_size` = {batch_size} must be divisible by "
                     f"the number of processes ({process_count}).")
  if indices is None:
    n = len(split.y) if num_examples <= 0 else min(num_examples, len(split.y))
    indices = np.arange(n)
  indices = np.asarray(indices)
  local = batch_size // process_count
  for i in range(num_eval_batches(len(indices), batch_size)):
    position = i * batch_size + process_index * local + np.arange(local)
    real = position < len(indices)
    yield _batch(split, indices[np.minimum(position, len(indices) - 1)], real)
