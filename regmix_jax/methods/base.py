"""What every method shares: the loss output and the ways to run a model."""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import flax
import jax

from regmix_jax import losses


# The metrics of the two shapes of loss below: `supervised_ce` / `adversarial_ce`, and
# `robust_output` (clean + adversarial methods).
SUPERVISED_METRICS = ("loss", "accuracy")
ROBUST_METRICS = ("loss", "accuracy", "clean_accuracy")


class Range(NamedTuple):
  """Bounds of a numeric method field in a method's `RANGES`: `low <= value <= high` (None:
  unbounded), `low < value` where `low_open`. A plain `(low, high)` tuple is inclusive."""

  low: float | None
  high: float | None = None
  low_open: bool = False


# Radii and step sizes: a zero one makes the attack return its start, i.e. clean (or noise)
# training at an attack's cost, which `standard` does; a negative one inverts the attack.
POSITIVE = Range(0.0, low_open=True)
# Noise around the start (N-FGSM's `noise_radius`, TRADES' and MART's `init_std`): 0 = none.
NON_NEGATIVE = Range(0.0)


@flax.struct.dataclass
class LossOutput:
  """What a method's loss returns.

  loss: scalar, the mean over the local batch; this is what is differentiated.
  batch_stats: new batch statistics, keyed by role.
  metrics: scalars to log (local means), e.g. "loss", "accuracy".
  ema_decay: optional per-step EMA base decay (FGSM-PGK's dynamic rule); None = the config's.
  ema_apply: optional bool scalar: whether the EMA moves this step (FGSM-PGK's CIFAR-100 rule);
    None = every step.
  sample_state: new per-example state `{name: [B, ...]}` for the batch's examples (methods with
    a `SAMPLE_STATE` spec, see `regmix_jax.sample_state`); None for the others.
  """

  loss: jax.Array
  batch_stats: Any
  metrics: Mapping[str, jax.Array]
  ema_decay: jax.Array | None = None
  ema_apply: jax.Array | None = None
  sample_state: Mapping[str, jax.Array] | None = None


def apply_model(models, role, params, batch_stats, x, *, train: bool):
  """Runs model `role` on `x [B, H, W, C]`: returns `(logits [B, C], new batch_stats of role)`.

  In train mode BatchNorm uses batch statistics and returns updated running averages; in
  inference mode it uses the running averages and returns them unchanged.
  """
  variables = {"params": params[role], "batch_stats": batch_stats[role]}
  if train:
    logits, updates = models[role].apply(variables, x, train=True, mutable=["batch_stats"])
    return logits, updates.get("batch_stats", {})
  return models[role].apply(variables, x, train=False), batch_stats[role]


def logits_fn(models, role, params, batch_stats, *, train: bool
              ) -> Callable[[jax.Array], jax.Array]:
  """`x -> logits` for attacks. With `train=True` BatchNorm uses batch statistics but the running
  averages are not updated (`train_mode_pass` threads them, as PyTorch does)."""
  return lambda x: apply_model(models, role, params, batch_stats, x, train=train)[0]


def supervised_ce(models, params, batch_stats, x, labels) -> LossOutput:
  """Mean `CE(f(x), y)` with the target in train mode: the loss of `standard`, `fgsm_rs`,
  `pgd_at` (each on its own `x`); metrics "loss" and "accuracy" on `x`."""
  logits, stats = apply_model(models, "target", params, batch_stats, x, train=True)
  ce = losses.cross_entropy(logits, labels)
  metrics = {"loss": ce.mean(), "accuracy": losses.correct(logits, labels).mean()}
  return LossOutput(ce.mean(), {**batch_stats, "target": stats}, metrics)


def clean_then_adversarial(models, params, batch_stats, x, x_adv):
  """Target logits on x, then on x' (both train mode, running statistics threaded in that order,
  as TRADES' and MART's released code): `(clean [B, C], adv [B, C], new batch_stats)`."""
  clean, stats = apply_model(models, "target", params, batch_stats, x, train=True)
  adv, stats = apply_model(models, "target", params, {**batch_stats, "target": stats}, x_adv,
                           train=True)
  return clean, adv, {**batch_stats, "target": stats}


def robust_output(per_example, clean, adv, labels, batch_stats) -> LossOutput:
  """LossOutput of a clean + adversarial method: the mean of `per_example [B]`, accuracy on x'
  ("accuracy") and on x ("clean_accuracy")."""
  metrics = {"loss": per_example.mean(), "accuracy": losses.correct(adv, labels).mean(),
             "clean_accuracy": losses.correct(clean, labels).mean()}
  return LossOutput(per_example.mean(), batch_stats, metrics)


def train_mode_pass(models, role, params):
  """`(x, batch_stats) -> (logits, batch_stats)`: a train-mode pass of model `role` that, as
  PyTorch's, normalises with batch statistics and moves the running averages; for attacks that
  thread the model state through their passes (`attacks.pgd(model_state=...)`). No gradient
  reaches `params` through it."""
  def apply(x, batch_stats):
    logits, stats = apply_model(models, role, jax.lax.stop_gradient(params), batch_stats, x,
                                train=True)
    return logits, {**batch_stats, role: stats}
  return apply


def train_mode_attack(attack, params, batch_stats, batch, keys, *, models):
  """`(x_adv, batch_stats)`: `attack(..., model_state=batch_stats)` on the target in train mode,
  each of its passes moving the running averages as PyTorch's `model.train()` does."""
  return attack(train_mode_pass(models, "target", params), batch["image"], batch["label"], keys,
                model_state=batch_stats)


def adversarial_ce(attack, params, batch_stats, batch, keys, *, models, attack_bn: str
                   ) -> LossOutput:
  """`supervised_ce` on `attack(logits_fn, x, y, keys)`. `attack_bn="train"`: the attack sees the
  target in train mode, with batch statistics, and its passes move the running averages before
  the training pass does (the released FGSM-RS, N-FGSM and PGD-AT scripts attack with
  `model.train()`); "eval": it sees the running averages and leaves them."""
  x, y = batch["image"], batch["label"]
  if attack_bn == "train":
    x_adv, batch_stats = train_mode_attack(attack, params, batch_stats, batch, keys,
                                           models=models)
  else:
    x_adv = attack(logits_fn(models, "target", params, batch_stats, train=False), x, y, keys)
  return supervised_ce(models, params, batch_stats, x_adv, y)
