"""Every config's learning-rate schedule, as a whole curve, against the released PyTorch scheduler.

For each file in configs/ (glob), the learning rate at every iteration of the full run, and the
SGD momentum where it cycles, equal what the released script's scheduler gives for the same number
of iterations, with 390 and with 391 steps per epoch (our loader drops the last partial batch of
CIFAR, 390 steps; the released loaders keep it, 391). Ours: `train_state.learning_rate_schedule`
and `momentum_schedule` evaluated on every iteration at once. Theirs (`REFERENCES`, each citing its
lines), driven iteration by iteration as the script drives it, with a dummy SGD optimiser:

- torch.optim.lr_scheduler.MultiStepLR, stepped after every iteration, milestones in iterations:
  the FGSM-PGK scripts (FGSM_PGK_CIFAR10.py:167-173, FGSM_PGK_CIFAR100.py:164-170,
  FGSM_PGK_TinyImageNet.py:164-170), and our own choices at their documented milestones (standard;
  fgsm_amr / fgsm_agr, docs/methods.md "RegMix");
- torch.optim.lr_scheduler.CyclicLR with its default cycle_momentum=True: fast_adversarial
  train_fgsm.py:85-88 (FGSM-RS; also our CIFAR-100 adaptation and the quickstart, whose docstrings
  name it), N-FGSM train.py:177-184;
- the script's own `adjust_learning_rate(optimizer, epoch)`, called with the 1-indexed epoch before
  each epoch: TRADES train_trades_cifar10.py:137-147, 155-157; MART train_wideresnet.py:109-119,
  176-178; D2R train_D2R_cifar100.py:186-198, 258-260 (also our CIFAR-100 D2R, whose docstring
  names the CIFAR-10 recipe);
- Rice et al.'s `lr_schedule(epoch + (i + 1) / len(train_batches))` set before each iteration:
  robust_overfitting train_cifar.py:248-255, 308-309 (train_cifar100.py:223-230, 255 the same).

The released run lengths and rates are the scripts' defaults, written here, not read from our
configs; the config must have the same number of epochs. Tolerance: rtol 1e-6, with an absolute
floor of 2 float32 steps of the phase in [1, 2) times the peak rate for the cyclic curves
(`CYCLIC_ATOL`): our CyclicLR phase `1 + k / N - floor(1 + k / N)` is computed in float32, so near
the start and end of the run, where the rate is a few thousandths of its peak, it is off by up to
2e-4 relative (4.7e-8 absolute at peak 0.2), where PyTorch computes in float64.
"""

from __future__ import annotations

import glob
import os
import warnings
from typing import Callable

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="cross-framework tests need PyTorch: pip install -e '.[crosscheck]'")

from regmix_jax import config as config_lib  # noqa: E402
from regmix_jax import train_state as ts  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in
                 glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))
STEPS_PER_EPOCH = (390, 391)
RTOL = 1e-6
CYCLIC_ATOL = 2 * 2.0**-23  # times the peak rate: float32 resolution of the phase in [1, 2)


def _sgd(lr, momentum=0.9, weight_decay=5e-4):
  return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=momentum,
                         weight_decay=weight_decay)


def _drive(opt, scheduler, n):
  """The rate and momentum of each of `n` iterations (read before the step, as the step uses
  them), the scheduler stepped after each, as the scripts do (`opt.step()` has no gradient to
  apply here, so it is left out)."""
  lrs, momenta = np.empty(n), np.empty(n)
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*lr_scheduler.step\\(\\)")
    for k in range(n):
      lrs[k] = opt.param_groups[0]["lr"]
      momenta[k] = opt.param_groups[0]["momentum"]
      scheduler.step()
  return lrs, momenta


def multistep(epochs, milestone_epochs, lr=0.1, gamma=0.1):
  """`MultiStepLR(opt, milestones=[lr_steps * m / epochs ...], gamma)` stepped every iteration,
  lr_steps = epochs * iterations per epoch (FGSM_PGK_CIFAR10.py:167, 172-173: m / epochs =
  100/110, 105/110)."""
  def curve(spe):
    opt = _sgd(lr)
    lr_steps = epochs * spe
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[lr_steps * m / epochs for m in milestone_epochs], gamma=gamma)
    return _drive(opt, scheduler, lr_steps)
  curve.epochs, curve.cyclic = epochs, False
  return curve


def cyclic(epochs, lr_min=0., lr_max=0.2, momentum=0.9):
  """fast_adversarial train_fgsm.py:85-88 (= N-FGSM train.py:177, 183-184): `CyclicLR(opt,
  base_lr=lr_min, max_lr=lr_max, step_size_up=lr_steps / 2, step_size_down=lr_steps / 2)` on
  `SGD(momentum=0.9)`, PyTorch's default cycle_momentum=True (base 0.8, max 0.9)."""
  def curve(spe):
    opt = _sgd(lr_max, momentum)
    lr_steps = epochs * spe
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=lr_min, max_lr=lr_max, step_size_up=lr_steps / 2,
        step_size_down=lr_steps / 2)
    return _drive(opt, scheduler, lr_steps)
  curve.epochs, curve.cyclic, curve.peak = epochs, True, lr_max
  return curve


