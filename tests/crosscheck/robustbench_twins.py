"""PyTorch twins of RobustBench's CIFAR-10 / CIFAR-100 model zoo (the Linf and L2 entries built
from the plain WideResNet / ResNet / DeepMind classes) and of the way `robustbench.utils.load_model`
loads a checkpoint: an oracle for the tests of our RobustBench converter. Test oracles, not library
code: torch is a test extra.

Ported from RobustBench/robustbench@78fcc9e48a07a861268f295a777b975f25155964 (2025-03-31), file by
file (each section names its file): the classes keep the source's attribute names, so
`state_dict()` keys are RobustBench's exactly; only `super(Cls, self)` became `super()`, the
deprecated `ctx.saved_variables` became its alias `ctx.saved_tensors`, `not m.bias is None` became
`m.bias is not None`, and two class names changed (wide_resnet.py's `BasicBlock` is
`WRNBasicBlock` here; cifar100.py's classes whose names cifar10.py also uses get a `C100` suffix).
"""

# robustbench/model_zoo/architectures/dm_wide_resnet.py:
#   Copyright 2020 Deepmind Technologies Limited.
#   Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file
#   except in compliance with the License. You may obtain a copy of the License at
#   http://www.apache.org/licenses/LICENSE-2.0. Unless required by applicable law or agreed to in
#   writing, software distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#   WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the License for the
#   specific language governing permissions and limitations under the License.
#   (From https://github.com/deepmind/deepmind-research adversarial_robustness/pytorch/model_zoo.py)
#
# robustbench/model_zoo/architectures/wide_resnet.py (based on yaodongyu/TRADES),
# robustbench/model_zoo/architectures/resnet.py, robustbench/model_zoo/cifar10.py,
# robustbench/model_zoo/cifar100.py and robustbench/utils.py:
#   MIT License. Copyright (c) 2020 Francesco Croce, Maksym Andriushchenko, Vikash Sehwag
#
#   Permission is hereby granted, free of charge, to any person obtaining a copy of this software
#   and associated documentation files (the "Software"), to deal in the Software without
#   restriction, including without limitation the rights to use, copy, modify, merge, publish,
#   distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
#   Software is furnished to do so, subject to the following conditions:
#
#   The above copyright notice and this permission notice shall be included in all copies or
#   substantial portions of the Software.
#
#   THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
#   BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
#   NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
#   DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
#   OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
#
# (RobustBench's LICENSE puts some model *weights* under other licences, e.g. Apache-2.0 for
# Gowal2020Uncovering*, Rebuffi2021Fixing*, Gowal2021Improving* and Hendrycks2019Using, BSD-3 for
# Rony2019Decoupling; no weights are here.)

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

# --- robustbench/model_zoo/architectures/dm_wide_resnet.py -----------------------------------

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class _Swish(torch.autograd.Function):
  """Custom implementation of swish."""

  @staticmethod
  def forward(ctx, i):
    result = i * torch.sigmoid(i)
    ctx.save_for_backward(i)
    return result

  @staticmethod
  def backward(ctx, grad_output):
    i = ctx.saved_tensors[0]  # the source: ctx.saved_variables[0] (a deprecated alias)
    sigmoid_i = torch.sigmoid(i)
    return grad_output * (sigmoid_i * (1 + i * (1 - sigmoid_i)))


class Swish(nn.Module):
  """Module using custom implementation."""

  def forward(self, input_tensor):
    return _Swish.apply(input_tensor)


class _Block(nn.Module):
  """WideResNet Block."""

  def __init__(self, in_planes, out_planes, stride, activation_fn: Type[nn.Module] = nn.ReLU):
    super().__init__()
    self.batchnorm_0 = nn.BatchNorm2d(in_planes)
    self.relu_0 = activation_fn()
    # We manually pad to obtain the same effect as `SAME` (necessary when
    # `stride` is different than 1).
    self.conv_0 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=0,
                            bias=False)
    self.batchnorm_1 = nn.BatchNorm2d(out_planes)
    self.relu_1 = activation_fn()
    self.conv_1 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1,
                            bias=False)
    self.has_shortcut = in_planes != out_planes
    if self.has_shortcut:
      self.shortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0,
                                bias=False)
    else:
      self.shortcut = None
    self._stride = stride

  def forward(self, x):
    if self.has_shortcut:
      x = self.relu_0(self.batchnorm_0(x))
    else:
      out = self.relu_0(self.batchnorm_0(x))
    v = x if self.has_shortcut else out
    if self._stride == 1:
      v = F.pad(v, (1, 1, 1, 1))
    elif self._stride == 2:
      v = F.pad(v, (0, 1, 0, 1))
    else:
      raise ValueError('Unsupported `stride`.')
    out = self.conv_0(v)
    out = self.relu_1(self.batchnorm_1(out))
    out = self.conv_1(out)
    out = torch.add(self.shortcut(x) if self.has_shortcut else x, out)
    return out


class _BlockGroup(nn.Module):
  """WideResNet block group."""

  def __init__(self, num_blocks, in_planes, out_planes, stride,
               activation_fn: Type[nn.Module] = nn.ReLU):
    super().__init__()
    block = []
    for i in range(num_blocks):
      block.append(
          _Block(i == 0 and in_planes or out_planes,
                 out_planes,
                 i == 0 and stride or 1,
                 activation_fn=activation_fn))
    self.block = nn.Sequential(*block)

  def forward(self, x):
    return self.block(x)


