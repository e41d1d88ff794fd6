"""`fgsm_pgk`: fast adversarial training with prior-guided knowledge (Jia et al., TPAMI 2024).

The loop of the authors' released code (docs/methods.md, "FGSM-PGK"), step for step. Every training
example `i` has a prior perturbation `D[i]` and a momentum `M[i]` (host buffers, see
`regmix_jax.sample_state`), reset every `reset_every` epochs to `D = clip_eps(alpha * sign(U(-eps,
eps)))`, `M = 0`. On a batch with smoothed labels `y~` (`losses.smooth_labels`):

1. `d0 = D[i]`; `z0 = f(x + d0)` (train mode; `x + d0` is not clipped to [0, 1], as the released
   code: `D` was clipped against the previous visit's augmented image); `g = grad_d LSCE(z0, y~)`.
2. `d_adv = clip_[-x, 1-x](clip_eps(d0 + alpha sign(g)))`; `z_adv = f(x + d_adv)` (train mode:
   BatchNorm statistics are updated twice per step, first on `x + d0`).
3. `r = na / (n0 + ratio_offset)`: `n0`, `na` the numbers of correctly classified examples of the
   global batch on `x + d0` and `x + d_adv` (`ratio_offset` 0 for CIFAR-10, 1 for CIFAR-100 and
   Tiny ImageNet, as the released scripts).
4. `M[i] = g / ||g||_1 * (2 - r) + mu M[i]`, the L1 norm over the whole global batch tensor.
5. `D[i] = clip_[-x, 1-x](clip_eps(d0 + alpha sign(M[i])))`: from `d0`, not from `d_adv`.
6. Loss `LSCE(z_adv, y~) + lam * MSE(z_adv, z0)` (MSE over B * C, neither side detached).
   RegMix replaces the MSE by AMR and `y~` by the AGR target (`fgsm_amr`, `fgsm_agr`: the same
   function with other defaults; `losses.regmix_loss`).
7. After the SGD step the EMA ("teacher") decays with `b = 0.999` if `r < tau`, else
   `min(0.99999 r / tau, 1)`; the train step applies the warm-up `min(b, (t + 1) / (t + 10))`, t
   the number of EMA updates so far, and averages parameters and BatchNorm statistics
   (`config.ema.enabled` must be on: the configs do it, and the EMA model is the one evaluated
   and saved). `ema_update` says when it moves: "every_step" (FGSM_PGK_CIFAR10.py:347-348 and
   FGSM_PGK_TinyImageNet.py:328-329, at loop-body level) or "ratio_at_least_tau"
   (FGSM_PGK_CIFAR100.py:338-348: `update_params` and `apply_shadow` sit inside the `else:` of
   `if r < tau`, so the teacher, and the counter t of its warm-up, move only on steps with
   r >= tau).

Defaults: the CIFAR-10 script's (`DEFAULTS`, each cited); `CIFAR100` and `TINY_IMAGENET` hold
what those scripts change. Not reproduced (docs/methods.md, "FGSM-PGK"): the CIFAR-10 script
draws 49,000 of its 50,000 images per epoch (383 steps, the last of 104 images;
FGSM_PGK_CIFAR10.py:159, 256), where our loader visits all of them in full batches (390); and it
saves the teacher with the best test-set PGD-10 each epoch (l.387-389), where we report the final
teacher and, with `checkpoint.keep_best`, the best on a validation split.

Choices where the released code is silent or would fail: when `n0 + ratio_offset = 0` (no example
of the batch correct; the released CIFAR-10 code divides by zero) `r = na` (the denominator is
taken as 1); when the input gradient is exactly zero, `g / ||g||_1` is taken as 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from regmix_jax import losses
from regmix_jax.methods import base
from regmix_jax.sample_state import SampleStateSpec

NAME = "fgsm_pgk"
# CIFAR-10 defaults of the released code (jiaxiaojunQAQ/FGSM-PGK@ef58b3c FGSM_PGK_CIFAR10.py,
# line numbers there); CIFAR-100 / Tiny ImageNet: CIFAR100 / TINY_IMAGENET below.
DEFAULTS = {
    "epsilon": 8 / 255,  # l.32 (`/ std`, std = 1: no normalisation, utils.py:19-20)
    "step_size": 8 / 255,  # alpha, l.33
    "label_smoothing": 0.5,  # `factor`, l.41: the mass on the true class
    "lam": 5.6,  # `lamda`, l.42: weight of the logit MSE
    "momentum_decay": 0.3,  # mu, `decay`, l.43
    "ema_threshold": 0.82,  # tau, `EMA_value`, l.44
    "reset_every": 10,  # `epochs_reset`, l.25: epochs between buffer resets (`epoch % 10 == 0`)
    "ratio_offset": 0,  # r = na / (n0 + ratio_offset): `adv_acc / clean_acc`, l.312
    "ema_update": "every_step",  # l.347-348
    # RegMix's two changes (fgsm_amr, fgsm_agr); FGSM-PGK is ("mse", "smoothed").
    "regularizer": "mse",  # "mse": lam * MSE(z_adv, z0); "amr": losses.amr_loss
    # The distribution the adversarial output's cross-entropy aims at: "smoothed": y~; "agr":
    # (1 - gamma) y~ + gamma P(f(x)). (Called `target` before; that name still works.)
    "ce_target": "smoothed",
    # RegMix's weights (losses.AMR_ALPHA, AMR_BETA, AGR_GAMMA); read only by the "amr"
    # regulariser and the "agr" CE target.
    "amr_alpha": losses.AMR_ALPHA,  # weight of KL(P(z0) || P(z_adv))
    "amr_beta": losses.AMR_BETA,  # weight of KL(P(z_adv) || P(z0))
    "agr_gamma": losses.AGR_GAMMA,  # weight of the clean distribution in the CE target
    "stop_gradient_clean": False,  # detach P(f(x)) in the AGR target
    "clean_bn": "train",  # BatchNorm mode of AGR's clean pass: "train" | "eval"
}
# "accuracy" on x + d_adv, "prior_accuracy" on x + d0, "ratio" r, and the two terms of
# `losses.regmix_loss`; FGSM-AGR adds "clean_accuracy" (on x).
METRICS = ("loss", "accuracy", "prior_accuracy", "ratio", "target_ce", "regularizer")
# What the released CIFAR-100 script changes (FGSM_PGK_CIFAR100.py: factor, lamda, decay,
# EMA_value l.38-41; epochs_reset l.22; `adv_acc / (clean_acc + 1)` l.309; the gated teacher
# l.338-348).
CIFAR100 = {"label_smoothing": 0.8, "lam": 1.0, "momentum_decay": 0.1, "ema_threshold": 0.9,
            "reset_every": 40, "ratio_offset": 1, "ema_update": "ratio_at_least_tau"}
# What the released Tiny ImageNet script changes (FGSM_PGK_TinyImageNet.py: l.38-41, l.22,
# l.290; its teacher moves every step, l.328-329).
TINY_IMAGENET = {**CIFAR100, "ema_update": "every_step"}
EMA_UPDATES = ("every_step", "ratio_at_least_tau")
CHOICES = {"regularizer": losses.REGULARIZERS, "ce_target": losses.CE_TARGETS,
           "clean_bn": ("train", "eval"), "ema_update": EMA_UPDATES}
RANGES = {"epsilon": base.POSITIVE, "step_size": base.POSITIVE, "label_smoothing": (0.0, 1.0),
          "lam": (0.0, None), "momentum_decay": (0.0, None), "ema_threshold": (1e-6, None),
          "reset_every": (1, None), "ratio_offset": (0, None), "amr_alpha": (0.0, None),
          "amr_beta": (0.0, None), "agr_gamma": (0.0, 1.0)}
EMA_LOW, EMA_HIGH = 0.999, 0.99999  # the released code's teacher decays


def _reset_due(cfg, epoch: int) -> bool:
  return epoch % cfg["reset_every"] == 0


def _initial(cfg, generator: np.random.Generator, shape) -> dict[str, np.ndarray]:
  """`D = clip_eps(alpha * sign(U(-eps, eps)))` (random signs of size min(alpha, eps)), `M = 0`."""
  size = min(cfg["step_size"], cfg["epsilon"])
  signs = generator.integers(0, 2, size=shape, dtype=np.int8) * 2 - 1
  return {"prior": (size * signs).astype(np.float32), "momentum": np.zeros(shape, np.float32)}


SAMPLE_STATE = SampleStateSpec(names=("prior", "momentum"), reset_due=_reset_due,
                               initial=_initial)


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _clip(delta, x, epsilon):
  """`clip_[-x, 1-x](clip_[-eps, eps](delta))`."""
  return jnp.clip(jnp.clip(delta, -epsilon, epsilon), -x, 1.0 - x)


def perturbation_step(params, batch_stats, batch, *, models, cfg, axis_name=None):
  """Steps 1-5 above on this device's share of the batch.

  Returns `(z0 [B, C], z_adv [B, C], targets y~ [B, C], r (scalar, global), new sample state
  {"prior", "momentum": [B, H, W, C]}, new batch_stats)`. `z0` and `z_adv` keep their gradient
  path to `params`; the new buffers and `r` carry none.
  """
  x, y = batch["image"], batch["label"]
  prior, momentum = batch["sample"]["prior"], batch["sample"]["momentum"]
  eps, alpha = cfg["epsilon"], cfg["step_size"]

  def forward(delta):
    logits, stats = base.apply_model(models, "target", params, batch_stats, x + delta, train=True)
    return logits, stats

  # One forward pass gives z0 (differentiated by the caller) and, by its VJP, the input gradient.
  z0, vjp_fn, stats = jax.vjp(forward, prior, has_aux=True)
  targets = losses.smooth_labels(y, z0.shape[-1], cfg["label_smoothing"])
  dloss_dz0 = jax.grad(lambda z: losses.cross_entropy(z, targets).mean())(
      jax.lax.stop_gradient(z0))
  grad = jax.lax.stop_gradient(vjp_fn(dloss_dz0)[0])

  d_adv = _clip(prior + alpha * jnp.sign(grad), x, eps)
  z_adv, stats = base.apply_model(models, "target", params, {**batch_stats, "target": stats},
                                  x + d_adv, train=True)

  n0 = _psum(losses.correct(z0, y).sum(), axis_name)
  na = _psum(losses.correct(z_adv, y).sum(), axis_name)
  r = jax.lax.stop_gradient(na / jnp.maximum(n0 + cfg["ratio_offset"], 1.0))
  l1 = _psum(jnp.abs(grad).sum(), axis_name)
  unit = jnp.where(l1 > 0, grad / jnp.where(l1 > 0, l1, 1.0), 0.0)
  new_momentum = unit * (2.0 - r) + cfg["momentum_decay"] * momentum
  new_prior = _clip(prior + alpha * jnp.sign(new_momentum), x, eps)
  sample = {"prior": new_prior, "momentum": new_momentum}
  return z0, z_adv, targets, r, sample, {**batch_stats, "target": stats}


def ema_base_decay(r, tau):
  """The teacher's base decay: `0.999` if `r < tau`, else `min(0.99999 r / tau, 1)`."""
  return jnp.where(r < tau, EMA_LOW, jnp.minimum(EMA_HIGH * r / tau, 1.0))