def by_epoch(epochs, adjust_learning_rate: Callable, lr=0.1):
  """`for epoch in range(1, epochs + 1): adjust_learning_rate(optimizer, epoch); train(...)`."""
  def curve(spe):
    opt = _sgd(lr)
    lrs, momenta = [], []
    for epoch in range(1, epochs + 1):
      adjust_learning_rate(opt, epoch, lr)
      lrs += [opt.param_groups[0]["lr"]] * spe
      momenta += [opt.param_groups[0]["momentum"]] * spe
    return np.array(lrs), np.array(momenta)
  curve.epochs, curve.cyclic = epochs, False
  return curve


def trades_adjust_learning_rate(optimizer, epoch, base_lr):
  """yaodongyu/TRADES train_trades_cifar10.py:137-147 (`args.lr` = base_lr)."""
  lr = base_lr
  if epoch >= 75:
    lr = base_lr * 0.1
  if epoch >= 90:
    lr = base_lr * 0.01
  if epoch >= 100:
    lr = base_lr * 0.001
  for param_group in optimizer.param_groups:
    param_group["lr"] = lr


def mart_adjust_learning_rate(optimizer, epoch, base_lr):
  """YisenWang/MART train_wideresnet.py:109-119."""
  lr = base_lr
  if epoch >= 100:
    lr = base_lr * 0.001
  elif epoch >= 90:
    lr = base_lr * 0.01
  elif epoch >= 75:
    lr = base_lr * 0.1
  for param_group in optimizer.param_groups:
    param_group["lr"] = lr


def d2r_adjust_learning_rate(optimizer, epoch, base_lr):
  """lusti-Yu/D2R D2R/train_D2R_cifar100.py:186-198."""
  lr = base_lr
  if epoch == 1:
    lr = 0.02
  if epoch >= 76:
    lr = base_lr * 0.1
  if epoch >= 91:
    lr = base_lr * 0.01
  if epoch >= 101:
    lr = base_lr * 0.001
  for param_group in optimizer.param_groups:
    param_group["lr"] = lr


def rice_piecewise(epochs, lr_max=0.1):
  """robust_overfitting train_cifar.py:249-255 (`piecewise`), set before every iteration to
  `lr_schedule(epoch + (i + 1) / len(train_batches))` (l.308-309; train_cifar100.py:224-230,
  255)."""
  def lr_schedule(t):
    if t / epochs < 0.5:
      return lr_max
    elif t / epochs < 0.75:
      return lr_max / 10.
    else:
      return lr_max / 100.

  def curve(spe):
    opt = _sgd(lr_max)
    lrs, momenta = [], []
    for epoch in range(epochs):
      for i in range(spe):
        opt.param_groups[0].update(lr=lr_schedule(epoch + (i + 1) / spe))
        lrs.append(opt.param_groups[0]["lr"])
        momenta.append(opt.param_groups[0]["momentum"])
    return np.array(lrs), np.array(momenta)
  curve.epochs, curve.cyclic = epochs, False
  return curve


# Each config -> the curve of the scheduler it reproduces (or, with no released counterpart, the
# one its docstring names), with the released script's defaults.
_PGK = multistep(110, (100, 105))  # FGSM_PGK_{CIFAR10,CIFAR100,TinyImageNet}.py: 110 epochs
_REGMIX = multistep(95, (85, 90))  # ours (docs/methods.md, "RegMix"): 95 epochs, x0.1 at 85, 90
_FGSM_RS = cyclic(15)  # train_fgsm.py:24-27: 15 epochs, 0 -> 0.2
_D2R = by_epoch(100, d2r_adjust_learning_rate)  # train_D2R_cifar100.py:38, 42: 100 epochs, 0.1
_RICE = rice_piecewise(200)  # train_cifar.py:133, 135 (train_cifar100.py:117, 119)
REFERENCES = {
    "configs/cifar10/fgsm_pgk.py": _PGK,
    "configs/cifar100/fgsm_pgk.py": _PGK,
    "configs/tiny_imagenet/fgsm_pgk.py": _PGK,
    "configs/cifar10/fgsm_amr.py": _REGMIX,
    "configs/cifar10/fgsm_agr.py": _REGMIX,
    "configs/cifar100/fgsm_amr.py": _REGMIX,
    "configs/cifar100/fgsm_agr.py": _REGMIX,
    "configs/tiny_imagenet/fgsm_amr.py": _REGMIX,
    "configs/tiny_imagenet/fgsm_agr.py": _REGMIX,
    "configs/cifar10/standard.py": multistep(100, (50, 75)),  # ours: its docstring
    "configs/cifar10/fgsm_rs.py": _FGSM_RS,
    "configs/cifar100/fgsm_rs.py": _FGSM_RS,  # ours: the CIFAR-10 recipe, its docstring says
    "configs/cifar10/n_fgsm.py": cyclic(30),  # N-FGSM train.py:36-39: 30 epochs, 0 -> 0.2
    "configs/cifar10/trades.py": by_epoch(76, trades_adjust_learning_rate),  # TR:20, 24
    "configs/cifar10/mart.py": by_epoch(90, mart_adjust_learning_rate),  # MW:25, 29
    "configs/cifar10/d2r.py": _D2R,
    "configs/cifar100/d2r.py": _D2R,  # ours: the CIFAR-10 recipe, its docstring says
    "configs/cifar10/pgd_at.py": _RICE,
    "configs/cifar100/pgd_at.py": _RICE,
    # Ours, no released run: "Wong et al.'s one-cycle schedule" (its comment), 6 epochs.
    "configs/quickstart.py": cyclic(6),
}