class DMWideResNet(nn.Module):
  """WideResNet."""

  def __init__(self,
               num_classes: int = 10,
               depth: int = 28,
               width: int = 10,
               activation_fn: Type[nn.Module] = nn.ReLU,
               mean: Union[Tuple[float, ...], float] = CIFAR10_MEAN,
               std: Union[Tuple[float, ...], float] = CIFAR10_STD,
               padding: int = 0,
               num_input_channels: int = 3):
    super().__init__()
    # persistent=False to not put these tensors in the module's state_dict and not try to
    # load it from the checkpoint
    self.register_buffer('mean', torch.tensor(mean).view(num_input_channels, 1, 1),
                         persistent=False)
    self.register_buffer('std', torch.tensor(std).view(num_input_channels, 1, 1),
                         persistent=False)
    self.padding = padding
    num_channels = [16, 16 * width, 32 * width, 64 * width]
    assert (depth - 4) % 6 == 0
    num_blocks = (depth - 4) // 6
    self.init_conv = nn.Conv2d(num_input_channels, num_channels[0], kernel_size=3, stride=1,
                               padding=1, bias=False)
    self.layer = nn.Sequential(
        _BlockGroup(num_blocks, num_channels[0], num_channels[1], 1,
                    activation_fn=activation_fn),
        _BlockGroup(num_blocks, num_channels[1], num_channels[2], 2,
                    activation_fn=activation_fn),
        _BlockGroup(num_blocks, num_channels[2], num_channels[3], 2,
                    activation_fn=activation_fn))
    self.batchnorm = nn.BatchNorm2d(num_channels[3])
    self.relu = activation_fn()
    self.logits = nn.Linear(num_channels[3], num_classes)
    self.num_channels = num_channels[3]

  def forward(self, x):
    if self.padding > 0:
      x = F.pad(x, (self.padding,) * 4)
    out = (x - self.mean) / self.std
    out = self.init_conv(out)
    out = self.layer(out)
    out = self.relu(self.batchnorm(out))
    out = F.avg_pool2d(out, 8)
    out = out.view(-1, self.num_channels)
    return self.logits(out)


class _PreActBlock(nn.Module):
  """Pre-activation ResNet Block."""

  def __init__(self, in_planes, out_planes, stride, activation_fn=nn.ReLU):
    super().__init__()
    self._stride = stride
    self.batchnorm_0 = nn.BatchNorm2d(in_planes)
    self.relu_0 = activation_fn()
    # We manually pad to obtain the same effect as `SAME` (necessary when
    # `stride` is different than 1).
    self.conv_2d_1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=0,
                               bias=False)
    self.batchnorm_1 = nn.BatchNorm2d(out_planes)
    self.relu_1 = activation_fn()
    self.conv_2d_2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1,
                               bias=False)
    self.has_shortcut = stride != 1 or in_planes != out_planes
    if self.has_shortcut:
      self.shortcut = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=0,
                                bias=False)

  def _pad(self, x):
    if self._stride == 1:
      x = F.pad(x, (1, 1, 1, 1))
    elif self._stride == 2:
      x = F.pad(x, (0, 1, 0, 1))
    else:
      raise ValueError('Unsupported `stride`.')
    return x

  def forward(self, x):
    out = self.relu_0(self.batchnorm_0(x))
    shortcut = self.shortcut(self._pad(x)) if self.has_shortcut else x
    out = self.conv_2d_1(self._pad(out))
    out = self.conv_2d_2(self.relu_1(self.batchnorm_1(out)))
    return out + shortcut


class DMPreActResNet(nn.Module):
  """Pre-activation ResNet."""

  def __init__(self,
               num_classes: int = 10,
               depth: int = 18,
               width: int = 0,  # Used to make the constructor consistent.
               activation_fn: Type[nn.Module] = nn.ReLU,
               mean: Union[Tuple[float, ...], float] = CIFAR10_MEAN,
               std: Union[Tuple[float, ...], float] = CIFAR10_STD,
               padding: int = 0,
               num_input_channels: int = 3,
               use_cuda: bool = True):  # unused, as in the source
    super().__init__()
    if width != 0:
      raise ValueError('Unsupported `width`.')
    # persistent=False to not put these tensors in the module's state_dict and not try to
    # load it from the checkpoint
    self.register_buffer('mean', torch.tensor(mean).view(num_input_channels, 1, 1),
                         persistent=False)
    self.register_buffer('std', torch.tensor(std).view(num_input_channels, 1, 1),
                         persistent=False)
    self.mean_cuda = None
    self.std_cuda = None
    self.padding = padding
    self.conv_2d = nn.Conv2d(num_input_channels, 64, kernel_size=3, stride=1, padding=1,
                             bias=False)
    if depth == 18:
      num_blocks = (2, 2, 2, 2)
    elif depth == 34:
      num_blocks = (3, 4, 6, 3)
    else:
      raise ValueError('Unsupported `depth`.')
    self.layer_0 = self._make_layer(64, 64, num_blocks[0], 1, activation_fn)
    self.layer_1 = self._make_layer(64, 128, num_blocks[1], 2, activation_fn)
    self.layer_2 = self._make_layer(128, 256, num_blocks[2], 2, activation_fn)
    self.layer_3 = self._make_layer(256, 512, num_blocks[3], 2, activation_fn)
    self.batchnorm = nn.BatchNorm2d(512)
    self.relu = activation_fn()
    self.logits = nn.Linear(512, num_classes)

  def _make_layer(self, in_planes, out_planes, num_blocks, stride, activation_fn):
    layers = []
    for i, stride in enumerate([stride] + [1] * (num_blocks - 1)):
      layers.append(
          _PreActBlock(i == 0 and in_planes or out_planes, out_planes, stride, activation_fn))
    return nn.Sequential(*layers)

  def forward(self, x):
    if self.padding > 0:
      x = F.pad(x, (self.padding,) * 4)
    out = (x - self.mean) / self.std
    out = self.conv_2d(out)
    out = self.layer_0(out)
    out = self.layer_1(out)
    out = self.layer_2(out)
    out = self.layer_3(out)
    out = self.relu(self.batchnorm(out))
    out = F.avg_pool2d(out, 4)
    out = out.view(out.size(0), -1)
    return self.logits(out)


# --- robustbench/model_zoo/architectures/wide_resnet.py ----------------------------------------


class WRNBasicBlock(nn.Module):
  """wide_resnet.py's `BasicBlock` (renamed: resnet.py has another)."""

  def __init__(self, in_planes, out_planes, stride, dropRate=0.0):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1,
                           bias=False)
    self.bn2 = nn.BatchNorm2d(out_planes)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1,
                           bias=False)
    self.droprate = dropRate
    self.equalInOut = (in_planes == out_planes)
    self.convShortcut = (not self.equalInOut) and nn.Conv2d(
        in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False) or None

  def forward(self, x):
    if not self.equalInOut:
      x = self.relu1(self.bn1(x))
    else:
      out = self.relu1(self.bn1(x))
    out = self.relu2(self.bn2(self.conv1(out if self.equalInOut else x)))
    if self.droprate > 0:
      out = F.dropout(out, p=self.droprate, training=self.training)
    out = self.conv2(out)
    return torch.add(x if self.equalInOut else self.convShortcut(x), out)


