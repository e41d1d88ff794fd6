"""The per-device train step, the same for every method.

`train_step(state, batch, key, *, method, axis_name)` is a pure per-device function. With
`axis_name=None` it is a single-device step (wrap it in `jax.jit`); with an axis name it averages
gradients, batch statistics and metrics over that axis, so it runs under `jax.pmap` and under
`jax.jit(jax.shard_map(...))` alike (see `parallel.py`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from regmix_jax import data, rng
from regmix_jax.methods.base import LossOutput
from regmix_jax.train_state import TrainState, ema_decay_with_warmup, ema_update


def bind_method(loss: Callable[..., LossOutput], models: Mapping[str, Any],
                cfg: Mapping[str, Any]) -> Callable[..., LossOutput]:
  """Closes a method's loss over its models and (plain dict) config."""
  return functools.partial(loss, models=models, cfg=dict(cfg))


def _pmean(tree, axis_name):
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    key: jax.Array | None = None,
    *,
    method: Callable[..., LossOutput],
    axis_name: str | None = None,
    augment: bool = True,
    ema_decay: float = 0.999,
) -> tuple[TrainState, dict[str, jax.Array], dict[str, jax.Array]]:
  """One optimiser step on this device's share of the batch.

  Args:
    state: the TrainState (replicated across devices).
    batch: this device's examples: "image" uint8 `[B, H, W, C]`, "label" int `[B]`, "index" int
      `[B]` (dataset index), "mask" bool `[B]`; for methods with per-example state, "sample"
      `{name: [B, ...]}` (gathered from `sample_state.SampleState`).
    key: root key; default `state.rng`. The step takes its `rng.TRAIN` stream, folds in
      `state.step`, then each example's dataset index (`rng.example_keys`): draws are independent
      of the device layout.
    method: a bound method loss (`bind_method`).
    axis_name: the data-parallel axis, or None on a single device.
    augment: pad-4 random crop and horizontal flip (on device).
    ema_decay: EMA base decay when the method gives none (ignored when EMA is off).

  Returns:
    `(new_state, metrics, sample_state)`: metrics are means over the global batch plus
    "learning_rate"; `sample_state` is the method's new per-example state `{name: [B, ...]}` for
    this device's examples, to scatter back on the host (`{}` for methods without one).
  """
  key = rng.stream(state.rng if key is None else key, rng.TRAIN)
  keys = rng.example_keys(jax.random.fold_in(key, state.step), batch["index"])
  aug_keys, loss_keys = rng.split_keys(keys, 2)
  images = batch["image"].astype(jnp.float32) / 255.0
  if augment:
    images = data.augment(images, aug_keys)
  batch = {**batch, "image": images}

  def objective(params):
    out = method(params, state.batch_stats, batch, loss_keys, axis_name=axis_name)
    return out.loss, out

  grads, out = jax.grad(objective, has_aux=True)(state.params)
  grads = _pmean(grads, axis_name)
  batch_stats = _pmean(out.batch_stats, axis_name)
  metrics = _pmean(dict(out.metrics), axis_name)

  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params, ema_stats = state.ema_params, state.ema_batch_stats
  if ema_params is not None:
    base = ema_decay if out.ema_decay is None else _pmean(out.ema_decay, axis_name)
    decay = ema_decay_with_warmup(base, state.step)
    ema_params = ema_update(ema_params, params, decay)
    ema_stats = ema_update(ema_stats, batch_stats, decay)
    metrics["ema_decay"] = decay
  metrics["learning_rate"] = state.learning_rate_fn(state.step)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, ema_params=ema_params,
                            ema_batch_stats=ema_stats)
  return new_state, metrics, dict(out.sample_state or {})