def _ours(config, spe):
  steps = jnp.arange(spe * config.num_epochs)
  lrs = np.asarray(ts.learning_rate_schedule(config.optim, spe, config.num_epochs)(steps),
                   np.float64)
  momentum_fn = ts.momentum_schedule(config.optim, spe, config.num_epochs)
  if momentum_fn is None:
    momenta = np.full(len(lrs), config.optim.momentum)
  else:
    momenta = np.asarray(momentum_fn(steps), np.float64)
  return lrs, momenta


def compare(config, reference, spe):
  """Raises AssertionError where our curve differs from `reference`'s for `spe` iterations per
  epoch."""
  assert config.num_epochs == reference.epochs, (
      f"{config.num_epochs} epochs here, {reference.epochs} in the released run")
  assert not config.optim.nesterov
  lrs, momenta = _ours(config, spe)
  want_lrs, want_momenta = reference(spe)
  assert len(lrs) == len(want_lrs)
  atol = CYCLIC_ATOL * reference.peak if reference.cyclic else 0.0
  for name, got, want in (("learning rate", lrs, want_lrs), ("momentum", momenta, want_momenta)):
    bad = np.flatnonzero(np.abs(got - want) > RTOL * np.abs(want) + atol)
    assert not bad.size, (
        f"{name}: {bad.size} of {len(want)} iterations differ, first at iteration {bad[0]} "
        f"(epoch {bad[0] // spe}, step {bad[0] % spe}): ours {got[bad[0]]:.9g}, released "
        f"{want[bad[0]]:.9g}")


# Configs whose curve differs from the scheduler they name, and is reported (not pending).
DIFFERS = {}


def _load(path):
  return config_lib.from_command_line(os.path.join(ROOT, path))


def test_every_config_has_a_reference():
  assert CONFIGS and set(CONFIGS) == set(REFERENCES), sorted(set(CONFIGS) ^ set(REFERENCES))


@pytest.mark.parametrize("spe", STEPS_PER_EPOCH)
@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=DIFFERS[p])) if p in DIFFERS
    else p for p in CONFIGS])
def test_schedule_is_the_released_schedule(path, spe):
  compare(_load(path), REFERENCES[path], spe)


# What the schedules were before issue 19: each must make `compare` fail.
OLD = {
    "cyclic peak at 40%": ("configs/cifar10/fgsm_rs.py",
                           {"optim.cyclic_peak_fraction": 0.4}),
    "momentum not cycled": ("configs/cifar10/n_fgsm.py", {"optim.cycle_momentum": False}),
    "TRADES: 100 epochs, drops at 0-indexed 75 and 90": (
        "configs/cifar10/trades.py", {"num_epochs": 100, "optim.milestones": (75, 90)}),
    "TRADES: drops at 0-indexed 75 and 90": ("configs/cifar10/trades.py",
                                             {"optim.milestones": (75, 90)}),
    "MART: drops at 0-indexed 75 and 90": ("configs/cifar10/mart.py",
                                           {"optim.milestones": (75, 90)}),
    "MART: lr 0.01": ("configs/cifar10/mart.py", {"optim.learning_rate": 0.01}),
    "PGD-AT: drops at the epoch boundary": ("configs/cifar10/pgd_at.py",
                                            {"optim.schedule_at_step_end": False}),
    "D2R: no 0.02 warm-up epoch": ("configs/cifar10/d2r.py",
                                   {"optim.boundaries": (75, 90),
                                    "optim.rates": (0.1, 0.01, 0.001)}),
    "FGSM-PGK: milestones one epoch late": ("configs/cifar10/fgsm_pgk.py",
                                            {"optim.milestones": (101, 106)}),
}


@pytest.mark.parametrize("what", sorted(OLD))
def test_the_old_schedules_fail(what):
  """The comparison has the power to see each past mistake: with the old value put back, it
  fails (for 391 steps per epoch; 390 is checked by the main test)."""
  path, changes = OLD[what]
  config = _load(path)
  for field, value in changes.items():
    group, _, name = field.rpartition(".")
    (config[group] if group else config)[name] = value
  with pytest.raises(AssertionError):
    compare(config, REFERENCES[path], 391)
