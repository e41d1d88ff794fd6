"""PyTorch references for the experiment scripts (torch is not a library dependency).

The models are regmix_jax.models' architectures in NCHW, written the way the papers' released
code writes them (kuangliu's ResNet-18, Wong et al.'s PreActResNet-18, and our small CNN);
`FGSMPGKStep` is an eager FGSM-PGK training step as the released code runs it. Used by
`experiments/benchmark.py` (the JAX/PyTorch speed ratio) and `experiments/autoattack_vs_torch`
(identical weights). Install: `pip install torch==2.13.0`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _conv3(cin, cout, stride):
  return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)


class SmallCNN(nn.Module):
  """regmix_jax.models.small_cnn.SmallCNN: 3x (conv3x3 no bias, BN, ReLU) with widths w, 2w, 4w
  and strides 1, 2, 2, global average pool, linear."""

  def __init__(self, num_classes=10, width=32):
    super().__init__()
    layers, cin = [], 3
    for mult, stride in ((1, 1), (2, 2), (4, 2)):
      layers += [_conv3(cin, width * mult, stride), nn.BatchNorm2d(width * mult), nn.ReLU()]
      cin = width * mult
    self.features = nn.Sequential(*layers)
    self.head = nn.Linear(cin, num_classes)

  def forward(self, x):
    return self.head(self.features(x).mean(dim=(2, 3)))

  def load_flax(self, variables):
    """Copies a Flax SmallCNN's `{"params", "batch_stats"}` into this module; returns self."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    params, stats = variables["params"], variables["batch_stats"]
    t = lambda a: torch.from_numpy(np.array(a, np.float32))
    with torch.no_grad():
      for i in range(3):
        conv, bn = self.features[3 * i], self.features[3 * i + 1]
        conv.weight.copy_(t(params[f"Conv_{i}"]["kernel"]).permute(3, 2, 0, 1))  # HWIO -> OIHW
        bn.weight.copy_(t(params[f"BatchNorm_{i}"]["scale"]))
        bn.bias.copy_(t(params[f"BatchNorm_{i}"]["bias"]))
        bn.running_mean.copy_(t(stats[f"BatchNorm_{i}"]["mean"]))
        bn.running_var.copy_(t(stats[f"BatchNorm_{i}"]["var"]))
      self.head.weight.copy_(t(params["head"]["kernel"]).T)  # [in, out] -> [out, in]
      self.head.bias.copy_(t(params["head"]["bias"]))
    return self


class BasicBlock(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1, self.bn1 = _conv3(cin, cout, stride), nn.BatchNorm2d(cout)
    self.conv2, self.bn2 = _conv3(cout, cout, 1), nn.BatchNorm2d(cout)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm2d(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class PreActBlock(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3(cin, cout, stride)
    self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3(cout, cout, 1)
    self.shortcut = None
    if stride != 1 or cin != cout:
      self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

  def forward(self, x):
    out = F.relu(self.bn1(x))
    shortcut = x if self.shortcut is None else self.shortcut(x)
    out = self.conv1(out)
    out = self.conv2(F.relu(self.bn2(out)))
    return out + shortcut


class _ResNet(nn.Module):
  def __init__(self, block, preact, num_classes=10):
    super().__init__()
    self.preact = preact
    self.conv1 = _conv3(3, 64, 1)
    self.bn1 = nn.BatchNorm2d(512 if preact else 64)
    layers, cin = [], 64
    for width, stride in zip((64, 128, 256, 512), (1, 2, 2, 2)):
      for i in range(2):
        layers.append(block(cin, width, stride if i == 0 else 1))
        cin = width
    self.layers = nn.Sequential(*layers)
    self.linear = nn.Linear(512, num_classes)

  def forward(self, x):
    x = self.conv1(x)
    if not self.preact:
      x = F.relu(self.bn1(x))
    x = self.layers(x)
    if self.preact:
      x = F.relu(self.bn1(x))
    return self.linear(x.mean(dim=(2, 3)))


def resnet18(num_classes=10):
  """kuangliu/pytorch-cifar ResNet-18 (regmix_jax `resnet18`)."""
  return _ResNet(BasicBlock, False, num_classes)


def preact_resnet18(num_classes=10):
  """Wong et al.'s PreActResNet-18 (regmix_jax `preact_resnet18`)."""
  return _ResNet(PreActBlock, True, num_classes)


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
  `torch.autograd.grad` (no weight gradients), the cheapest way eager PyTorch allows."""

  def __init__(self, net, *, epsilon=8 / 255, alpha=8 / 255, smoothing=0.5, lam=5.6, mu=0.3,
               tau=0.82, lr=0.01, seed=0):
    self.net = net.train()
    self.ema = copy.deepcopy(net)
    for p in self.ema.parameters():
      p.requires_grad_(False)
    self.opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    self.eps, self.alpha, self.smoothing, self.lam, self.mu, self.tau = (
        epsilon, alpha, smoothing, lam, mu, tau)
    self.generator = torch.Generator().manual_seed(seed)
    self.steps = 0

  def _targets(self, y, num_classes):
    off = (1 - self.smoothing) / (num_classes - 1)
    return torch.full((len(y), num_classes), off).scatter_(1, y[:, None], self.smoothing)

  def __call__(self, x, y, prior, momentum):
    """`x [B, 3, H, W]` float in [0, 1], `y [B]` int64, `prior`, `momentum` like `x`. Returns
    `(loss, new prior, new momentum)` (tensors; no host sync)."""
    x = augment(x, self.generator)
    clip = lambda d: torch.max(torch.min(d.clamp(-self.eps, self.eps), 1 - x), -x)
    delta = prior.clone().requires_grad_(True)
    z0 = self.net(x + delta)
    targets = self._targets(y, z0.shape[1])
    lsce = lambda z: -(targets * F.log_softmax(z, dim=1)).sum(1).mean()
    (grad,) = torch.autograd.grad(lsce(z0), delta, retain_graph=True)
    d_adv = clip(prior + self.alpha * grad.sign())
    z_adv = self.net(x + d_adv)
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
