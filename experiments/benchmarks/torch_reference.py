"""PyTorch references for the experiment scripts (torch is not a library dependency).

The models are the PyTorch twins of regmix_jax.models' architectures
(`tests/crosscheck/torch_models.py`, written as the released code writes them, with the same
attribute names, so `regmix_jax.models.torch_weights` moves weights between the two);
`FGSMPGKStep` is an eager FGSM-PGK training step as the released code runs it; `PGDATStep` and
`TRADESStep` run the released PGD-AT and TRADES steps through their line-for-line ports in
`tests/crosscheck/torch_steps.py`. Used by `experiments/benchmarks/benchmark.py` (the
JAX/PyTorch speed ratios) and `experiments/autoattack_vs_torch` (identical weights). Install:
`pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu` (the CPU build).
"""

from __future__ import annotations

import copy
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from regmix_jax.models import torch_weights

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from crosscheck import torch_models, torch_steps  # pylint: disable=g-import-not-at-top,wrong-import-position


def load_flax(net: torch.nn.Module, variables) -> torch.nn.Module:
  """Copies one Flax model's `{"params", "batch_stats"}` into its PyTorch twin; returns it."""
  state = torch_weights.to_torch(variables["params"], variables.get("batch_stats", {}))
  net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                      strict=False)
  return net


class SmallCNN(torch_models.SmallCNN):
  """regmix_jax's small_cnn in PyTorch, with `load_flax`."""

  def load_flax(self, variables):
    """Copies a Flax SmallCNN's `{"params", "batch_stats"}` into this module; returns self."""
    return load_flax(self, variables)


def resnet18(num_classes=10):
  """kuangliu/pytorch-cifar ResNet-18 (regmix_jax `resnet18`)."""
  return torch_models.build("resnet18", num_classes)


def preact_resnet18(num_classes=10):
  """Wong et al.'s PreActResNet-18 (regmix_jax `preact_resnet18`)."""
  return torch_models.build("preact_resnet18", num_classes)


MODELS = {"small_cnn": SmallCNN, "resnet18": resnet18, "preact_resnet18": preact_resnet18}


def augment(x, generator):
  """Pad 4 (zeros), random 32x32 crop and horizontal flip per example: `x [B, C, H, W]`."""
  b, c, h, w = x.shape
  padded = F.pad(x, (4, 4, 4, 4))
  oy = torch.randint(0, 9, (b,), generator=generator)
  ox = torch.randint(0, 9, (b,), generator=generator)
  rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
  cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
  out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
               rows, cols]
  flip = torch.rand(b, generator=generator) < 0.5
  return torch.where(flip[:, None, None, None], out.flip(3), out)


