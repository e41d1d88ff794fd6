"""L-inf gradient attacks over a `logits_fn`: FGSM, PGD and C&W-inf.

Every attack has the form `attack(logits_fn, x, labels, key, *, epsilon, step_size, ...) -> x_adv`.
`logits_fn(x [B, H, W, C]) -> [B, num_classes]` closes over the model's variables and mode, so the
attacks know nothing of TrainState. `x` is in [0, 1]; the result stays inside the eps-ball around
`x` and inside [0, 1], and carries no gradient path (`stop_gradient`). `key` is one key or `[B]`
per-example keys (see `regmix_jax.rng`). The loop is a `lax.fori_loop`, so a jitted attack
compiles once whatever `num_steps` is.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from regmix_jax import losses, rng

LogitsFn = Callable[[jax.Array], jax.Array]

# Attack objectives to maximise: (logits [B, C], labels) -> [B]. For "kl" the `labels` argument
# holds the reference logits `[B, C]` and the objective is KL(P(reference) || P(f(x_adv))).
ATTACK_LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "ce": losses.cross_entropy,
    "margin": losses.margin,
    "kl": lambda logits, reference_logits: losses.kl_div(reference_logits, logits),
}


def project(x_adv: jax.Array, x: jax.Array, epsilon: float) -> jax.Array:
  """Projects `x_adv` onto the L-inf ball of radius `epsilon` around `x`, then onto [0, 1]."""
  return jnp.clip(jnp.clip(x_adv, x - epsilon, x + epsilon), 0.0, 1.0)


def pgd(
    logits_fn: LogitsFn,
    x: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    epsilon: float,
    step_size: float,
    num_steps: int,
    loss: str = "ce",
    random_start: bool = True,
    init_radius: float | None = None,
    init_std: float | None = None,
    project_radius: float | None = None,
    early_stop: bool = False,
    model_state=None,
    start: jax.Array | None = None,
):
  """Projected gradient ascent with signed steps (Madry et al. 2018).

  Args:
    logits_fn: `x [B, H, W, C] -> logits [B, C]`.
    x: clean images `[B, H, W, C]` in [0, 1].
    labels: `[B]` integer labels; for `loss="kl"`, the reference logits `[B, C]` (e.g. the clean
      logits: TRADES maximises `KL(P(f(x)) || P(f(x_adv)))`).
    key: one key or `[B]` per-example keys, for the random start.
    epsilon: L-inf radius.
    step_size: size of each signed step.
    num_steps: number of gradient steps.
    loss: objective to maximise, a name in `ATTACK_LOSSES` ("ce" or the C&W "margin").
    random_start: start from `x + U(-init_radius, init_radius)` (clipped to [0, 1]), else from `x`.
    init_radius: radius of the random start; default `epsilon` (N-FGSM uses `2 * epsilon`).
    init_std: if set, the random start is Gaussian, `x + init_std * N(0, I)` (TRADES: 0.001),
      instead of uniform, and not clipped to [0, 1] before the first step, as the released
      TRADES, MART and D2R code (trades.py:31, mart.py:20, D2R.py:38); each step clips.
    project_radius: radius of the ball each step projects onto; default `epsilon`. N-FGSM sets it
      to `inf` (no eps-ball projection, only [0, 1]); then the eps-ball guarantee is the caller's.
    early_stop: a sample stops moving once misclassified (the evaluation protocol's per-sample
      stop): only samples whose current arg-max is the label take a step.
    model_state: for a model in train mode whose every forward pass updates its state (PyTorch's
      BatchNorm running averages, as the released FGSM-RS, N-FGSM and PGD-AT scripts attack):
      then `logits_fn(x, model_state) -> (logits, new model_state)`, threaded through the
      attack's passes in order (no gradient flows through it).
    start: `[B, H, W, C]`, where the steps start instead of the random start (e.g. where a first
      step taken with another model ended: `methods.trades` under a bf16 policy); the ball is
      still the one around `x`.

  Returns:
    `x_adv [B, H, W, C]`, no gradient path; with `model_state`, `(x_adv, model_state)` after the
    attack's passes.
  """
  objective = ATTACK_LOSSES[loss]
  if early_stop and loss == "kl":
    raise ValueError("early_stop needs integer labels; it cannot be used with loss='kl'.")
  init_radius = epsilon if init_radius is None else init_radius
  project_radius = epsilon if project_radius is None else project_radius
  x = jax.lax.stop_gradient(x)

  stateful = model_state is not None
  apply = logits_fn if stateful else lambda z, state: (logits_fn(z), state)

  def loss_and_logits(x_adv, state):
    logits, state = apply(x_adv, state)
    return jnp.sum(objective(logits, labels)), (logits, state)

  grad_fn = jax.grad(loss_and_logits, has_aux=True)

  def body(_, carry):
    x_adv, state = carry
    grad, (logits, state) = grad_fn(x_adv, state)
    step = step_size * jnp.sign(grad)
    if early_stop:
      still_correct = losses.correct(logits, labels).astype(bool)
      step = jnp.where(still_correct[:, None, None, None], step, 0.0)
    return project(x_adv + step, x, project_radius), jax.lax.stop_gradient(state)

  if start is not None:
    x_adv = jax.lax.stop_gradient(start)
  elif random_start and init_std is not None:
    x_adv = x + init_std * rng.normal_like(key, x)
  elif random_start:
    x_adv = jnp.clip(x + rng.uniform_like(key, x, -init_radius, init_radius), 0.0, 1.0)
  else:
    x_adv = x
  x_adv, model_state = jax.lax.fori_loop(0, num_steps, body, (x_adv, model_state))
  if stateful:
    return jax.lax.stop_gradient(x_adv), model_state
  return jax.lax.stop_gradient(x_adv)


def fgsm(
    logits_fn: LogitsFn,
    x: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    epsilon: float,
    step_size: float | None = None,
    random_start: bool = True,
    **kwargs,
) -> jax.Array:
  """One signed gradient step: FGSM (`random_start=False`, step = eps) or FGSM-RS.

  `step_size` defaults to `epsilon`. Other keyword arguments as `pgd`.
  """
  step_size = epsilon if step_size is None else step_size
  return pgd(logits_fn, x, labels, key, epsilon=epsilon, step_size=step_size, num_steps=1,
             random_start=random_start, **kwargs)


def cw_linf(
    logits_fn: LogitsFn,
    x: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    epsilon: float,
    step_size: float,
    num_steps: int,
    **kwargs,
) -> jax.Array:
  """C&W-inf: PGD on the margin loss `-(z_y - max_{j != y} z_j)`. Arguments as `pgd`."""
  return pgd(logits_fn, x, labels, key, epsilon=epsilon, step_size=step_size,
             num_steps=num_steps, loss="margin", **kwargs)