def loss(params, batch_stats, batch, keys, *, models, cfg, axis_name=None):
  """FGSM-PGK, FGSM-AMR or FGSM-AGR by `cfg["regularizer"]` and `cfg["ce_target"]`
  (`losses.regmix_loss`); the perturbation loop is the same for all three.

  The AGR target needs the clean output `f(x)`: one extra forward pass, made first (before the
  passes on `x + d0` and `x + d_adv`) and by default in train mode (`clean_bn="train"`): the
  paper's Figure 1 draws CLN, Iadv and Fadv as three outputs of the network being trained in the
  same step, and the FGSM-PGK code it builds on keeps the model in train mode for every pass of a
  step, so BatchNorm uses the clean batch's statistics (and updates its running averages, as
  PyTorch does). `clean_bn="eval"` uses the running averages instead.
  """
  del keys  # the randomness of FGSM-PGK is in the buffers' resets
  clean = None
  if cfg["ce_target"] == "agr":
    clean, stats = base.apply_model(models, "target", params, batch_stats, batch["image"],
                                    train=cfg["clean_bn"] == "train")
    batch_stats = {**batch_stats, "target": stats}
  z0, z_adv, targets, r, sample, stats = perturbation_step(
      params, batch_stats, batch, models=models, cfg=cfg, axis_name=axis_name)
  per_example, terms = losses.regmix_loss(
      clean, z0, z_adv, targets, regularizer=cfg["regularizer"], ce_target=cfg["ce_target"],
      lam=cfg["lam"], alpha=cfg["amr_alpha"], beta=cfg["amr_beta"], gamma=cfg["agr_gamma"],
      stop_gradient_clean=cfg["stop_gradient_clean"])
  y = batch["label"]
  metrics = {"loss": per_example.mean(), "accuracy": losses.correct(z_adv, y).mean(),
             "prior_accuracy": losses.correct(z0, y).mean(), "ratio": r,
             **{k: v.mean() for k, v in terms.items()}}
  if clean is not None:
    metrics["clean_accuracy"] = losses.correct(clean, y).mean()
  gate = r >= cfg["ema_threshold"] if cfg["ema_update"] == "ratio_at_least_tau" else None
  return base.LossOutput(per_example.mean(), stats, metrics,
                         ema_decay=ema_base_decay(r, cfg["ema_threshold"]), ema_apply=gate,
                         sample_state=sample)