class FGSMPGKStep:
  """One eager FGSM-PGK step (Jia et al.'s released code; `regmix_jax.methods.fgsm_pgk` is the
  JAX version): forward on x + d0, input gradient of the smoothed-label CE, forward on x + d_adv,
  prior/momentum update, loss LSCE + lam * MSE(z_adv, z0), SGD (momentum 0.9, weight decay
  5e-4), EMA of parameters and buffers with the dynamic decay. The input gradient is taken with
  `torch.autograd.grad` (no weight gradients), the cheapest way eager PyTorch allows. With
  `autocast_dtype` (torch.bfloat16) the forward passes run under `torch.autocast("cpu", ...)`,
  losses in float32 as autocast leaves them."""

  def __init__(self, net, *, epsilon=8 / 255, alpha=8 / 255, smoothing=0.5, lam=5.6, mu=0.3,
               tau=0.82, lr=0.01, seed=0, autocast_dtype=None):
    self.autocast_dtype = autocast_dtype
    self.net = net.train()
    self.ema = copy.deepcopy(net)
    for p in self.ema.parameters():
      p.requires_grad_(False)
    self.opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    self.eps, self.alpha, self.smoothing, self.lam, self.mu, self.tau = (
        epsilon, alpha, smoothing, lam, mu, tau)
    self.generator = torch.Generator().manual_seed(seed)
    self.steps = 0

  def _forward(self, x):
    """The network's float32 logits, under autocast when asked."""
    if self.autocast_dtype is None:
      return self.net(x)
    with torch.autocast("cpu", dtype=self.autocast_dtype):
      return self.net(x).float()

  def _targets(self, y, num_classes):
    off = (1 - self.smoothing) / (num_classes - 1)
    return torch.full((len(y), num_classes), off).scatter_(1, y[:, None], self.smoothing)

  def __call__(self, x, y, prior, momentum):
    """`x [B, 3, H, W]` float in [0, 1], `y [B]` int64, `prior`, `momentum` like `x`. Returns
    `(loss, new prior, new momentum)` (tensors; no host sync)."""
    x = augment(x, self.generator)
    clip = lambda d: torch.max(torch.min(d.clamp(-self.eps, self.eps), 1 - x), -x)
    delta = prior.clone().requires_grad_(True)
    z0 = self._forward(x + delta)
    targets = self._targets(y, z0.shape[1])
    lsce = lambda z: -(targets * F.log_softmax(z, dim=1)).sum(1).mean()
    (grad,) = torch.autograd.grad(lsce(z0), delta, retain_graph=True)
    d_adv = clip(prior + self.alpha * grad.sign())
    z_adv = self._forward(x + d_adv)
    with torch.no_grad():
      n0 = (z0.argmax(1) == y).sum().float()
      na = (z_adv.argmax(1) == y).sum().float()
      r = na / n0.clamp(min=1.0)
      l1 = grad.abs().sum()
      momentum = torch.where(l1 > 0, grad / l1.clamp(min=1e-30), 0.0) * (2 - r) + self.mu * momentum
      prior = clip(prior + self.alpha * momentum.sign())
    loss = lsce(z_adv) + self.lam * F.mse_loss(z_adv, z0)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    with torch.no_grad():
      base = torch.where(r < self.tau, torch.tensor(0.999), (0.99999 * r / self.tau).clamp(max=1))
      decay = torch.minimum(base, torch.tensor((self.steps + 1) / (self.steps + 10)))
      for e, p in zip(self.ema.parameters(), self.net.parameters()):
        e.mul_(decay).add_((1 - decay) * p)
      for e, b in zip(self.ema.buffers(), self.net.buffers()):
        if e.dtype.is_floating_point:
          e.mul_(decay).add_((1 - decay) * b)
    self.steps += 1
    return loss.detach(), prior, momentum


class _AutocastStep:
  """What the PGD-AT and TRADES steps share: the augmentation of `FGSMPGKStep`, a generator for
  the step's random draws, and, with `autocast_dtype`, the whole step (attack, loss, backward)
  under `torch.autocast("cpu", ...)`."""

  def __init__(self, seed, autocast_dtype):
    self.generator = torch.Generator().manual_seed(seed)
    self.autocast_dtype = autocast_dtype

  def __call__(self, x, y):
    """`x [B, 3, H, W]` float in [0, 1], `y [B]` int64. Returns the loss (a tensor; None for
    PGD-AT)."""
    x = augment(x, self.generator)
    if self.autocast_dtype is None:
      return self._step(x, y)
    with torch.autocast("cpu", dtype=self.autocast_dtype):
      return self._step(x, y)


