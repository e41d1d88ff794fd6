"""PyTorch twins of every architecture in `regmix_jax.models`, written as the released code writes
them (NCHW, the same attribute names, the same pooling), for the cross-framework tests and the
benchmark's PyTorch reference. Test oracles, not library code: torch is a test extra.

Sources (each class says its file): jiaxiaojunQAQ/FGSM-PGK@ef58b3c CIFAR10_models/resnet.py and
ImageNet_models/preact_resnet.py; lusti-Yu/D2R@832b29f D2R/models/resnetcifar.py;
locuslab/fast_adversarial@54f7287 CIFAR10/preact_resnet.py; locuslab/robust_overfitting@c47a25c
preactresnet.py; yaodongyu/TRADES@6e8e11b models/wideresnet.py. `SmallCNN` is ours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# regmix_jax's NORMALIZATIONS, as the recipes that normalise apply them inside every call.
_NORMALIZATIONS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
                   "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


class _Normalized(nn.Module):
  """`net((x - mean) / std)`, as fast_adversarial / N-FGSM / robust_overfitting normalise."""

  def __init__(self, net, name):
    super().__init__()
    self.net = net
    mean, std = _NORMALIZATIONS[name]
    self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
    self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

  def forward(self, x):
    return self.net((x - self.mean) / self.std)

  def load_state_dict(self, state_dict, strict=True):  # the wrapped network's names
    return self.net.load_state_dict(state_dict, strict=strict)


class SmallCNN(nn.Module):
  """regmix_jax's small_cnn: 3 x (conv3x3 no bias, BN, ReLU), widths w, 2w, 4w, strides 1, 2, 2,
  global average pooling, linear."""

  def __init__(self, num_classes=10, width=32):
    super().__init__()
    cin = 3
    for i, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2)), 1):
      setattr(self, f"conv{i}", nn.Conv2d(cin, width * mult, 3, stride, 1, bias=False))
      setattr(self, f"bn{i}", nn.BatchNorm2d(width * mult))
      cin = width * mult
    self.linear = nn.Linear(cin, num_classes)

  def forward(self, x):
    for i in range(1, 4):
      x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
    return self.linear(x.mean(dim=(2, 3)))


class BasicBlock(nn.Module):
  """FGSM-PGK CIFAR10_models/resnet.py:14-39 (= D2R resnetcifar.py's)."""
  expansion = 1

  def __init__(self, in_planes, planes, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != self.expansion * planes:
      self.shortcut = nn.Sequential(
          nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
          nn.BatchNorm2d(self.expansion * planes))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    out += self.shortcut(x)
    return F.relu(out)


class ResNet(nn.Module):
  """kuangliu's CIFAR ResNet (FGSM-PGK CIFAR10_models/resnet.py:73-108), with the stage strides
  and final pooling as arguments for D2R's ResNet18_cifar (resnetcifar.py:69-105: strides
  1, 1, 2, 2 and avg_pool2d(out, 8))."""

  def __init__(self, num_classes=10, strides=(1, 2, 2, 2), pool=4):
    super().__init__()
    self.in_planes, self.pool = 64, pool
    self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    for i, (planes, stride) in enumerate(zip((64, 128, 256, 512), strides), 1):
      setattr(self, f"layer{i}", self._make_layer(planes, 2, stride))
    self.linear = nn.Linear(512, num_classes)

  def _make_layer(self, planes, num_blocks, stride):
    layers = []
    for s in [stride] + [1] * (num_blocks - 1):
      layers.append(BasicBlock(self.in_planes, planes, s))
      self.in_planes = planes
    return nn.Sequential(*layers)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    out = F.avg_pool2d(out, self.pool)
    return self.linear(out.view(out.size(0), -1))


class PreActBlock(nn.Module):
  """fast_adversarial CIFAR10/preact_resnet.py:6-29 (`from_activation=False`: the shortcut sees
  the raw input, l.24) or robust_overfitting preactresnet.py:13-34 / FGSM-PGK
  ImageNet_models/preact_resnet.py:13-36 (`from_activation=True`: it sees BN-ReLU(x))."""
  expansion = 1

  def __init__(self, in_planes, planes, stride=1, from_activation=False):
    super().__init__()
    self.from_activation = from_activation
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
    if stride != 1 or in_planes != self.expansion * planes:
      self.shortcut = nn.Sequential(
          nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False))

  def forward(self, x):
    out = F.relu(self.bn1(x))
    if hasattr(self, "shortcut"):
      shortcut = self.shortcut(out if self.from_activation else x)
    else:
      shortcut = x
    out = self.conv1(out)
    out = self.conv2(F.relu(self.bn2(out)))
    return out + shortcut


class PreActResNet(nn.Module):
  """PreActResNet-18: `variant` "wong" (fast_adversarial preact_resnet.py:58-92: final
  `relu(bn)`, avg_pool2d 4, Linear 512), "rice" (robust_overfitting preactresnet.py:65-95: the
  same with the activation shortcut) or "fgsm_pgk" (FGSM-PGK ImageNet_models/preact_resnet.py:
  67-100: activation shortcut, no final BN, avg_pool2d 4 on the 8x8 map, Linear(2048))."""

  def __init__(self, num_classes=10, variant="wong"):
    super().__init__()
    self.variant, self.in_planes = variant, 64
    self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    for i, (planes, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), 1):
      setattr(self, f"layer{i}", self._make_layer(planes, 2, stride))
    if variant == "fgsm_pgk":
      self.linear = nn.Linear(512 * 4, num_classes)
    else:
      self.bn = nn.BatchNorm2d(512)
      self.linear = nn.Linear(512, num_classes)

  def _make_layer(self, planes, num_blocks, stride):
    layers = []
    for s in [stride] + [1] * (num_blocks - 1):
      layers.append(PreActBlock(self.in_planes, planes, s, self.variant != "wong"))
      self.in_planes = planes
    return nn.Sequential(*layers)

  def forward(self, x):
    out = self.conv1(x)
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    if self.variant != "fgsm_pgk":
      out = F.relu(self.bn(out))
    out = F.avg_pool2d(out, 4)
    return self.linear(out.view(out.size(0), -1))


