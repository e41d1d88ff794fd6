"""PyTorch references for the experiment scripts (torch is not a library dependency).

The models are the PyTorch twins of regmix_jax.models' architectures
(`tests/crosscheck/torch_models.py`, written as the released code writes them, with the same
attribute names, so `regmix_jax.models.torch_weights` moves weights between the two);
`FGSMPGKStep` is an eager FGSM-PGK training step as the released code runs it. Used by
`experiments/benchmark.py` (the JAX/PyTorch speed ratio) and `experiments/autoattack_vs_torch`
(identical weights). Install: `pip install torch==2.13.0`.
"""

from __future__ import annotations

import copy
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from regmix_jax.models import torch_weights

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
from crosscheck import torch_models  # pylint: disable=g-import-not-at-top,wrong-import-position


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