class PGDATStep(_AutocastStep):
  """One eager PGD-AT step of robust_overfitting's train_cifar.py (`torch_steps.PgdAt`, line for
  line): 10 train-mode PGD steps from a uniform start, the restart's bookkeeping pass, the
  training pass and its backward, SGD, and the logging pass on x (l.339).

  `same_work=True` computes what regmix_jax's `pgd_at` computes, no more: the released attack
  calls `loss.backward()` (l.102), which also computes every parameter's gradient at each of
  the 10 steps; here each step takes the input gradient alone (`torch.autograd.grad`), the
  passes and the update otherwise the same."""

  def __init__(self, net, *, seed=0, autocast_dtype=None, same_work=False):
    super().__init__(seed, autocast_dtype)
    self.trainer = torch_steps.PgdAt(net.train(), epochs=200, steps_per_epoch=390)
    self.same_work = same_work

  def _step(self, x, y):
    eps = self.trainer.epsilon
    start = torch.rand(x.shape, generator=self.generator) * 2 * eps - eps  # l.78's uniform_
    if not self.same_work:
      self.trainer.step(x, y, [start])  # the port keeps its loss to itself
      return None
    t = self.trainer
    net, normalize, alpha = t.model, t.normalize, t.pgd_alpha
    delta = torch.max(torch.min(start, 1 - x), -x)
    for _ in range(t.attack_iters):
      delta.requires_grad_(True)
      (grad,) = torch.autograd.grad(F.cross_entropy(net(normalize(x + delta)), y), [delta])
      delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
      delta = torch.max(torch.min(delta, 1 - x), -x)
    with torch.no_grad():
      net(normalize(x + delta))  # l.120's bookkeeping pass (one restart: its choice is moot)
    loss = F.cross_entropy(net(normalize(torch.clamp(x + delta, 0, 1))), y)
    t.opt.zero_grad()
    loss.backward()
    t.opt.step()
    with torch.no_grad():
      net(normalize(x))  # l.339's logging pass
    return loss.detach()


class TRADESStep(_AutocastStep):
  """One eager TRADES step of train_trades_cifar10.py (`torch_steps.trades_loss`, line for line,
  beta 6, 10 steps of 0.007 in 0.031), SGD (lr 0.1, momentum 0.9, weight decay 2e-4).

  `same_work=True` computes what regmix_jax's `trades` computes, no more: the released loop runs
  the clean forward pass again in every attack iteration (trades.py:36-37, eval mode: the same
  values each time) and a third training pass on x for the KL's reference (l.81-82, train mode:
  the same values as the first); here the attack's reference is computed once and the loss
  takes both terms from the one clean pass, the third pass only moving BatchNorm's running
  averages (same values, gradients and statistics; 10 forward passes and one backward pass
  fewer), as `regmix_jax.methods.trades` does."""

  def __init__(self, net, *, seed=0, autocast_dtype=None, same_work=False, beta=6.0,
               epsilon=0.031, step_size=0.007, steps=10):
    super().__init__(seed, autocast_dtype)
    self.net, self.same_work = net.train(), same_work
    self.beta, self.epsilon, self.step_size, self.steps = beta, epsilon, step_size, steps
    self.opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)

  def _step(self, x, y):
    noise = torch.randn(x.shape, generator=self.generator)
    if not self.same_work:
      loss = torch_steps.trades_loss(self.net, x, y, self.opt, step_size=self.step_size,
                                     epsilon=self.epsilon, perturb_steps=self.steps,
                                     beta=self.beta, noise=noise)
    else:
      loss = self._same_work_loss(x, y, noise)
    loss.backward()
    self.opt.step()
    return loss.detach()

  def _same_work_loss(self, x, y, noise):
    net = self.net
    net.eval()
    with torch.no_grad():
      reference = F.softmax(net(x), dim=1)
    x_adv = x + 0.001 * noise
    for _ in range(self.steps):
      x_adv.requires_grad_(True)
      kl = F.kl_div(F.log_softmax(net(x_adv), dim=1), reference, reduction="sum")
      (grad,) = torch.autograd.grad(kl, [x_adv])
      x_adv = x_adv.detach() + self.step_size * grad.sign()
      x_adv = torch.min(torch.max(x_adv, x - self.epsilon), x + self.epsilon).clamp(0.0, 1.0)
    net.train()
    self.opt.zero_grad()
    logits = net(x)
    robust = F.kl_div(F.log_softmax(net(x_adv), dim=1), F.softmax(logits, dim=1),
                      reduction="sum") / len(x)
    with torch.no_grad():
      net(x)  # l.82's third pass, for the running averages only
    return F.cross_entropy(logits, y) + self.beta * robust