class WideBasicBlock(nn.Module):
  """TRADES models/wideresnet.py:7-34."""

  def __init__(self, in_planes, out_planes, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1,
                           bias=False)
    self.bn2 = nn.BatchNorm2d(out_planes)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
    self.equalInOut = in_planes == out_planes
    self.convShortcut = (not self.equalInOut) and nn.Conv2d(
        in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False) or None

  def forward(self, x):
    if not self.equalInOut:
      x = self.relu1(self.bn1(x))
    else:
      out = self.relu1(self.bn1(x))
    out = self.relu2(self.bn2(self.conv1(out if self.equalInOut else x)))
    out = self.conv2(out)
    return torch.add(x if self.equalInOut else self.convShortcut(x), out)


class NetworkBlock(nn.Module):
  """TRADES models/wideresnet.py:37-47."""

  def __init__(self, nb_layers, in_planes, out_planes, stride):
    super().__init__()
    self.layer = nn.Sequential(*[
        WideBasicBlock(i == 0 and in_planes or out_planes, out_planes, i == 0 and stride or 1)
        for i in range(int(nb_layers))])

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):
  """TRADES models/wideresnet.py:50-90, including the unused `sub_block1` (l.63)."""

  def __init__(self, depth=34, num_classes=10, widen_factor=10):
    super().__init__()
    channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    n = (depth - 4) // 6
    self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
    self.block1 = NetworkBlock(n, channels[0], channels[1], 1)
    self.sub_block1 = NetworkBlock(n, channels[0], channels[1], 1)
    self.block2 = NetworkBlock(n, channels[1], channels[2], 2)
    self.block3 = NetworkBlock(n, channels[2], channels[3], 2)
    self.bn1 = nn.BatchNorm2d(channels[3])
    self.relu = nn.ReLU(inplace=True)
    self.fc = nn.Linear(channels[3], num_classes)
    self.nChannels = channels[3]

  def forward(self, x):
    out = self.block3(self.block2(self.block1(self.conv1(x))))
    out = self.relu(self.bn1(out))
    out = F.avg_pool2d(out, 8)
    return self.fc(out.view(-1, self.nChannels))


def build(name: str, num_classes: int = 10, *, width: int = 0, depth: int = 0,
          normalize: str = "") -> nn.Module:
  """The PyTorch twin of `regmix_jax.models.get_model(name, num_classes, ...)`."""
  nets = {
      "small_cnn": lambda: SmallCNN(num_classes, width or 32),
      "resnet18": lambda: ResNet(num_classes),
      "lbgat_resnet18": lambda: ResNet(num_classes, strides=(1, 1, 2, 2), pool=8),
      "preact_resnet18": lambda: PreActResNet(num_classes, "wong"),
      "preact_resnet18_rice": lambda: PreActResNet(num_classes, "rice"),
      "preact_resnet18_fgsm_pgk": lambda: PreActResNet(num_classes, "fgsm_pgk"),
      "wrn": lambda: WideResNet(depth or 34, num_classes, width or 10),
      "wrn34_10": lambda: WideResNet(34, num_classes, 10),
  }
  net = nets[name]()
  return _Normalized(net, normalize) if normalize else net
