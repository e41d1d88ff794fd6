"""PyTorch ports of each recipe's released training step: test oracles for `test_steps.py`, not
library code (torch is a test extra).

Each trainer below is the released script's training loop body, written line for line from the
file named in its docstring, with the line cited on each block (`# FGSM_PGK_CIFAR10.py:285`),
and the optimiser, scheduler and EMA built and stepped exactly where the script builds and steps
them. What is not ported, and why, is said where it happens; in every trainer that is:

- data loading and augmentation (the tests switch augmentation off on both sides and hand each
  step its batch: pixels `x` in [0, 1], NCHW float32, and what the script's loader makes of
  them, e.g. the normalised `X` of fast_adversarial and N-FGSM);
- the random draws: where a script calls `uniform_` or `randn`, the trainer takes that tensor as
  an argument (named after the script's variable), so both frameworks use the same numbers;
- `.cuda()`, logging, printing, checkpointing and evaluation;
- apex mixed precision (fast_adversarial): the trainers run in float32.

The sources were read at the commits listed in docs/methods.md ("Released code read"); the full
files are saved under /work/notes/src/<owner>_<repo>__<path>. RegMix's code is not public: the
FGSM-AMR / FGSM-AGR trainer is the FGSM-PGK CIFAR-10 loop with the loss docs/methods.md
("RegMix") states.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # fast_adversarial CIFAR10/utils.py:8 (= N-FGSM, Rice)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)  # fast_adversarial CIFAR10/utils.py:9


def clamp(X, lower_limit, upper_limit):
  """fast_adversarial CIFAR10/utils.py:18-19 (= FGSM-PGK utils.py:28-29, N-FGSM
  attack_utils.py:16-17, robust_overfitting train_cifar.py:29-30)."""
  return torch.max(torch.min(X, upper_limit), lower_limit)


def _channels(values):
  return torch.tensor(values).view(3, 1, 1)


class _Trainer:
  """What every trainer shares: the optimiser's current rate and momentum (read before a step,
  i.e. what that step uses) and an iteration counter for the per-epoch schedules."""

  opt: torch.optim.Optimizer

  def __init__(self, steps_per_epoch: int):
    self.steps_per_epoch = steps_per_epoch
    self.iteration = 0  # optimiser steps done
    self.history: list[dict[str, float]] = []

  def _record(self):
    group = self.opt.param_groups[0]
    self.history.append({"lr": float(group["lr"]), "momentum": float(group["momentum"])})

  @property
  def epoch(self) -> int:  # 0-indexed epoch of the coming step
    return self.iteration // self.steps_per_epoch

  @property
  def i(self) -> int:  # index of the coming step within its epoch
    return self.iteration % self.steps_per_epoch


# ------------------------------------------------------------------------------------------------
# FGSM-PGK (jiaxiaojunQAQ/FGSM-PGK@ef58b3c FGSM_PGK_CIFAR10.py = C10, FGSM_PGK_CIFAR100.py = C100)
# and RegMix's FGSM-AMR / FGSM-AGR on its loop (docs/methods.md, "RegMix").


def _label_smoothing(label, factor, num_classes):
  """C10:47-52 (`np.eye(10)`, `float(10 - 1)`) / C100:47-52 (`np.eye(100)`)."""
  one_hot = np.eye(num_classes)[label.data.cpu().numpy()]

  result = one_hot * factor + (one_hot - 1.) * ((factor - 1) / float(num_classes - 1))

  return result


def LabelSmoothLoss(input, target):  # noqa: N802 (the script's name)
  """C10:56-59."""
  log_prob = F.log_softmax(input, dim=-1)
  loss = (-target * log_prob).sum(dim=-1).mean()
  return loss


class EMA(object):
  """C10:63-97 (= C100:60-94), verbatim."""

  def __init__(self, model, alpha=0.999, buffer_ema=True):
    self.step = 0
    self.model = copy.deepcopy(model)
    self.alpha = alpha
    self.buffer_ema = buffer_ema
    self.shadow = self.get_model_state()
    self.backup = {}
    self.param_keys = [k for k, _ in self.model.named_parameters()]
    self.buffer_keys = [k for k, _ in self.model.named_buffers()]

  def update_params(self, model):
    decay = min(self.alpha, (self.step + 1) / (self.step + 10))
    state = model.state_dict()
    for name in self.param_keys:
      self.shadow[name].copy_(decay * self.shadow[name] + (1 - decay) * state[name])
    for name in self.buffer_keys:
      if self.buffer_ema:
        self.shadow[name].copy_(decay * self.shadow[name] + (1 - decay) * state[name])
      else:
        self.shadow[name].copy_(state[name])
    self.step += 1

  def apply_shadow(self):
    self.backup = self.get_model_state()
    self.model.load_state_dict(self.shadow)

  def restore(self):
    self.model.load_state_dict(self.backup)

  def get_model_state(self):
    return {
        k: v.clone().detach()
        for k, v in self.model.state_dict().items()
    }


def _kl(p_logits, q_logits):
  """`KL(P(p) || P(q))` per example (docs/methods.md, notation)."""
  return (F.softmax(p_logits, dim=1)
          * (F.log_softmax(p_logits, dim=1) - F.log_softmax(q_logits, dim=1))).sum(dim=1)


class FgsmPgk(_Trainer):
  """FGSM-PGK's `main()` (C10 with `rules="cifar10"`, C100 with `rules="cifar100"`), from the model
  on (C10:146-173, 275-352; C100:143-170, 272-352), one `step` per iteration of the inner loop.

  The rules differ in two places only: the ratio `adv_acc / clean_acc` (C10:312, 338, 343) or
  `adv_acc / (clean_acc + 1)` (C100:309, 338, 343), and where the teacher moves: after the
  `if / else` at loop-body indent in C10 (l.347-348: every step), inside the `else:` in C100
  (l.347-348: only when the ratio is >= EMA_value, its warm-up counter `EMA.step` counting those
  updates).

  `loss="pgk"` is the released loss (C10:326-327). `loss="amr"` / `"agr"` are RegMix's FGSM-AMR
  and FGSM-AGR as docs/methods.md ("RegMix") states them, on the C10 loop: the MSE replaced by
  `amr_alpha KL(P(z0) || P(z_adv)) + amr_beta KL(P(z_adv) || P(z0))`, and for AGR the
  cross-entropy aimed at `(1 - agr_gamma) y~ + agr_gamma P(f(x))`, `f(x)` from one extra
  train-mode pass made first, nothing detached.

  The MultiStepLR milestones are the script's `lr_steps * 100/110, lr_steps * 105/110`
  (C10:167, 172-173) written as `lr_steps * m / epochs` for `milestone_epochs` m (100, 105) and
  `epochs` 110: the same numbers for the released run, and a short test run can place them.
  """

  def __init__(self, model, *, rules: str, num_classes: int, epochs: int, iter_num: int,
               milestone_epochs: Sequence[float] = (100, 105), lr_max=0.1, momentum=0.9,
               weight_decay=5e-4, epsilon=8, alpha=8, factor=0.5, lamda=5.6,
               momentum_decay=0.3, EMA_value=0.82, loss="pgk", amr_alpha=4.0, amr_beta=2.0,
               agr_gamma=0.05):
    super().__init__(iter_num)
    if rules not in ("cifar10", "cifar100"):
      raise ValueError(rules)
    self.rules, self.num_classes, self.loss = rules, num_classes, loss
    self.factor, self.lamda, self.momentum_decay, self.EMA_value = (
        factor, lamda, momentum_decay, EMA_value)
    self.amr_alpha, self.amr_beta, self.agr_gamma = amr_alpha, amr_beta, agr_gamma
    # utils.py:19-25: mean 0, std 1 (no normalisation); the image box [0, 1].
    std = _channels((1.0, 1.0, 1.0))
    mu = _channels((0.0, 0.0, 0.0))
    self.upper_limit = ((1 - mu) / std)
    self.lower_limit = ((0 - mu) / std)
    self.epsilon = (epsilon / 255.) / std  # C10:135
    self.alpha = (alpha / 255.) / std  # C10:136
    self.model = model
    model.train()  # C10:154
    self.teacher_model = EMA(model)  # C10:155
    self.opt = torch.optim.SGD(model.parameters(), lr=lr_max, momentum=momentum,
                               weight_decay=weight_decay)  # C10:156
    lr_steps = epochs * iter_num  # C10:167
    self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
        self.opt, milestones=[lr_steps * m / epochs for m in milestone_epochs],
        gamma=0.1)  # C10:172-173

  def step(self, X, y, delta, momentum):
    """One iteration of C10:257-352 on the (augmented) batch `X`, `y` with this batch's buffers
    `delta` = `all_delta[...]` and `momentum` = `all_momentum[...]` (C10:259-262). Returns the new
    buffers (written back at C10:350-352), the two correct counts and whether the teacher moved."""
    model, opt, teacher_model = self.model, self.opt, self.teacher_model
    epsilon, alpha = self.epsilon, self.alpha
    lower_limit, upper_limit = self.lower_limit, self.upper_limit
    self._record()
    next_delta = delta.clone().detach()  # C10:260
    delta = delta.clone().detach()  # C10:259
    momentum = momentum.clone().detach()  # C10:262

    label_smoothing = torch.tensor(
        _label_smoothing(y, self.factor, self.num_classes)).float()  # C10:275

    clean = None
    if self.loss == "agr":  # docs/methods.md "RegMix": CLN = f(x), first, train mode
      clean = model(X)

    delta.requires_grad = True  # C10:282
    ori_output = model(X + delta[:X.size(0)])  # C10:285
    clean_acc = (ori_output.max(1)[1] == y).sum().item()  # C10:286
    ori_loss = LabelSmoothLoss(ori_output, label_smoothing.float())  # C10:287

    decay = self.momentum_decay  # C10:290
    ori_loss.backward(retain_graph=True)  # C10:292
    x_grad = delta.grad.detach()  # C10:293
    adv_delta = delta.detach().clone()  # C10:295

    adv_delta.data = clamp(delta + alpha * torch.sign(x_grad), -epsilon, epsilon)  # C10:297
    adv_delta.data[:X.size(0)] = clamp(adv_delta[:X.size(0)], lower_limit - X,
                                       upper_limit - X)  # C10:298

    adv_delta = adv_delta.detach()  # C10:306

    output = model(X + adv_delta[:X.size(0)])  # C10:309
    adv_acc = (output.max(1)[1] == y).sum().item()  # C10:310
    grad_norm = torch.norm(x_grad, p=1)  # C10:311
    if self.rules == "cifar10":
      ratio = adv_acc / clean_acc  # C10:312 (ZeroDivisionError when clean_acc == 0, as there)
    else:
      ratio = adv_acc / (clean_acc + 1)  # C100:309
    attack_value = 2 - ratio  # C10:312 / C100:309
    momentum = (x_grad / grad_norm) * attack_value + momentum * decay  # C10:313

    next_delta.data = clamp(delta + alpha * torch.sign(momentum), -epsilon, epsilon)  # C10:320
    next_delta.data[:X.size(0)] = clamp(next_delta[:X.size(0)], lower_limit - X,
                                        upper_limit - X)  # C10:321

    # C10:326-327: MSELoss(reduce=True, size_average=True) is reduction="mean".
    loss_fn = torch.nn.MSELoss(reduction="mean")
    if self.loss == "pgk":
      loss = LabelSmoothLoss(output, (label_smoothing).float()) + self.lamda * loss_fn(
          output.float(), ori_output.float())  # C10:327
    else:  # docs/methods.md "RegMix": AMR, and for AGR the mixed CE target
      target = label_smoothing.float()
      if self.loss == "agr":
        target = (1 - self.agr_gamma) * target + self.agr_gamma * F.softmax(clean, dim=1)
      amr = self.amr_alpha * _kl(ori_output, output) + self.amr_beta * _kl(output, ori_output)
      loss = LabelSmoothLoss(output, target) + amr.mean()
    opt.zero_grad()  # C10:328
    loss.backward()  # C10:330
    opt.step()  # C10:333
    self.scheduler.step()  # C10:337
    self.iteration += 1
    moved = False
    if ratio < self.EMA_value:  # C10:338 / C100:338
      teacher_model.alpha = 0.999  # C10:339
    else:
      weight = ratio / self.EMA_value  # C10:343
      teacher_model.alpha = 0.99999 * weight  # C10:344
      if teacher_model.alpha > 1:  # C10:345
        teacher_model.alpha = 1  # C10:346
      if self.rules == "cifar100":
        teacher_model.update_params(model)  # C100:347 (inside the else:)
        teacher_model.apply_shadow()  # C100:348
        moved = True
    if self.rules == "cifar10":
      teacher_model.update_params(model)  # C10:347 (loop-body indent: every step)
      teacher_model.apply_shadow()  # C10:348
      moved = True
    return {"momentum": momentum.detach(), "next_delta": next_delta.detach(),
            "clean_acc": clean_acc, "adv_acc": adv_acc, "ratio": ratio, "ema_moved": moved}


# ------------------------------------------------------------------------------------------------
# FGSM-RS (locuslab/fast_adversarial@54f7287 CIFAR10/train_fgsm.py, utils.py)


class FgsmRs(_Trainer):
  """train_fgsm.py `main()` (l.66-129), one `step` per iteration of the inner loop (l.101-129).

  The script's data are normalised by the loader (utils.py:27: `Normalize(cifar10_mean,
  cifar10_std)`): `step` takes that `X` (`normalise(x)`) and the uniform draw `delta` of
  l.106-109 in the same normalised units (a pixel-space draw divided by `std`). Not ported: apex
  `amp.initialize(opt_level="O2")` (l.76-79) and `amp.scale_loss` (l.114-115, 123-124): this runs
  in float32 (the released default trains an fp16 model with loss scale 1.0)."""

  def __init__(self, model, *, epochs: int, steps_per_epoch: int, lr_min=0., lr_max=0.2,
               weight_decay=5e-4, momentum=0.9, epsilon=8, alpha=10, mean=CIFAR10_MEAN,
               std=CIFAR10_STD):
    super().__init__(steps_per_epoch)
    self.mu = _channels(mean)  # utils.py:11
    self.std = _channels(std)  # utils.py:12
    self.upper_limit = ((1 - self.mu) / self.std)  # utils.py:14
    self.lower_limit = ((0 - self.mu) / self.std)  # utils.py:15
    self.epsilon = (epsilon / 255.) / self.std  # l.68
    self.alpha = (alpha / 255.) / self.std  # l.69
    self.model = model  # l.72
    model.train()  # l.73
    self.opt = torch.optim.SGD(model.parameters(), lr=lr_max, momentum=momentum,
                               weight_decay=weight_decay)  # l.75
    self.criterion = nn.CrossEntropyLoss()  # l.80
    lr_steps = epochs * steps_per_epoch  # l.85
    self.scheduler = torch.optim.lr_scheduler.CyclicLR(
        self.opt, base_lr=lr_min, max_lr=lr_max,
        step_size_up=lr_steps / 2, step_size_down=lr_steps / 2)  # l.86-88

  def normalise(self, x):
    """utils.py:27 `transforms.Normalize(cifar10_mean, cifar10_std)` on pixels in [0, 1]."""
    return (x - self.mu) / self.std

  def step(self, X, y, delta):
    model, opt = self.model, self.opt
    epsilon, alpha = self.epsilon, self.alpha
    lower_limit, upper_limit = self.lower_limit, self.upper_limit
    self._record()
    delta = delta.clone()  # l.106-109: the draw, given
    delta.data = clamp(delta, lower_limit - X, upper_limit - X)  # l.110
    delta.requires_grad = True  # l.111
    output = model(X + delta[:X.size(0)])  # l.112
    loss = F.cross_entropy(output, y)  # l.113
    loss.backward()  # l.114-115 (amp.scale_loss, loss scale 1.0)
    grad = delta.grad.detach()  # l.116
    delta.data = clamp(delta + alpha * torch.sign(grad), -epsilon, epsilon)  # l.117
    delta.data[:X.size(0)] = clamp(delta[:X.size(0)], lower_limit - X, upper_limit - X)  # l.118
    delta = delta.detach()  # l.119
    output = model(X + delta[:X.size(0)])  # l.120
    loss = self.criterion(output, y)  # l.121
    opt.zero_grad()  # l.122
    loss.backward()  # l.123-124 (amp.scale_loss)
    opt.step()  # l.125
    self.scheduler.step()  # l.129
    self.iteration += 1
    return {"delta": delta}


# ------------------------------------------------------------------------------------------------
# N-FGSM (pdejorge/N-FGSM@0a9e4f0 train.py, utils/data_utils.py, utils/attack_utils.py)


class NFgsm(_Trainer):
  """train.py `main()` for CIFAR-10 (l.86-248), one `step` per iteration of the inner loop
  (l.205-248). `X` is the loader's normalised batch (data_utils.py:12-25, `normalize=True`);
  `eta` is the draw of l.217-220 in those units (`unif` times epsilon)."""

  def __init__(self, model, *, epochs: int, steps_per_epoch: int, lr_min=0., lr_max=0.2,
               weight_decay=5e-4, momentum=0.9, epsilon=8, alpha=8, clip=-1.0,
               mean=CIFAR10_MEAN, std=CIFAR10_STD):
    super().__init__(steps_per_epoch)
    self.mu = _channels(mean)  # data_utils.py:21
    self.std = _channels(std)  # data_utils.py:22
    self.upper_limit = ((1 - self.mu) / self.std)  # data_utils.py:24
    self.lower_limit = ((0 - self.mu) / self.std)  # data_utils.py:25
    self.epsilon = (epsilon / 255.) / self.std  # train.py:140
    self.alpha = (alpha / 255.) / self.std  # train.py:141
    self.clip = clip
    if clip > 0:
      self.clip_value = (clip * epsilon / 255.) / self.std  # train.py:143-144
    self.model = model  # train.py:161
    model.train()  # train.py:173
    self.opt = torch.optim.SGD(model.parameters(), lr=lr_max, momentum=momentum,
                               weight_decay=weight_decay)  # train.py:175
    lr_steps = epochs * steps_per_epoch  # train.py:177
    self.scheduler = torch.optim.lr_scheduler.CyclicLR(
        self.opt, base_lr=lr_min, max_lr=lr_max,
        step_size_up=lr_steps / 2, step_size_down=lr_steps / 2)  # train.py:183-184

  def normalise(self, x):
    """data_utils.py `transforms.Normalize(self.cifar10_mean, self.cifar10_std)`."""
    return (x - self.mu) / self.std

  def step(self, X, y, eta):
    model, opt, alpha = self.model, self.opt, self.alpha
    self._record()
    eta = eta.clone()  # train.py:217-220: the draw, given
    eta = clamp(eta, self.lower_limit - X, self.upper_limit - X)  # train.py:221
    eta.requires_grad = True  # train.py:222

    output = model(X + eta)  # train.py:224
    loss = F.cross_entropy(output, y)  # train.py:225
    grad = torch.autograd.grad(loss, eta)[0]  # train.py:226
    grad = grad.detach()  # train.py:227
    delta = eta + alpha * torch.sign(grad)  # train.py:229

    delta = clamp(delta, self.lower_limit - X, self.upper_limit - X)  # train.py:231
    if self.clip > 0:  # train.py:232
      delta = clamp(delta, -self.clip_value, self.clip_value)  # train.py:233

    delta = delta.detach()  # train.py:235

    output = model(X + delta)  # train.py:237

    loss = F.cross_entropy(output, y)  # train.py:240
    opt.zero_grad()  # train.py:241
    loss.backward()  # train.py:242
    opt.step()  # train.py:243
    self.scheduler.step()  # train.py:248
    self.iteration += 1
    return {"delta": delta}


# ------------------------------------------------------------------------------------------------
# PGD-AT as Rice et al. run it (locuslab/robust_overfitting@c47a25c train_cifar.py, utils.py)


class PgdAt(_Trainer):
  """train_cifar.py `main()` with its defaults (`--attack pgd`, `--norm l_inf`, no mixup, no
  l1 / l2, `--lr-schedule piecewise`), one `step` per iteration of the inner loop (l.301-343).
  Pixels stay in [0, 1]; the model sees `normalize(...)` inside every call (l.20-24). The
  restart's uniform draw (l.78) is given: `delta_inits`, one tensor per restart."""

  def __init__(self, model, *, epochs: int, steps_per_epoch: int, lr_max=0.1, epsilon=8,
               pgd_alpha=2, attack_iters=10, restarts=1, mean=CIFAR10_MEAN, std=CIFAR10_STD):
    super().__init__(steps_per_epoch)
    self.mu = _channels(mean)  # l.20
    self.std = _channels(std)  # l.21
    self.upper_limit, self.lower_limit = 1, 0  # l.26
    self.epochs, self.lr_max = epochs, lr_max
    self.epsilon = (epsilon / 255.)  # l.205
    self.pgd_alpha = (pgd_alpha / 255.)  # l.206
    self.attack_iters, self.restarts = attack_iters, restarts
    self.model = model
    self.opt = torch.optim.SGD(model.parameters(), lr=lr_max, momentum=0.9,
                               weight_decay=5e-4)  # l.230
    self.criterion = nn.CrossEntropyLoss()  # l.232

  def normalize(self, X):
    """l.23-24."""
    return (X - self.mu) / self.std

  def lr_schedule(self, t):
    """l.249-255 (`piecewise`)."""
    if t / self.epochs < 0.5:
      return self.lr_max
    elif t / self.epochs < 0.75:
      return self.lr_max / 10.
    else:
      return self.lr_max / 100.

  def attack_pgd(self, model, X, y, epsilon, alpha, attack_iters, restarts, norm, delta_inits,
                 early_stop=False):
    """l.70-123 for `norm="l_inf"`, no mixup; `delta.uniform_(-epsilon, epsilon)` (l.78) is
    `delta_inits[restart]`."""
    lower_limit, upper_limit, normalize = self.lower_limit, self.upper_limit, self.normalize
    max_loss = torch.zeros(y.shape[0])  # l.73
    max_delta = torch.zeros_like(X)  # l.74
    for restart in range(restarts):  # l.75
      delta = torch.zeros_like(X)  # l.76
      if norm == "l_inf":  # l.77
        delta.copy_(delta_inits[restart])  # l.78 (the draw, given)
      else:
        raise ValueError(norm)  # l.79-86: l_2 not ported
      delta = clamp(delta, lower_limit - X, upper_limit - X)  # l.87
      delta.requires_grad = True  # l.88
      for _ in range(attack_iters):  # l.89
        output = model(normalize(X + delta))  # l.90
        if early_stop:  # l.91
          index = torch.where(output.max(1)[1] == y)[0]  # l.92
        else:
          index = slice(None, None, None)  # l.94
        if not isinstance(index, slice) and len(index) == 0:  # l.95
          break  # l.96
        loss = F.cross_entropy(output, y)  # l.101
        loss.backward()  # l.102
        grad = delta.grad.detach()  # l.103
        d = delta[index, :, :, :]  # l.104
        g = grad[index, :, :, :]  # l.105
        x = X[index, :, :, :]  # l.106
        if norm == "l_inf":  # l.107
          d = torch.clamp(d + alpha * torch.sign(g), min=-epsilon, max=epsilon)  # l.108
        d = clamp(d, lower_limit - x, upper_limit - x)  # l.113
        delta.data[index, :, :, :] = d  # l.114
        delta.grad.zero_()  # l.115
      all_loss = F.cross_entropy(model(normalize(X + delta)), y, reduction="none")  # l.120
      max_delta[all_loss >= max_loss] = delta.detach()[all_loss >= max_loss]  # l.121
      max_loss = torch.max(max_loss, all_loss)  # l.122
    return max_delta  # l.123

  def step(self, X, y, delta_inits):
    model, opt, criterion = self.model, self.opt, self.criterion
    model.train()  # l.294 (each epoch)
    lr = self.lr_schedule(self.epoch + (self.i + 1) / self.steps_per_epoch)  # l.308
    opt.param_groups[0].update(lr=lr)  # l.309
    self._record()
    delta = self.attack_pgd(model, X, y, self.epsilon, self.pgd_alpha, self.attack_iters,
                            self.restarts, "l_inf", delta_inits)  # l.316
    delta = delta.detach()  # l.317
    robust_output = model(self.normalize(torch.clamp(
        X + delta[:X.size(0)], min=self.lower_limit, max=self.upper_limit)))  # l.324
    robust_loss = criterion(robust_output, y)  # l.328
    opt.zero_grad()  # l.335
    robust_loss.backward()  # l.336
    opt.step()  # l.337
    output = model(self.normalize(X))  # l.339
    loss = criterion(output, y)  # l.343
    del loss
    self.iteration += 1
    return {"delta": delta}


# ------------------------------------------------------------------------------------------------
# TRADES (yaodongyu/TRADES@6e8e11b trades.py = TL, train_trades_cifar10.py = TR)


def trades_loss(model, x_natural, y, optimizer, step_size=0.003, epsilon=0.031,
                perturb_steps=10, beta=1.0, distance="l_inf", *, noise, record=None):
  """TL:17-84 for `distance="l_inf"`; `noise` is TL:31's `torch.randn(x_natural.shape)`.
  `record` (a dict), when given, receives the attack's reference logits `model(x_natural)` in
  eval mode and the adversarial examples `x_adv` (what the test compares)."""
  # define KL-loss
  criterion_kl = nn.KLDivLoss(reduction="sum")  # TL:27 (`size_average=False`)
  model.eval()  # TL:28
  batch_size = len(x_natural)  # TL:29
  # generate adversarial example
  x_adv = x_natural.detach() + 0.001 * noise.detach()  # TL:31
  if distance == "l_inf":  # TL:32
    for _ in range(perturb_steps):  # TL:33
      x_adv.requires_grad_()  # TL:34
      with torch.enable_grad():  # TL:35
        loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1),
                               F.softmax(model(x_natural), dim=1))  # TL:36-37
      grad = torch.autograd.grad(loss_kl, [x_adv])[0]  # TL:38
      x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())  # TL:39
      x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)  # TL:40
      x_adv = torch.clamp(x_adv, 0.0, 1.0)  # TL:41
  else:
    raise ValueError(distance)  # TL:42-72: l_2 not ported
  if record is not None:
    with torch.no_grad():
      record["reference"] = model(x_natural).detach()
  model.train()  # TL:73

  x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()  # TL:75 (Variable(..., requires_grad=False))
  if record is not None:
    record["x_adv"] = x_adv
  # zero gradient
  optimizer.zero_grad()  # TL:77
  # calculate robust loss
  logits = model(x_natural)  # TL:79
  loss_natural = F.cross_entropy(logits, y)  # TL:80
  loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                                  F.softmax(model(x_natural), dim=1))  # TL:81-82
  loss = loss_natural + beta * loss_robust  # TL:83
  return loss  # TL:84


class Trades(_Trainer):
  """TR `main()` (l.150-160) and `train()` (l.73-90): one `step` per batch. The per-epoch
  `adjust_learning_rate(optimizer, epoch)` (l.137-147) runs before the first step of each
  1-indexed epoch (l.155-157); its thresholds `epoch >= 75, 90, 100` are `drops` (the released
  values by default; a short test run moves them)."""

  def __init__(self, model, *, steps_per_epoch: int, lr=0.1, momentum=0.9, weight_decay=2e-4,
               epsilon=0.031, num_steps=10, step_size=0.007, beta=6.0,
               drops: Sequence[int] = (75, 90, 100)):
    super().__init__(steps_per_epoch)
    self.lr, self.drops = lr, tuple(drops)
    self.epsilon, self.num_steps, self.step_size, self.beta = epsilon, num_steps, step_size, beta
    self.model = model  # TR:152
    self.optimizer = self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                                weight_decay=weight_decay)  # TR:153

  def adjust_learning_rate(self, optimizer, epoch):
    """TR:137-147."""
    lr = self.lr
    if epoch >= self.drops[0]:
      lr = self.lr * 0.1
    if epoch >= self.drops[1]:
      lr = self.lr * 0.01
    if epoch >= self.drops[2]:
      lr = self.lr * 0.001
    for param_group in optimizer.param_groups:
      param_group["lr"] = lr

  def step(self, data, target, noise):
    model, optimizer = self.model, self.optimizer
    if self.i == 0:  # TR:155-157: `for epoch in range(1, args.epochs + 1)`
      self.adjust_learning_rate(optimizer, self.epoch + 1)
    self._record()
    model.train()  # TR:74
    optimizer.zero_grad()  # TR:78
    # calculate robust loss
    record = {}
    loss = trades_loss(model=model, x_natural=data, y=target, optimizer=optimizer,
                       step_size=self.step_size, epsilon=self.epsilon,
                       perturb_steps=self.num_steps, beta=self.beta, noise=noise,
                       record=record)  # TR:81-88
    loss.backward()  # TR:89
    optimizer.step()  # TR:90
    self.iteration += 1
    return {"loss": float(loss.detach()), **record}


# ------------------------------------------------------------------------------------------------
# MART (YisenWang/MART@2d83e17 mart.py = ML, train_wideresnet.py = MW)


def mart_loss(model, x_natural, y, optimizer, step_size=0.007, epsilon=0.031, perturb_steps=10,
              beta=6.0, distance="l_inf", *, noise):
  """ML:7-58 for `distance="l_inf"`; `noise` is ML:20's `torch.randn(x_natural.shape)`."""
  kl = nn.KLDivLoss(reduction="none")  # ML:16
  model.eval()  # ML:17
  batch_size = len(x_natural)  # ML:18
  # generate adversarial example
  x_adv = x_natural.detach() + 0.001 * noise.detach()  # ML:20
  if distance == "l_inf":  # ML:21
    for _ in range(perturb_steps):  # ML:22
      x_adv.requires_grad_()  # ML:23
      with torch.enable_grad():  # ML:24
        loss_ce = F.cross_entropy(model(x_adv), y)  # ML:25
      grad = torch.autograd.grad(loss_ce, [x_adv])[0]  # ML:26
      x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())  # ML:27
      x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)  # ML:28
      x_adv = torch.clamp(x_adv, 0.0, 1.0)  # ML:29
  else:
    x_adv = torch.clamp(x_adv, 0.0, 1.0)  # ML:31
  model.train()  # ML:32

  x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()  # ML:34
  # zero gradient
  optimizer.zero_grad()  # ML:36

  logits = model(x_natural)  # ML:38

  logits_adv = model(x_adv)  # ML:40

  adv_probs = F.softmax(logits_adv, dim=1)  # ML:42

  tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]  # ML:44

  new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])  # ML:46

  loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(
      torch.log(1.0001 - adv_probs + 1e-12), new_y)  # ML:48

  nat_probs = F.softmax(logits, dim=1)  # ML:50

  true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()  # ML:52

  loss_robust = (1.0 / batch_size) * torch.sum(
      torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1)
      * (1.0000001 - true_probs))  # ML:54-55
  loss = loss_adv + float(beta) * loss_robust  # ML:56

  return loss  # ML:58


class Mart(_Trainer):
  """MW `main()` (l.167-183) and `train()` (l.84-101): one `step` per batch;
  `adjust_learning_rate(optimizer, epoch)` (l.109-119) before each 1-indexed epoch (l.176-178),
  its thresholds `epoch >= 100, 90, 75` as `drops` = (75, 90, 100)."""

  def __init__(self, model, *, steps_per_epoch: int, lr=0.1, momentum=0.9, weight_decay=7e-4,
               epsilon=0.031, num_steps=10, step_size=0.007, beta=6.0,
               drops: Sequence[int] = (75, 90, 100)):
    super().__init__(steps_per_epoch)
    self.lr, self.drops = lr, tuple(drops)
    self.epsilon, self.num_steps, self.step_size, self.beta = epsilon, num_steps, step_size, beta
    self.model = model  # MW:169
    self.optimizer = self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                                weight_decay=weight_decay)  # MW:171

  def adjust_learning_rate(self, optimizer, epoch):
    """MW:109-119."""
    lr = self.lr
    if epoch >= self.drops[2]:
      lr = self.lr * 0.001
    elif epoch >= self.drops[1]:
      lr = self.lr * 0.01
    elif epoch >= self.drops[0]:
      lr = self.lr * 0.1
    for param_group in optimizer.param_groups:
      param_group["lr"] = lr

  def step(self, data, target, noise):
    model, optimizer = self.model, self.optimizer
    if self.i == 0:  # MW:176-178: `for epoch in range(1, args.epochs + 1)`
      self.adjust_learning_rate(optimizer, self.epoch + 1)
    self._record()
    model.train()  # MW:85
    optimizer.zero_grad()  # MW:89
    loss = mart_loss(model=model, x_natural=data, y=target, optimizer=optimizer,
                     step_size=self.step_size, epsilon=self.epsilon,
                     perturb_steps=self.num_steps, beta=self.beta, noise=noise)  # MW:92-99
    loss.backward()  # MW:100
    optimizer.step()  # MW:101
    self.iteration += 1
    return {"loss": float(loss.detach())}


# ------------------------------------------------------------------------------------------------
# D2R + CAG (lusti-Yu/D2R@832b29f D2R/D2R.py = DL, D2R/train_D2R_cifar100.py = DT)


def D2R_loss(model, model_teacher, x_natural, y, optimizer, step_size=0.003,  # noqa: N802
             epsilon=0.031, perturb_steps=10, beta=1.0, distance="l_inf", *, noise):
  """DL:16-123 for `distance="l_inf"`; `noise` is DL:38's `torch.randn(x_natural.shape)`."""
  # define KL-loss
  def criterion_kl(a, b):  # DL:27-29
    loss = -a * b + torch.log(b + 1e-5) * b
    return loss
  mse = torch.nn.MSELoss()  # DL:30
  ce = torch.nn.CrossEntropyLoss()  # DL:31

  model.eval()  # DL:34
  model_teacher.eval()  # DL:35
  # generate adversarial example
  x_adv = x_natural.detach() + 0.001 * noise.detach()  # DL:38
  if distance == "l_inf":  # DL:39
    for _ in range(perturb_steps):  # DL:40
      x_adv.requires_grad_()  # DL:41
      with torch.enable_grad():  # DL:42
        loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1),
                               F.softmax(model_teacher(x_natural), dim=1))  # DL:43-44
        loss_kl = torch.sum(loss_kl)  # DL:45
      grad = torch.autograd.grad(loss_kl, [x_adv])[0]  # DL:46
      x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())  # DL:47
      x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)  # DL:48
      x_adv = torch.clamp(x_adv, 0.0, 1.0)  # DL:49
  else:
    raise ValueError(distance)  # DL:50-69: l_2 not ported
  model.train()  # DL:70
  model_teacher.train()  # DL:71
  x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()  # DL:73
  # zero gradient
  optimizer.zero_grad()  # DL:75
  # calculate robust loss
  out_adv = model(x_adv)  # DL:77
  out_natural = model(x_natural)  # DL:78
  out = model_teacher(x_natural)  # DL:79

  def kl_loss(a, b):  # DL:81-83
    loss = -a * b + torch.log(b + 1e-5) * b
    return loss

  kl_Loss1 = kl_loss(F.log_softmax(out, dim=1), F.softmax(out_natural, dim=1))  # DL:86-87
  kl_Loss2 = kl_loss(F.log_softmax(out_natural, dim=1), F.softmax(out, dim=1))  # DL:88-89

  kl_Loss1 = torch.mean(kl_Loss1)  # DL:91
  kl_Loss2 = torch.mean(kl_Loss2)  # DL:92

  loss_klloss = torch.abs(kl_Loss1 - kl_Loss2)  # DL:94

  kl_Loss5 = kl_loss(F.log_softmax(out, dim=1), F.softmax(out_adv, dim=1))  # DL:96-97

  kl_Loss5 = torch.mean(kl_Loss5)  # DL:101

  loss = ce(out, y) + mse(out_adv, out) + 20 * loss_klloss + 30 * kl_Loss5  # DL:109

  return loss  # DL:123


class D2R(_Trainer):
  """DT `main()` (l.243-262) and `train()` (l.121-138): one SGD over both models (l.256), one
  `step` per batch; `adjust_learning_rate(optimizer, epoch)` (l.186-198) before each 1-indexed
  epoch (l.258-260): 0.02 in epoch 1, then the thresholds `epoch >= 76, 91, 101` as `drops`.
  `model` is the target (l.245), `model_teacher` the guide (l.248)."""

  def __init__(self, model, model_teacher, *, steps_per_epoch: int, lr=0.1, momentum=0.9,
               weight_decay=2e-4, epsilon=0.031, num_steps=10, step_size=0.007,
               drops: Sequence[int] = (76, 91, 101)):
    super().__init__(steps_per_epoch)
    self.lr, self.drops = lr, tuple(drops)
    self.epsilon, self.num_steps, self.step_size = epsilon, num_steps, step_size
    self.model, self.model_teacher = model, model_teacher
    self.optimizer = self.opt = torch.optim.SGD(
        [{"params": model.parameters()}, {"params": model_teacher.parameters()}], lr=lr,
        momentum=momentum, weight_decay=weight_decay)  # DT:256

  def adjust_learning_rate(self, optimizer, epoch):
    """DT:186-198."""
    lr = self.lr
    if epoch == 1:
      lr = 0.02
    if epoch >= self.drops[0]:
      lr = self.lr * 0.1
    if epoch >= self.drops[1]:
      lr = self.lr * 0.01
    if epoch >= self.drops[2]:
      lr = self.lr * 0.001
    for param_group in optimizer.param_groups:
      param_group["lr"] = lr

  def step(self, data, target, noise):
    model, model_teacher, optimizer = self.model, self.model_teacher, self.optimizer
    if self.i == 0:  # DT:258-260: `for epoch in range(1, args.epochs + 1)`
      self.adjust_learning_rate(optimizer, self.epoch + 1)
    self._record()
    model.train()  # DT:122
    optimizer.zero_grad()  # DT:126
    loss = D2R_loss(model=model, model_teacher=model_teacher, x_natural=data, y=target,
                    optimizer=optimizer, step_size=self.step_size, epsilon=self.epsilon,
                    perturb_steps=self.num_steps, noise=noise)  # DT:129-136
    loss.backward()  # DT:137
    optimizer.step()  # DT:138
    self.iteration += 1
    return {"loss": float(loss.detach())}
