"""Data parallelism: one per-device function, mapped with `jax.pmap` or `jax.jit(jax.shard_map)`.

`DataParallel(kind)` places a replicated state and a per-process batch on devices in the layout
its mapping wants, and maps a per-device `fn(state, batch, *, axis_name)`: the state replicated,
the batch split along its first axis over every device of every process, the outputs replicated
(gradients and metrics are averaged inside `fn`).
  pmap:      state and batch carry a leading local-device axis `[L, ...]`.
  shard_map: global `jax.Array`s on a 1-D mesh over all devices; state replicated (`P()`), batch
             sharded along `P("batch")`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"
# How the per-device step is mapped (`config.parallel`).
KINDS = ("pmap", "shard_map")


class DataParallel:
  """Places data and maps per-device functions for one parallel `kind` ("pmap" | "shard_map")."""

  def __init__(self, kind: str = "pmap", devices=None):
    if kind not in KINDS:
      raise ValueError(f"Config field `parallel` = {kind!r} is not one of: {', '.join(KINDS)}.")
    self.kind = kind
    self.devices = list(devices or jax.devices())
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    self._local_mesh = Mesh(np.array(self.local_devices), (AXIS,))

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  @property
  def shard_ids(self) -> list[int]:
    """Global positions of this process's devices: the data shards this process reads."""
    return [self.devices.index(d) for d in self.local_devices]

  def map(self, fn: Callable[..., Any], *, donate_state: bool = True,
          batch_outputs: tuple[bool, ...] | None = None,
          per_device_outputs: bool = False) -> Callable[..., Any]:
    """Maps `fn(state, batch, *, axis_name)`: returns `mapped(state, batch) -> outputs`.

    `batch_outputs`: for an `fn` returning a tuple, which outputs are per-example (split along
    the batch like the input; fetch them with `get_batch`) rather than replicated. Default: all
    replicated. `per_device_outputs`: every output is a per-device value with a leading axis of
    1 (e.g. counts `fn` does not `psum`); sum them with `host_sum`.
    """
    per_device = functools.partial(fn, axis_name=AXIS)
    donate = (0,) if donate_state else ()
    if self.kind == "pmap":
      # All devices of all processes (pmap maps over the global device list; each process passes
      # its local devices' shares).
      return jax.pmap(per_device, axis_name=AXIS, devices=self.devices, donate_argnums=donate)
    # check_vma=False keeps pmap's semantics: the gradient of replicated parameters is a
    # per-device value that `fn` averages with an explicit `pmean`. (With check_vma=True JAX
    # would already sum it over devices when differentiating, and the explicit pmean would then
    # leave it summed rather than averaged.)
    out_specs = P() if batch_outputs is None else tuple(
        P(AXIS) if split else P() for split in batch_outputs)
    if per_device_outputs:
      out_specs = P(AXIS)
    mapped = jax.shard_map(per_device, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                           out_specs=out_specs, check_vma=False)
    return jax.jit(mapped, donate_argnums=donate)

  def put_state(self, state):
    """A host (or single-device) pytree -> replicated on every device."""
    if self.kind == "pmap":
      n = len(self.local_devices)
      sharding = NamedSharding(self._local_mesh, P(AXIS))
      return jax.tree.map(
          lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n, *np.shape(x))), sharding),
          state)
    return jax.device_put(state, NamedSharding(self.mesh, P()))

  def unreplicate(self, tree):
    """Inverse of `put_state`: one copy (the first local device's under pmap), on that device.

    Under pmap it reads the first local device's shard of each leaf. It does not index the
    global array (`x[0]`): on a `[n, ...]` array sharded over n devices that is an n-device
    program ending in an all-reduce, one per leaf, and on host CPU devices each such collective
    is a rendezvous that aborts the process if a device waits at it for 40 s."""
    if self.kind == "pmap":
      def first(x):
        if isinstance(x, jax.Array):
          return x.addressable_data(0).reshape(x.shape[1:])
        return x[0]
      return jax.tree.map(first, tree)
    return tree

  def put_batch(self, batch):
    """This process's batch (a pytree of `[L * b, ...]` arrays: its local devices' shards, in
    order) -> devices."""
    if self.kind == "pmap":
      n = len(self.local_devices)
      sharding = NamedSharding(self._local_mesh, P(AXIS))
      return jax.tree.map(
          lambda v: jax.device_put(v.reshape(n, v.shape[0] // n, *v.shape[1:]), sharding), batch)
    sharding = NamedSharding(self.mesh, P(AXIS))
    return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, v), batch)

  def host_sum(self, tree):
    """Sums the per-device scalar outputs of a `per_device_outputs` map over every device of
    every process, on the host: numpy scalars. It waits for this process's devices before the
    cross-process step, so devices never wait for each other inside a collective (on CPU a
    device kept waiting over 40 s aborts the process)."""
    def local(array):
      if isinstance(array, jax.Array):
        return sum(np.asarray(s.data, np.float64).sum() for s in array.addressable_shards)
      return np.asarray(array, np.float64).sum()
    sums = jax.tree.map(local, jax.block_until_ready(tree))
    if jax.process_count() > 1:
      sums = jax.tree.map(lambda v: np.asarray(v).sum(), multihost_utils.process_allgather(sums))
    return sums

  def get_batch(self, tree):
    """Inverse of `put_batch` for per-example outputs (`batch_outputs` of `map`): this
    process's rows `[L * b, ...]` as numpy, in the order `put_batch` took them."""
    if self.kind == "pmap":
      fetched = jax.device_get(tree)
      return jax.tree.map(lambda v: v.reshape(v.shape[0] * v.shape[1], *v.shape[2:]), fetched)

    def local(array):
      shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
      return np.concatenate([np.asarray(s.data) for s in shards])
    return jax.tree.map(local, tree)