class NetworkBlock(nn.Module):

  def __init__(self, nb_layers, in_planes, out_planes, block, stride, dropRate=0.0):
    super().__init__()
    self.layer = self._make_layer(block, in_planes, out_planes, nb_layers, stride, dropRate)

  def _make_layer(self, block, in_planes, out_planes, nb_layers, stride, dropRate):
    layers = []
    for i in range(int(nb_layers)):
      layers.append(block(i == 0 and in_planes or out_planes, out_planes,
                          i == 0 and stride or 1, dropRate))
    return nn.Sequential(*layers)

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):
  """ Based on code from https://github.com/yaodongyu/TRADES """

  def __init__(self, depth=28, num_classes=10, widen_factor=10, sub_block1=False, dropRate=0.0,
               bias_last=True):
    super().__init__()
    nChannels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    assert ((depth - 4) % 6 == 0)
    n = (depth - 4) / 6
    block = WRNBasicBlock
    # 1st conv before any network block
    self.conv1 = nn.Conv2d(3, nChannels[0], kernel_size=3, stride=1, padding=1, bias=False)
    # 1st block
    self.block1 = NetworkBlock(n, nChannels[0], nChannels[1], block, 1, dropRate)
    if sub_block1:
      # 1st sub-block
      self.sub_block1 = NetworkBlock(n, nChannels[0], nChannels[1], block, 1, dropRate)
    # 2nd block
    self.block2 = NetworkBlock(n, nChannels[1], nChannels[2], block, 2, dropRate)
    # 3rd block
    self.block3 = NetworkBlock(n, nChannels[2], nChannels[3], block, 2, dropRate)
    # global average pooling and classifier
    self.bn1 = nn.BatchNorm2d(nChannels[3])
    self.relu = nn.ReLU(inplace=True)
    self.fc = nn.Linear(nChannels[3], num_classes, bias=bias_last)
    self.nChannels = nChannels[3]

    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        m.weight.data.normal_(0, math.sqrt(2. / n))
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.data.fill_(1)
        m.bias.data.zero_()
      elif isinstance(m, nn.Linear) and m.bias is not None:
        m.bias.data.zero_()

  def forward(self, x):
    out = self.conv1(x)
    out = self.block1(out)
    out = self.block2(out)
    out = self.block3(out)
    out = self.relu(self.bn1(out))
    out = F.avg_pool2d(out, 8)
    out = out.view(-1, self.nChannels)
    return self.fc(out)


# --- robustbench/model_zoo/architectures/resnet.py ---------------------------------------------


class BasicBlock(nn.Module):
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
          nn.BatchNorm2d(self.expansion * planes)
      )

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    out += self.shortcut(x)
    out = F.relu(out)
    return out


class ResNet(nn.Module):

  def __init__(self, block, num_blocks, num_classes=10):
    super().__init__()
    self.in_planes = 64

    self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
    self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
    self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
    self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
    self.linear = nn.Linear(512 * block.expansion, num_classes)

  def _make_layer(self, block, planes, num_blocks, stride):
    strides = [stride] + [1] * (num_blocks - 1)
    layers = []
    for stride in strides:
      layers.append(block(self.in_planes, planes, stride))
      self.in_planes = planes * block.expansion
    return nn.Sequential(*layers)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer1(out)
    out = self.layer2(out)
    out = self.layer3(out)
    out = self.layer4(out)
    out = F.avg_pool2d(out, 4)
    out = out.view(out.size(0), -1)
    out = self.linear(out)
    return out


class PreActBlock(nn.Module):
  '''Pre-activation version of the BasicBlock.'''
  expansion = 1

  def __init__(self, in_planes, planes, stride=1, out_shortcut=False):
    super().__init__()
    self.out_shortcut = out_shortcut
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)

    if stride != 1 or in_planes != self.expansion * planes:
      self.shortcut = nn.Sequential(
          nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False)
      )

  def forward(self, x):
    out = F.relu(self.bn1(x))
    shortcut = self.shortcut(out if self.out_shortcut else x) if hasattr(self, 'shortcut') else x
    out = self.conv1(out)
    out = self.conv2(F.relu(self.bn2(out)))
    out += shortcut
    return out


class PreActBlockV2(nn.Module):
  '''Pre-activation version of the BasicBlock (slightly different forward pass)'''
  expansion = 1

  def __init__(self, in_planes, planes, stride=1, out_shortcut=False):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)

    if stride != 1 or in_planes != self.expansion * planes:
      self.shortcut = nn.Sequential(
          nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False)
      )

  def forward(self, x):
    out = F.relu(self.bn1(x))
    shortcut = self.shortcut(out) if hasattr(self, 'shortcut') else x
    out = self.conv1(out)
    out = self.conv2(F.relu(self.bn2(out)))
    out += shortcut
    return out


class PreActResNet(nn.Module):

  def __init__(self, block, num_blocks, num_classes=10, bn_before_fc=False, out_shortcut=False):
    super().__init__()
    self.in_planes = 64
    self.bn_before_fc = bn_before_fc
    self.out_shortcut = out_shortcut

    self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
    self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
    self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
    self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
    if bn_before_fc:
      self.bn = nn.BatchNorm2d(512 * block.expansion)
    self.linear = nn.Linear(512 * block.expansion, num_classes)

  def _make_layer(self, block, planes, num_blocks, stride):
    strides = [stride] + [1] * (num_blocks - 1)
    layers = []
    for stride in strides:
      layers.append(block(self.in_planes, planes, stride, out_shortcut=self.out_shortcut))
      self.in_planes = planes * block.expansion
    return nn.Sequential(*layers)

  def forward(self, x):
    out = self.conv1(x)
    out = self.layer1(out)
    out = self.layer2(out)
    out = self.layer3(out)
    out = self.layer4(out)
    if self.bn_before_fc:
      out = F.relu(self.bn(out))
    out = F.avg_pool2d(out, 4)
    out = out.view(out.size(0), -1)
    out = self.linear(out)
    return out


def ResNet18():
  return ResNet(BasicBlock, [2, 2, 2, 2])


# --- robustbench/model_zoo/cifar10.py: the per-entry classes built on the classes above -------
# (Engstrom2019RobustnessNet, Chen2020AdversarialNet, Ding2020MMANet, Augustin2020AdversarialNet,
# Hendrycks2020AugMixResNeXtNet and the Diffenderfer2021CARD* classes are not ported.)
# `mu` / `sigma` are persistent buffers there, as here: they are in `state_dict()`.


