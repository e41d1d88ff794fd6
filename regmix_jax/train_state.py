"""TrainState: one pytree for every model of a run, its optimiser, EMA copies and RNG key.

`params` and `batch_stats` are dicts keyed by model role (`"target"` always, `"guide"` for
two-model methods). One optax optimiser runs over the whole `params` dict. The EMA copies are
None when EMA is off. `rng` is raw `uint32` key data (checkpoints store it as a plain array).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

# Learning-rate schedules (`config.optim.schedule`), see `learning_rate_schedule`.
SCHEDULES = ("constant", "multistep", "piecewise", "cyclic")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimiser updates done
  params: dict[str, Any]  # role -> params
  batch_stats: dict[str, Any]  # role -> BatchNorm running statistics
  opt_state: Any
  ema_params: dict[str, Any] | None
  ema_batch_stats: dict[str, Any] | None
  rng: jax.Array  # uint32 [2]: root key data; steps fold in the step and each example's index
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  learning_rate_fn: Callable[[jax.Array], jax.Array] = flax.struct.field(pytree_node=False)

  def eval_variables(self, role: str = "target") -> dict[str, Any]:
    """Variables to evaluate `role` with: the EMA copies when EMA is on, else the live ones."""
    if self.ema_params is not None:
      return {"params": self.ema_params[role], "batch_stats": self.ema_batch_stats[role]}
    return {"params": self.params[role], "batch_stats": self.batch_stats[role]}


def learning_rate_schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int,
                           num_epochs: int) -> Callable[[jax.Array], jax.Array]:
  """Per-iteration schedule `step -> learning rate` (epochs in the config become steps).

  constant: `learning_rate`. multistep: `learning_rate * gamma ** (#milestones passed)`.
  piecewise: `rates[k]` between `boundaries[k-1]` and `boundaries[k]`. cyclic: linear from 0 to
  `learning_rate` at `cyclic_peak_fraction` of training, then linear to 0 (Wong et al. 2020).
  """
  if optim.schedule == "cyclic":
    total = steps_per_epoch * num_epochs
    points = jnp.array([0.0, optim.cyclic_peak_fraction * total, total])
    rates = jnp.array([0.0, optim.learning_rate, 0.0])
    return lambda step: jnp.interp(step, points, rates)
  if optim.schedule == "constant":
    boundaries, values = (), (optim.learning_rate,)
  elif optim.schedule == "multistep":
    boundaries = tuple(sorted(optim.milestones))
    values = tuple(optim.learning_rate * optim.gamma**k for k in range(len(boundaries) + 1))
  elif optim.schedule == "piecewise":
    boundaries, values = tuple(optim.boundaries), tuple(optim.rates)
  else:
    raise ValueError(f"Config field `optim.schedule` = {optim.schedule!r} is not one of: "
                     f"{', '.join(SCHEDULES)}.")
  bounds = jnp.array([b * steps_per_epoch for b in boundaries], jnp.int32)
  rates = jnp.array(values, jnp.float32)
  return lambda step: rates[jnp.searchsorted(bounds, step, side="right")]


def make_optimizer(optim: ml_collections.ConfigDict, learning_rate_fn) -> optax.GradientTransformation:
  """SGD as PyTorch's: optional global-norm clipping of the raw gradient, then coupled L2 weight
  decay on every parameter, then heavy-ball momentum, then the learning rate."""
  parts = []
  if optim.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  if optim.weight_decay > 0:
    parts.append(optax.add_decayed_weights(optim.weight_decay))
  parts.append(optax.sgd(learning_rate_fn, momentum=optim.momentum or None,
                         nesterov=optim.nesterov))
  return optax.chain(*parts)


def create_train_state(config: ml_collections.ConfigDict, models: Mapping[str, nn.Module],
                       image_shape: tuple[int, int, int], steps_per_epoch: int) -> TrainState:
  """Initialises every model in `models` (role -> module) from `config.seed`."""
  root = jax.random.key(config.seed)
  init_key, state_key = jax.random.split(root)
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  params, batch_stats = {}, {}
  for i, (role, model) in enumerate(sorted(models.items())):
    variables = jax.jit(lambda k, m=model: m.init(k, dummy, train=False))(
        jax.random.fold_in(init_key, i))
    params[role] = variables["params"]
    batch_stats[role] = variables.get("batch_stats", {})
  lr_fn = learning_rate_schedule(config.optim, steps_per_epoch, config.num_epochs)
  tx = make_optimizer(config.optim, lr_fn)
  ema = config.ema.enabled
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      ema_params=jax.tree.map(jnp.copy, params) if ema else None,
      ema_batch_stats=jax.tree.map(jnp.copy, batch_stats) if ema else None,
      rng=jax.random.key_data(state_key),
      tx=tx,
      learning_rate_fn=lr_fn,
  )


def ema_update(ema, new, decay):
  """`decay * ema + (1 - decay) * new`, leaf by leaf."""
  return jax.tree.map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)


def ema_decay_with_warmup(base_decay, step):
  """`min(base, (t + 1) / (t + 10))` with t the global step (FGSM-PGK's warm-up)."""
  return jnp.minimum(base_decay, (step + 1.0) / (step + 10.0))
