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
  """Closes a method's loss (or its `post_update`) over its models and (plain dict) config."""
  return functools.partial(loss, models=models, cfg=dict(cfg))


def step_keys(state: TrainState, batch: Mapping[str, jax.Array],
              key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """`(augmentation keys [B], method keys [B])` of a train step: the root key's `rng.TRAIN`
  stream, folded with `state.step`, then with each example's dataset index. What a method draws
  (random starts, noise) comes from its keys; tests use this to feed a reference
  implementation the same draws."""
  key = rng.stream(state.rng if key is None else key, rng.TRAIN)
  keys = rng.example_keys(jax.random.fold_in(key, state.step), batch["index"])
  return rng.split_keys(keys, 2)


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
    pad_mode: str = "constant",
    rotate_degrees: float = 0.0,
    ema_decay: float = 0.999,
    post_update: Callable[..., Any] | None = None,
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
    pad_mode: how the crop pads (`data.PAD_MODES`).
    rotate_degrees: the largest random rotation (0: none).
    ema_decay: EMA base decay when the method gives none (ignored when EMA is off).
    post_update: the method's bound `post_update` (`bind_method`), or None: forward passes with
      the updated parameters, for the BatchNorm running averages only.

  Returns:
    `(new_state, metrics, sample_state)`: metrics are means over the global batch plus
    "learning_rate"; `sample_state` is the method's new per-example state `{name: [B, ...]}` for
    this device's examples, to scatter back on the host (`{}` for methods without one).
  """
  aug_keys, loss_keys = step_keys(state, batch, key)
  images = batch["image"].astype(jnp.float32) / 255.0
  if augment:
    images = data.augment(images, aug_keys, pad_mode=pad_mode, rotate_degrees=rotate_degrees)
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
  if post_update is not None:
    batch_stats = _pmean(post_update(params, batch_stats, batch), axis_name)
  ema_params, ema_stats, ema_steps = state.ema_params, state.ema_batch_stats, state.ema_steps
  if ema_params is not None:
    base = ema_decay if out.ema_decay is None else _pmean(out.ema_decay, axis_name)
    decay = ema_decay_with_warmup(base, state.ema_steps)
    new_params = ema_update(ema_params, params, decay)
    new_stats = ema_update(ema_stats, batch_stats, decay)
    if out.ema_apply is None:
      ema_params, ema_stats, ema_steps = new_params, new_stats, ema_steps + 1
    else:  # the method's rule (the same on every device: it reads global counts)
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(out.ema_apply, n, o), new, old)
      ema_params, ema_stats = keep(new_params, ema_params), keep(new_stats, ema_stats)
      ema_steps = ema_steps + out.ema_apply.astype(ema_steps.dtype)
      metrics["ema_applied"] = out.ema_apply.astype(jnp.float32)
    metrics["ema_decay"] = decay
  metrics["learning_rate"] = state.learning_rate_fn(state.step)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, ema_params=ema_params,
                            ema_batch_stats=ema_stats, ema_steps=ema_steps)
  return new_state, metrics, dict(out.sample_state or {})