class Hendrycks2020AugMixWRNNet(WideResNet):
  """Corruptions entry only (not in ENTRIES)."""

  def __init__(self, depth=40, widen_factor=2):
    super().__init__(depth=depth, widen_factor=widen_factor, sub_block1=False)
    self.register_buffer('mu', torch.tensor([0.5] * 3).view(1, 3, 1, 1))
    self.register_buffer('sigma', torch.tensor([0.5] * 3).view(1, 3, 1, 1))

  def forward(self, x):
    x = (x - self.mu) / self.sigma
    return super().forward(x)


class Hendrycks2019UsingNet(WideResNet):

  def __init__(self, depth=28, widen_factor=10):
    super().__init__(depth=depth, widen_factor=widen_factor, sub_block1=False)

  def forward(self, x):
    x = 2. * x - 1.
    return super().forward(x)


class Rice2020OverfittingNet(WideResNet):

  def __init__(self, depth=34, widen_factor=20):
    super().__init__(depth=depth, widen_factor=widen_factor, sub_block1=False)
    self.register_buffer('mu', torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
    self.register_buffer('sigma', torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1))

  def forward(self, x):
    x = (x - self.mu) / self.sigma
    return super().forward(x)


class Wong2020FastNet(PreActResNet):

  def __init__(self):
    super().__init__(PreActBlock, [2, 2, 2, 2])
    self.register_buffer('mu', torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
    self.register_buffer('sigma', torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1))

  def forward(self, x):
    x = (x - self.mu) / self.sigma
    return super().forward(x)


class Augustin2020AdversarialWideNet(WideResNet):

  def __init__(self, depth=34, widen_factor=10):
    super().__init__(depth=depth, widen_factor=widen_factor, sub_block1=False)
    self.register_buffer(
        'mu',
        torch.tensor([0.4913997551666284, 0.48215855929893703,
                      0.4465309133731618]).view(1, 3, 1, 1))
    self.register_buffer(
        'sigma',
        torch.tensor([0.24703225141799082, 0.24348516474564,
                      0.26158783926049628]).view(1, 3, 1, 1))

  def forward(self, x):
    x = (x - self.mu) / self.sigma
    return super().forward(x)


class Rice2020OverfittingNetL2(PreActResNet):

  def __init__(self):
    super().__init__(PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True)
    self.register_buffer('mu', torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
    self.register_buffer('sigma', torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1))

  def forward(self, x):
    x = (x - self.mu) / self.sigma
    return super().forward(x)


class Rony2019DecouplingNet(WideResNet):

  def __init__(self, depth=28, widen_factor=10):
    super().__init__(depth=depth, widen_factor=widen_factor, sub_block1=False)
    self.register_buffer('mu', torch.tensor([0.491, 0.482, 0.447]).view(1, 3, 1, 1))
    self.register_buffer('sigma', torch.tensor([0.247, 0.243, 0.262]).view(1, 3, 1, 1))

  def forward(self, x):
    x = (x - self.mu) / self.sigma
    return super().forward(x)


class Kireev2021EffectivenessNet(PreActResNet):
  """Corruptions entries only (not in ENTRIES)."""

  def __init__(self):
    super().__init__(PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True)
    self.register_buffer('mu', torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
    self.register_buffer('sigma', torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1))

  def forward(self, x):
    x = (x - self.mu) / self.sigma
    return super().forward(x)


class Chen2020EfficientNet(WideResNet):

  def __init__(self, depth=34, widen_factor=10):
    super().__init__(depth=depth, widen_factor=widen_factor, sub_block1=True)
    self.register_buffer('mu', torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
    self.register_buffer('sigma', torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1))

  def forward(self, x):
    x = (x - self.mu) / self.sigma
    return super().forward(x)


class Modas2021PRIMEResNet18(ResNet):
  """Corruptions entry only (not in ENTRIES)."""

  def __init__(self, num_classes=10):
    super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)

    # mu & sigma are updated from weights
    self.register_buffer('mu', torch.tensor([0.5] * 3).view(1, 3, 1, 1))
    self.register_buffer('sigma', torch.tensor([0.5] * 3).view(1, 3, 1, 1))

  def forward(self, x):
    x = (x - self.mu) / self.sigma
    return super().forward(x)


# --- robustbench/model_zoo/cifar100.py: the same; `C100` marks the names cifar10.py also uses ---
# (Hendrycks2020AugMixResNeXtNet and the Diffenderfer2021CARD* classes are not ported.)


class Chen2020EfficientNetC100(WideResNet):
  """cifar100.py's `Chen2020EfficientNet`."""

  def __init__(self, depth=34, widen_factor=10):
    super().__init__(depth=depth, widen_factor=widen_factor, sub_block1=True, num_classes=100)
    self.register_buffer('mu', torch.tensor([0.5071, 0.4867, 0.4408]).view(1, 3, 1, 1))
    self.register_buffer('sigma', torch.tensor([0.2675, 0.2565, 0.2761]).view(1, 3, 1, 1))

  def forward(self, x):
    x = (x - self.mu) / self.sigma
    return super().forward(x)


class Wu2020AdversarialNet(WideResNet):

  def __init__(self, depth=34, widen_factor=10):
    super().__init__(depth=depth, widen_factor=widen_factor, sub_block1=False, num_classes=100)
    self.register_buffer(
        'mu',
        torch.tensor([0.5070751592371323, 0.48654887331495095,
                      0.4409178433670343]).view(1, 3, 1, 1))
    self.register_buffer(
        'sigma',
        torch.tensor([0.2673342858792401, 0.2564384629170883,
                      0.27615047132568404]).view(1, 3, 1, 1))

  def forward(self, x):
    x = (x - self.mu) / self.sigma
    return super().forward(x)


class Rice2020OverfittingNetC100(PreActResNet):
  """cifar100.py's `Rice2020OverfittingNet`."""

  def __init__(self):
    super().__init__(PreActBlock, [2, 2, 2, 2], num_classes=100, bn_before_fc=True,
                     out_shortcut=True)
    self.register_buffer(
        'mu',
        torch.tensor([0.5070751592371323, 0.48654887331495095,
                      0.4409178433670343]).view(1, 3, 1, 1))
    self.register_buffer(
        'sigma',
        torch.tensor([0.2673342858792401, 0.2564384629170883,
                      0.27615047132568404]).view(1, 3, 1, 1))

  def forward(self, x):
    x = (x - self.mu) / self.sigma
    return super().forward(x)


