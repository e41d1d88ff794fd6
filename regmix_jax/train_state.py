"""TrainState: one pytree for every model of a run, its optimiser, EMA copies and RNG key.

`params` and `batch_stats` are dicts keyed by model role (`"target"` always, `"guide"` for
two-model methods). One optax optimiser runs over the whole `params` dict. The EMA copies are
None when EMA is off. `rng` is raw `uint32` key data (checkpoints store it as a plain array).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

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
  # int32 scalar: EMA updates done (the warm-up counts these; equal to `step` unless a method
  # gates its EMA, as FGSM-PGK's CIFAR-100 script does).
  ema_steps: jax.Array
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  learning_rate_fn: Callable[[jax.Array], jax.Array] = flax.struct.field(pytree_node=False)

  def eval_variables(self, role: str = "target") -> dict[str, Any]:
    """Variables to evaluate `role` with: the EMA copies when EMA is on, else the live ones."""
    if self.ema_params is not None:
      return {"params": self.ema_params[role], "batch_stats": self.ema_batch_stats[role]}
    return {"params": self.params[role], "batch_stats": self.batch_stats[role]}


def _cyclic_phase(optim: ml_collections.ConfigDict, total_steps: int):
  """`step -> s` in [0, 1] of `torch.optim.lr_scheduler.CyclicLR` in "triangular" mode with
  `step_size_up = cyclic_peak_fraction * total_steps` and `step_size_down` the rest, both floats
  as the released scripts pass them (fast_adversarial CIFAR10/train_fgsm.py:85-88, N-FGSM
  train.py:177-184: `lr_steps / 2`): `cycle = floor(1 + k / T)`, `x = 1 + k / T - cycle`,
  `s = x / ratio` if `x <= ratio` else `(x - 1) / (ratio - 1)`, T = total_steps, ratio = the
  peak fraction (PyTorch's `CyclicLR.get_lr`). Step 0 has s = 0: the first step trains with the
  base rate (0), as there."""
  total = float(total_steps)
  ratio = float(optim.cyclic_peak_fraction)

  def phase(step):
    k = jnp.asarray(step, jnp.float32)
    cycle = jnp.floor(1.0 + k / total)
    x = 1.0 + k / total - cycle
    up = x / max(ratio, 1e-12)
    down = (x - 1.0) / min(ratio - 1.0, -1e-12)
    return jnp.where(x <= ratio, up, down)
  return phase


def _at_step_end(fn, optim: ml_collections.ConfigDict):
  """With `optim.schedule_at_step_end`, iteration k uses the schedule's value at k + 1: Rice et
  al.'s `lr_schedule(epoch + (i + 1) / len(loader))` set before each step
  (robust_overfitting train_cifar.py:308-309), where a torch scheduler stepped after each
  optimiser step gives iteration k the value at k."""
  return (lambda step: fn(step + 1)) if optim.schedule_at_step_end else fn


def learning_rate_schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int,
                           num_epochs: int) -> Callable[[jax.Array], jax.Array]:
  """Per-iteration schedule `step -> learning rate` (epochs in the config become steps),
  `step` counting optimiser updates from 0, as a PyTorch scheduler stepped after every update
  (iteration k uses the value at k).

  constant: `learning_rate`. multistep: `learning_rate * gamma ** (#milestones <= step /
  steps_per_epoch)` (`MultiStepLR` with milestones at epoch starts, or a 0-indexed
  `adjust_learning_rate` by epoch). piecewise: `rates[j]` from epoch `boundaries[j-1]` on.
  cyclic: `learning_rate * s(step)`, PyTorch's CyclicLR from 0 up to `learning_rate` at
  `cyclic_peak_fraction` of the run and back to 0 (`_cyclic_phase`).
  """
  if optim.schedule == "cyclic":
    phase = _cyclic_phase(optim, steps_per_epoch * num_epochs)
    return _at_step_end(lambda step: optim.learning_rate * phase(step), optim)
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
  return _at_step_end(lambda step: rates[jnp.searchsorted(bounds, step, side="right")], optim)


def momentum_schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int,
                      num_epochs: int) -> Callable[[jax.Array], jax.Array] | None:
  """`step -> SGD momentum` when `optim.cycle_momentum` (with the cyclic schedule): PyTorch's
  CyclicLR default `cycle_momentum=True` moves it against the rate, `momentum - (momentum -
  base_momentum) * s(step)`, 0.9 down to 0.8 at the peak and back (base_momentum 0.8,
  max_momentum 0.9, PyTorch's defaults, which the released FGSM-RS and N-FGSM scripts keep).
  None: the constant `optim.momentum`."""
  if not optim.cycle_momentum:
    return None
  phase = _cyclic_phase(optim, steps_per_epoch * num_epochs)
  high, low = float(optim.momentum), float(optim.base_momentum)
  return _at_step_end(lambda step: high - (high - low) * phase(step), optim)


class _ScheduledTraceState(NamedTuple):
  count: jax.Array
  trace: Any


def _scheduled_trace(momentum_fn) -> optax.GradientTransformation:
  """Heavy-ball momentum with a per-step coefficient: `buf = m(t) * buf + g` (PyTorch SGD's
  buffer; its first step keeps `g`, as a zero buffer gives), t counting updates from 0."""

  def init(params):
    return _ScheduledTraceState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    del params
    m = momentum_fn(state.count)
    trace = jax.tree.map(lambda g, t: g + m * t, updates, state.trace)
    return trace, _ScheduledTraceState(state.count + 1, trace)

  return optax.GradientTransformation(init, update)


def make_optimizer(optim: ml_collections.ConfigDict, learning_rate_fn,
                   momentum_fn=None) -> optax.GradientTransformation:
  """SGD as PyTorch's: optional global-norm clipping of the raw gradient, then coupled L2 weight
  decay on every parameter, then heavy-ball momentum (constant, or `momentum_fn(step)` when the
  schedule cycles it), then the learning rate."""
  parts = []
  if optim.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  if optim.weight_decay > 0:
    parts.append(optax.add_decayed_weights(optim.weight_decay))
  if momentum_fn is None:
    parts.append(optax.sgd(learning_rate_fn, momentum=optim.momentum or None,
                           nesterov=optim.nesterov))
  else:
    if optim.nesterov:
      raise ValueError("Config fields `optim.nesterov` and `optim.cycle_momentum` cannot both be "
                       "set: the cycled momentum is PyTorch's plain heavy ball.")
    parts += [_scheduled_trace(momentum_fn), optax.scale_by_learning_rate(learning_rate_fn)]
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
  tx = make_optimizer(config.optim, lr_fn,
                      momentum_schedule(config.optim, steps_per_epoch, config.num_epochs))
  ema = config.ema.enabled
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      ema_params=jax.tree.map(jnp.copy, params) if ema else None,
      ema_batch_stats=jax.tree.map(jnp.copy, batch_stats) if ema else None,
      rng=jax.random.key_data(state_key),
      ema_steps=jnp.zeros((), jnp.int32),
      tx=tx,
      learning_rate_fn=lr_fn,
  )


def abstract_train_state(config: ml_collections.ConfigDict, models: Mapping[str, nn.Module],
                         image_shape: tuple[int, int, int], steps_per_epoch: int,
                         device: jax.Device | None = None) -> TrainState:
  """`create_train_state`'s structure with `jax.ShapeDtypeStruct` leaves on `device` (default:
  JAX's first): a restore target that initialises nothing (a model's jitted init would compile
  and run only to be overwritten by the checkpoint)."""
  placed = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
  shapes = jax.eval_shape(lambda: create_train_state(config, models, image_shape, steps_per_epoch))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=placed), shapes)


def ema_update(ema, new, decay):
  """`decay * ema + (1 - decay) * new`, leaf by leaf."""
  return jax.tree.map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)


def ema_decay_with_warmup(base_decay, step):
  """`min(base, (t + 1) / (t + 10))` with t the number of EMA updates done so far (FGSM-PGK's
  `EMA.update_params`, FGSM_PGK_CIFAR10.py:75, whose `self.step` counts its updates)."""
  return jnp.minimum(base_decay, (step + 1.0) / (step + 10.0))