class Hendrycks2019UsingNetC100(WideResNet):
  """cifar100.py's `Hendrycks2019UsingNet`."""

  def __init__(self, depth=28, widen_factor=10):
    super().__init__(depth=depth, widen_factor=widen_factor, num_classes=100, sub_block1=False)

  def forward(self, x):
    x = 2. * x - 1.
    return super().forward(x)


class Hendrycks2020AugMixWRNNetC100(WideResNet):
  """cifar100.py's `Hendrycks2020AugMixWRNNet`; corruptions entry only (not in ENTRIES)."""

  def __init__(self, depth=40, widen_factor=2):
    super().__init__(depth=depth, widen_factor=widen_factor, sub_block1=False, num_classes=100)
    self.register_buffer('mu', torch.tensor([0.5] * 3).view(1, 3, 1, 1))
    self.register_buffer('sigma', torch.tensor([0.5] * 3).view(1, 3, 1, 1))

  def forward(self, x):
    x = (x - self.mu) / self.sigma
    return super().forward(x)


class Modas2021PRIMEResNet18C100(ResNet):
  """cifar100.py's `Modas2021PRIMEResNet18`; corruptions entry only (not in ENTRIES)."""

  def __init__(self, num_classes=100):
    super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    # mu & sigma are updated from weights
    self.register_buffer('mu', torch.tensor([0.5] * 3).view(1, 3, 1, 1))
    self.register_buffer('sigma', torch.tensor([0.5] * 3).view(1, 3, 1, 1))

  def forward(self, x):
    x = (x - self.mu) / self.sigma
    return super().forward(x)


# --- The model zoo's `linf` / `l2` tables -------------------------------------------------------
# Every Linf / L2 entry of cifar10.py and cifar100.py (which has no L2 table) whose model is built
# from the classes above, in the source's order, its 'model' expression copied over (cifar100.py's
# class names with their `C100`). The entries left out are listed at the end of this file.

_CIFAR10_LINF = {
  "Andriushchenko2020Understanding": lambda: PreActResNet(PreActBlock, [2, 2, 2, 2]),
  "Carmon2019Unlabeled": lambda: WideResNet(depth=28, widen_factor=10, sub_block1=True),
  "Sehwag2020Hydra": lambda: WideResNet(depth=28, widen_factor=10, sub_block1=True),
  "Wang2020Improving": lambda: WideResNet(depth=28, widen_factor=10, sub_block1=True),
  "Hendrycks2019Using": Hendrycks2019UsingNet,
  "Rice2020Overfitting": Rice2020OverfittingNet,
  "Zhang2019Theoretically": lambda: WideResNet(depth=34, widen_factor=10, sub_block1=True),
  "Huang2020Self": lambda: WideResNet(depth=34, widen_factor=10, sub_block1=True),
  "Wong2020Fast": Wong2020FastNet,
  "Zhang2019You": lambda: WideResNet(depth=34, widen_factor=10, sub_block1=True),
  "Zhang2020Attacks": lambda: WideResNet(depth=34, widen_factor=10, sub_block1=True),
  "Wu2020Adversarial_extra": lambda: WideResNet(depth=28, widen_factor=10, sub_block1=True),
  "Wu2020Adversarial": lambda: WideResNet(depth=34, widen_factor=10),
  "Gowal2020Uncovering_70_16": lambda: DMWideResNet(
      num_classes=10, depth=70, width=16, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Gowal2020Uncovering_70_16_extra": lambda: DMWideResNet(
      num_classes=10, depth=70, width=16, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Gowal2020Uncovering_34_20": lambda: DMWideResNet(
      num_classes=10, depth=34, width=20, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Gowal2020Uncovering_28_10_extra": lambda: DMWideResNet(
      num_classes=10, depth=28, width=10, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  # positional: depth=34, num_classes=10; widen_factor is the default 10
  "Sehwag2021Proxy": lambda: WideResNet(34, 10, sub_block1=False),
  "Sehwag2021Proxy_R18": ResNet18,
  "Sitawarin2020Improving": lambda: WideResNet(depth=34, widen_factor=10, sub_block1=True),
  "Chen2020Efficient": Chen2020EfficientNet,
  "Cui2020Learnable_34_20": lambda: WideResNet(depth=34, widen_factor=20, sub_block1=True),
  "Cui2020Learnable_34_10": lambda: WideResNet(depth=34, widen_factor=10, sub_block1=True),
  "Zhang2020Geometry": lambda: WideResNet(depth=28, widen_factor=10, sub_block1=True),
  "Rebuffi2021Fixing_28_10_cutmix_ddpm": lambda: DMWideResNet(
      num_classes=10, depth=28, width=10, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Rebuffi2021Fixing_106_16_cutmix_ddpm": lambda: DMWideResNet(
      num_classes=10, depth=106, width=16, activation_fn=Swish, mean=CIFAR10_MEAN,
      std=CIFAR10_STD),
  "Rebuffi2021Fixing_70_16_cutmix_ddpm": lambda: DMWideResNet(
      num_classes=10, depth=70, width=16, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Rebuffi2021Fixing_70_16_cutmix_extra": lambda: DMWideResNet(
      num_classes=10, depth=70, width=16, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Sridhar2021Robust": lambda: WideResNet(depth=28, widen_factor=10, sub_block1=True),
  "Sridhar2021Robust_34_15": lambda: WideResNet(depth=34, widen_factor=15, sub_block1=True),
  "Rebuffi2021Fixing_R18_ddpm": lambda: DMPreActResNet(
      num_classes=10, depth=18, width=0, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Rade2021Helper_R18_extra": lambda: DMPreActResNet(
      num_classes=10, depth=18, width=0, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Rade2021Helper_R18_ddpm": lambda: DMPreActResNet(
      num_classes=10, depth=18, width=0, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Rade2021Helper_extra": lambda: DMWideResNet(
      num_classes=10, depth=34, width=10, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Rade2021Helper_ddpm": lambda: DMWideResNet(
      num_classes=10, depth=28, width=10, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Addepalli2021Towards_RN18": lambda: ResNet18(),
  "Addepalli2021Towards_WRN34": lambda: WideResNet(num_classes=10, depth=34, sub_block1=True),
  "Gowal2021Improving_70_16_ddpm_100m": lambda: DMWideResNet(
      num_classes=10, depth=70, width=16, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Gowal2021Improving_28_10_ddpm_100m": lambda: DMWideResNet(
      num_classes=10, depth=28, width=10, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Gowal2021Improving_R18_ddpm_100m": lambda: DMPreActResNet(
      num_classes=10, depth=18, width=0, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Chen2021LTD_WRN34_10": lambda: WideResNet(depth=34, widen_factor=10, sub_block1=False),
  "Chen2021LTD_WRN34_20": lambda: WideResNet(depth=34, widen_factor=20, sub_block1=False),
  "Standard": lambda: WideResNet(depth=28, widen_factor=10),
  "Jia2022LAS-AT_34_10": lambda: WideResNet(depth=34, widen_factor=10),
  "Jia2022LAS-AT_70_16": lambda: WideResNet(depth=70, widen_factor=16),
  "Pang2022Robustness_WRN28_10": lambda: DMWideResNet(
      num_classes=10, depth=28, width=10, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Pang2022Robustness_WRN70_16": lambda: DMWideResNet(
      num_classes=10, depth=70, width=16, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Addepalli2022Efficient_RN18": ResNet18,
  "Addepalli2022Efficient_WRN_34_10": lambda: WideResNet(depth=34, widen_factor=10),
  "Wang2023Better_WRN-28-10": lambda: DMWideResNet(
      num_classes=10, depth=28, width=10, activation_fn=nn.SiLU, mean=CIFAR10_MEAN,
      std=CIFAR10_STD),
  "Wang2023Better_WRN-70-16": lambda: DMWideResNet(
      num_classes=10, depth=70, width=16, activation_fn=nn.SiLU, mean=CIFAR10_MEAN,
      std=CIFAR10_STD),
  "Xu2023Exploring_WRN-28-10": lambda: DMWideResNet(
      num_classes=10, depth=28, width=10, activation_fn=nn.SiLU, mean=CIFAR10_MEAN,
      std=CIFAR10_STD),
  "Cui2023Decoupled_WRN-28-10": lambda: DMWideResNet(
      num_classes=10, depth=28, width=10, activation_fn=nn.SiLU, mean=CIFAR10_MEAN,
      std=CIFAR10_STD),
  "Cui2023Decoupled_WRN-34-10": lambda: WideResNet(depth=34, widen_factor=10, sub_block1=False),
  "Chen2024Data_WRN_34_10": lambda: WideResNet(depth=34, widen_factor=10),
  "Chen2024Data_WRN_34_20": lambda: WideResNet(depth=34, widen_factor=20),
  "Bartoldson2024Adversarial_WRN-94-16": lambda: DMWideResNet(
      num_classes=10, depth=94, width=16, activation_fn=nn.SiLU, mean=CIFAR10_MEAN,
      std=CIFAR10_STD),
  "Bartoldson2024Adversarial_WRN-82-8": lambda: DMWideResNet(
      num_classes=10, depth=82, width=8, activation_fn=nn.SiLU, mean=CIFAR10_MEAN,
      std=CIFAR10_STD),
}

_CIFAR10_L2 = {
  "Rice2020Overfitting": Rice2020OverfittingNetL2,
  "Rony2019Decoupling": Rony2019DecouplingNet,
  "Standard": lambda: WideResNet(depth=28, widen_factor=10),
  "Wu2020Adversarial": lambda: WideResNet(depth=34, widen_factor=10),
  "Gowal2020Uncovering": lambda: DMWideResNet(
      num_classes=10, depth=70, width=16, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Gowal2020Uncovering_extra": lambda: DMWideResNet(
      num_classes=10, depth=70, width=16, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  # positional: depth=34, num_classes=10; widen_factor is the default 10
  "Sehwag2021Proxy": lambda: WideResNet(34, 10, sub_block1=False),
  "Sehwag2021Proxy_R18": ResNet18,
  "Rebuffi2021Fixing_70_16_cutmix_ddpm": lambda: DMWideResNet(
      num_classes=10, depth=70, width=16, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Rebuffi2021Fixing_28_10_cutmix_ddpm": lambda: DMWideResNet(
      num_classes=10, depth=28, width=10, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Rebuffi2021Fixing_70_16_cutmix_extra": lambda: DMWideResNet(
      num_classes=10, depth=70, width=16, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Augustin2020Adversarial_34_10": Augustin2020AdversarialWideNet,
  "Augustin2020Adversarial_34_10_extra": Augustin2020AdversarialWideNet,
  "Rebuffi2021Fixing_R18_cutmix_ddpm": lambda: DMPreActResNet(
      num_classes=10, depth=18, width=0, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Rade2021Helper_R18_ddpm": lambda: DMPreActResNet(
      num_classes=10, depth=18, width=0, activation_fn=Swish, mean=CIFAR10_MEAN, std=CIFAR10_STD),
  "Wang2023Better_WRN-28-10": lambda: DMWideResNet(
      num_classes=10, depth=28, width=10, activation_fn=nn.SiLU, mean=CIFAR10_MEAN,
      std=CIFAR10_STD),
  "Wang2023Better_WRN-70-16": lambda: DMWideResNet(
      num_classes=10, depth=70, width=16, activation_fn=nn.SiLU, mean=CIFAR10_MEAN,
      std=CIFAR10_STD),
}

_CIFAR100_LINF = {
  "Gowal2020Uncovering": lambda: DMWideResNet(
      num_classes=100, depth=70, width=16, activation_fn=Swish, mean=CIFAR100_MEAN,
      std=CIFAR100_STD),
  "Gowal2020Uncovering_extra": lambda: DMWideResNet(
      num_classes=100, depth=70, width=16, activation_fn=Swish, mean=CIFAR100_MEAN,
      std=CIFAR100_STD),
  "Cui2020Learnable_34_20_LBGAT6": lambda: WideResNet(
      depth=34, widen_factor=20, num_classes=100, sub_block1=True),
  "Cui2020Learnable_34_10_LBGAT0": lambda: WideResNet(
      depth=34, widen_factor=10, num_classes=100, sub_block1=True),
  "Cui2020Learnable_34_10_LBGAT6": lambda: WideResNet(
      depth=34, widen_factor=10, num_classes=100, sub_block1=True),
  "Chen2020Efficient": Chen2020EfficientNetC100,
  "Wu2020Adversarial": Wu2020AdversarialNet,
  "Sehwag2021Proxy": lambda: WideResNet(
      depth=34, widen_factor=10, num_classes=100, sub_block1=False),
  "Sitawarin2020Improving": lambda: WideResNet(
      depth=34, widen_factor=10, num_classes=100, sub_block1=True),
  "Hendrycks2019Using": Hendrycks2019UsingNetC100,
  "Rice2020Overfitting": Rice2020OverfittingNetC100,
  "Rebuffi2021Fixing_70_16_cutmix_ddpm": lambda: DMWideResNet(
      num_classes=100, depth=70, width=16, activation_fn=Swish, mean=CIFAR100_MEAN,
      std=CIFAR100_STD),
  "Rebuffi2021Fixing_28_10_cutmix_ddpm": lambda: DMWideResNet(
      num_classes=100, depth=28, width=10, activation_fn=Swish, mean=CIFAR100_MEAN,
      std=CIFAR100_STD),
  "Rebuffi2021Fixing_R18_ddpm": lambda: DMPreActResNet(
      num_classes=100, depth=18, width=0, activation_fn=Swish, mean=CIFAR100_MEAN,
      std=CIFAR100_STD),
  "Rade2021Helper_R18_ddpm": lambda: DMPreActResNet(
      num_classes=100, depth=18, width=0, activation_fn=Swish, mean=CIFAR100_MEAN,
      std=CIFAR100_STD),
  "Addepalli2021Towards_PARN18": lambda: PreActResNet(
      PreActBlockV2, [2, 2, 2, 2], num_classes=100, bn_before_fc=True),
  "Addepalli2021Towards_WRN34": lambda: WideResNet(num_classes=100, depth=34, sub_block1=True),
  "Chen2021LTD_WRN34_10": lambda: WideResNet(
      depth=34, widen_factor=10, num_classes=100, sub_block1=True),
  "Pang2022Robustness_WRN28_10": lambda: DMWideResNet(
      num_classes=100, depth=28, width=10, activation_fn=Swish, mean=CIFAR100_MEAN,
      std=CIFAR100_STD),
  "Pang2022Robustness_WRN70_16": lambda: DMWideResNet(
      num_classes=100, depth=70, width=16, activation_fn=Swish, mean=CIFAR100_MEAN,
      std=CIFAR100_STD),
  "Jia2022LAS-AT_34_10": lambda: WideResNet(
      depth=34, widen_factor=10, num_classes=100, sub_block1=True),
  "Jia2022LAS-AT_34_20": lambda: WideResNet(depth=34, widen_factor=20, num_classes=100),
  "Addepalli2022Efficient_RN18": lambda: ResNet(BasicBlock, [2, 2, 2, 2], num_classes=100),
  "Addepalli2022Efficient_WRN_34_10": lambda: WideResNet(
      depth=34, widen_factor=10, num_classes=100),
  "Cui2020Learnable_34_10_LBGAT9_eps_8_255": lambda: WideResNet(
      depth=34, widen_factor=10, num_classes=100, sub_block1=False),
  "Wang2023Better_WRN-28-10": lambda: DMWideResNet(
      num_classes=100, depth=28, width=10, activation_fn=nn.SiLU, mean=CIFAR100_MEAN,
      std=CIFAR100_STD),
  "Wang2023Better_WRN-70-16": lambda: DMWideResNet(
      num_classes=100, depth=70, width=16, activation_fn=nn.SiLU, mean=CIFAR100_MEAN,
      std=CIFAR100_STD),
  "Cui2023Decoupled_WRN-28-10": lambda: DMWideResNet(
      num_classes=100, depth=28, width=10, activation_fn=nn.SiLU, mean=CIFAR100_MEAN,
      std=CIFAR100_STD),
  "Cui2023Decoupled_WRN-34-10": lambda: WideResNet(
      depth=34, widen_factor=10, num_classes=100, sub_block1=False),
  "Cui2023Decoupled_WRN-34-10_autoaug": lambda: WideResNet(
      depth=34, widen_factor=10, num_classes=100, sub_block1=False),
  "Chen2024Data_WRN_34_10": lambda: WideResNet(depth=34, widen_factor=10, num_classes=100),
}

ENTRIES: dict[tuple[str, str, str], Callable[[], nn.Module]] = {
    **{("cifar10", "Linf", name): build for name, build in _CIFAR10_LINF.items()},
    **{("cifar10", "L2", name): build for name, build in _CIFAR10_L2.items()},
    **{("cifar100", "Linf", name): build for name, build in _CIFAR100_LINF.items()},
}

# load_model takes checkpoint['last'] where `'Kireev2021Effectiveness' in model_name or
# model_name == 'Andriushchenko2020Understanding'` (the Kireev entries are corruptions ones).
LOAD_WRAPPER: dict[str, str] = {
    "Andriushchenko2020Understanding": "last",
    "Kireev2021Effectiveness_Gauss50percent": "last",
    "Kireev2021Effectiveness_AugMixNoJSD": "last",
    "Kireev2021Effectiveness_RLAT": "last",
    "Kireev2021Effectiveness_RLATAugMixNoJSD": "last",
    "Kireev2021Effectiveness_RLATAugMix": "last",
}


# --- robustbench/utils.py: how load_model loads one checkpoint ----------------------------------


def rm_substr_from_state_dict(state_dict, substr):
  """utils.py's, quirk kept: a key that contains `substr` *anywhere* loses its first
  `len(substr)` characters (`'ema.module.x'` -> `'ule.x'`), prefix or not."""
  new_state_dict = OrderedDict()
  for key in state_dict.keys():
    if substr in key:  # to delete prefix 'module.' if it exists
      new_key = key[len(substr):]
      new_state_dict[new_key] = state_dict[key]
    else:
      new_state_dict[key] = state_dict[key]
  return new_state_dict


# _safe_load_state_dict's tables, verbatim (the Kireev name twice, as there). Names only, not
# (dataset, threat model): "Rice2020Overfitting" and "Wu2020Adversarial" cover every table's.
KNOWN_FAILING_MODELS = {
    "Andriushchenko2020Understanding", "Augustin2020Adversarial",
    "Engstrom2019Robustness", "Pang2020Boosting", "Rice2020Overfitting",
    "Rony2019Decoupling", "Wong2020Fast", "Hendrycks2020AugMix_WRN",
    "Hendrycks2020AugMix_ResNeXt",
    "Kireev2021Effectiveness_Gauss50percent",
    "Kireev2021Effectiveness_AugMixNoJSD", "Kireev2021Effectiveness_RLAT",
    "Kireev2021Effectiveness_RLATAugMixNoJSD",
    "Kireev2021Effectiveness_RLATAugMixNoJSD",
    "Kireev2021Effectiveness_RLATAugMix", "Chen2020Efficient",
    "Wu2020Adversarial", "Augustin2020Adversarial_34_10",
    "Augustin2020Adversarial_34_10_extra", "Diffenderfer2021Winning_LRR",
    "Diffenderfer2021Winning_LRR_CARD_Deck",
    "Diffenderfer2021Winning_Binary",
    "Diffenderfer2021Winning_Binary_CARD_Deck",
    "Huang2022Revisiting_WRN-A4",
    "Bai2024MixedNUTS",
}
FAILURE_MESSAGES = [
    'Missing key(s) in state_dict: "mu", "sigma".',
    'Unexpected key(s) in state_dict: "model_preact_hl1.1.weight"',
    'Missing key(s) in state_dict: "normalize.mean", "normalize.std"',
    'Unexpected key(s) in state_dict: "conv1.scores"',
    'Missing key(s) in state_dict: "mean", "std".',
]


def safe_load_state_dict(model, model_name, state_dict):
  """utils.py's `_safe_load_state_dict` without its ImageNet clause: strict, or strict=False
  where a known failing model fails with a known message."""
  try:
    model.load_state_dict(state_dict, strict=True)
  except RuntimeError as e:
    if model_name in KNOWN_FAILING_MODELS and any([msg in str(e) for msg in FAILURE_MESSAGES]):
      model.load_state_dict(state_dict, strict=False)
    else:
      raise e
  return model


SAVE_STYLES = ("plain", "state_dict", "module", "model", "last")


def save_like_robustbench(model, path, style, *, without=(), best=None):
  """torch.save `model`'s state_dict as a RobustBench checkpoint of `style`: "plain" (the bare
  state_dict), "state_dict" (`{"state_dict": sd}`), "module" (`{"state_dict": {"module." + k}}`,
  as DataParallel saves), "model" (`{"model." + k}`, as Chen2020Efficient), "last"
  (`{"last": sd}`, plus `{"best": best}` when `best` is given). Keys in `without` are left out
  (e.g. ("mu", "sigma"), which the released checkpoints of the known failing entries lack)."""
  sd = OrderedDict((k, v) for k, v in model.state_dict().items() if k not in without)
  if style == "plain":
    checkpoint = sd
  elif style == "state_dict":
    checkpoint = {"state_dict": sd}
  elif style == "module":
    checkpoint = {"state_dict": OrderedDict(("module." + k, v) for k, v in sd.items())}
  elif style == "model":
    checkpoint = OrderedDict(("model." + k, v) for k, v in sd.items())
  elif style == "last":
    checkpoint = {"last": sd} if best is None else {"last": sd, "best": best}
  else:
    raise ValueError(f"unknown style {style!r}; one of {SAVE_STYLES}")
  torch.save(checkpoint, path)


def entry_key(name):
  """`name` as an ENTRIES key: a (dataset, threat_model, model_name) tuple as it is, a bare model
  name when exactly one entry has it."""
  if isinstance(name, tuple):
    return name
  keys = [key for key in ENTRIES if key[2] == name]
  if len(keys) != 1:
    raise ValueError(f"{name!r} names {len(keys)} entries {keys}: pass the full key")
  return keys[0]


def load_like_robustbench(name, path, *, build=None) -> nn.Module:
  """ENTRIES' model for `name` (or `build()`, e.g. a small size of it) with the checkpoint at
  `path` loaded as `robustbench.utils.load_model` loads a single (non-ensemble) one; eval mode."""
  key = entry_key(name)
  model_name = key[2]
  model = (build or ENTRIES[key])()
  checkpoint = torch.load(path, map_location=torch.device('cpu'))
  if LOAD_WRAPPER.get(model_name) == "last":
    checkpoint = checkpoint['last']  # we take the last model (choices: 'last', 'best')
  try:
    # needed for the model of `Carmon2019Unlabeled`
    state_dict = rm_substr_from_state_dict(checkpoint['state_dict'], 'module.')
    # needed for the model of `Chen2020Efficient`
    state_dict = rm_substr_from_state_dict(state_dict, 'model.')
  except BaseException:  # the source's bare `except:`
    state_dict = rm_substr_from_state_dict(checkpoint, 'module.')
    state_dict = rm_substr_from_state_dict(state_dict, 'model.')
  model = safe_load_state_dict(model, model_name, state_dict)
  return model.eval()


# --- The Linf / L2 entries left out of ENTRIES (29 of 135) ----------------------------------------
# Ensembles (gdrive_id a list):
#   cifar10 Linf  Chen2020Adversarial (three Bottleneck ResNet-50 branches, softmax-averaged),
#                 Bai2023Improving_edm, Bai2024MixedNUTS (composite models)
#   cifar100 Linf Bai2023Improving_edm, Bai2023Improving_trades, Bai2024MixedNUTS (composite)
# Classes not ported:
#   cifar10 Linf  Engstrom2019Robustness (Engstrom2019RobustnessNet: Bottleneck ResNet-50),
#                 Pang2020Boosting (BoostingWideResNet),
#                 Ding2020MMA (Ding2020MMANet: per-image normalisation),
#                 Sehwag2021Proxy_ResNest152 (ResNest152),
#                 Huang2021Exploring, Huang2021Exploring_ema (RobustWideResNet),
#                 Dai2021Parameterizing (pssilu_wrn_28_10), Kang2021Stable (rebuffi_sodef),
#                 Debenedetti2022Light_XCiT-S12, -M12, -L12 (timm XCiT),
#                 Huang2022Revisiting_WRN-A4 (robust_resnet.get_model),
#                 Peng2023Robust (robustarch_wide_resnet.get_model),
#                 Amini2024MeanSparse_Ra_WRN_70_16, Amini2024MeanSparse_S-WRN-94-16 (sparsified)
#   cifar10 L2    Augustin2020Adversarial (Augustin2020AdversarialNet: Bottleneck ResNet-50),
#                 Engstrom2019Robustness (Bottleneck ResNet-50), Ding2020MMA (per-image
#                 normalisation), Amini2024MeanSparse_S-WRN-70-16 (sparsified)
#   cifar100 Linf Debenedetti2022Light_XCiT-S12, -M12, -L12 (timm XCiT),
#                 Amini2024MeanSparse_S-WRN-70-16 (sparsified)
