"""ResNets for 32x32 images, as used throughout the CIFAR distillation literature.

``ResNet`` is the CIFAR ResNet of He et al. (2016, section 4.2) with the widths of the CRD /
RepDistiller code base: a 3x3 stem, three stages of ``(depth - 2) / 6`` basic blocks, global
average pooling, a linear head (resnet8..resnet110: widths 16/16/32/64; resnet8x4, resnet32x4:
32/64/128/256). ``ResNet50`` is the ImageNet bottleneck ResNet-50 adapted to CIFAR (3x3 stride-1
stem, no max pool), RepDistiller's ``resnetv2.ResNet50``. Shortcuts are identity, or a strided 1x1
convolution + BN where the shape changes (option B).

Taps: ``stem``; ``stage{k}`` (the stage output, after the last block's ReLU);
``stage{k}/block_{j}``; ``pre_logits`` ([B, C], the pooled features).
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax

from kdjax.models.zoo import _layers


class BasicBlock(_layers.ConvBlock):
  """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

  @nn.compact
  def __call__(self, x, train: bool):
    y = _layers.conv_bn(self, x, self.features, 3, train=train, names=("conv1", "bn1"),
                        strides=self.strides, relu=True)
    y = _layers.conv_bn(self, y, self.features, 3, train=train, names=("conv2", "bn2"))
    return nn.relu(y + _shortcut(self, x, self.features, train))


class Bottleneck(_layers.ConvBlock):
  """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN, plus the shortcut, then ReLU."""

  @nn.compact
  def __call__(self, x, train: bool):
    y = _layers.conv_bn(self, x, self.features, 1, train=train, names=("conv1", "bn1"), relu=True)
    y = _layers.conv_bn(self, y, self.features, 3, train=train, names=("conv2", "bn2"),
                        strides=self.strides, relu=True)
    y = _layers.conv_bn(self, y, 4 * self.features, 1, train=train, names=("conv3", "bn3"))
    return nn.relu(y + _shortcut(self, x, 4 * self.features, train))


def _shortcut(block: nn.Module, x: jax.Array, features: int, train: bool) -> jax.Array:
  if block.strides == 1 and x.shape[-1] == features:
    return x
  return _layers.conv_bn(block, x, features, 1, train=train, names=("shortcut_conv", "shortcut_bn"),
                         strides=block.strides)


class ResNet(_layers.ConvNet):
  """A stem of ``widths[0]`` channels, then one stage per remaining width (the first at stride 1,
  the others at stride 2), each of ``blocks[k]`` blocks."""

  num_classes: int
  blocks: Sequence[int] = (3, 3, 3)
  widths: Sequence[int] = (16, 16, 32, 64)
  block: type = BasicBlock

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if len(self.widths) != len(self.blocks) + 1:
      raise ValueError(f"ResNet needs one width for the stem plus one per stage, got "
                       f"widths={tuple(self.widths)} for blocks={tuple(self.blocks)}")
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    x = _layers.ConvBNReLU(self.widths[0], kernel=3, name="stem", **kw)(x, train)
    for k, (n, width) in enumerate(zip(self.blocks, self.widths[1:])):
      block = functools.partial(self.block, width, **kw)
      x = _layers.Stage(block, n, 1 if k == 0 else 2, name=f"stage{k + 1}")(x, train)
    return _layers.classifier(self, _layers.global_avg_pool(x), self.num_classes)


def cifar_resnet(depth: int, widths: Sequence[int] = (16, 16, 32, 64), **kwargs) -> ResNet:
  """The CIFAR ResNet of ``depth = 6n + 2`` layers (n basic blocks per stage)."""
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(f"a CIFAR ResNet has depth 6n+2 (8, 14, 20, 32, 44, 56, 110), got {depth}")
  n = (depth - 2) // 6
  return ResNet(blocks=(n, n, n), widths=tuple(widths), block=BasicBlock, **kwargs)


def resnet50(**kwargs) -> ResNet:
  """Bottleneck ResNet-50 (3, 4, 6, 3 blocks; 64..512 x 4 channels) with a CIFAR stem."""
  return ResNet(blocks=(3, 4, 6, 3), widths=(64, 64, 128, 256, 512), block=Bottleneck, **kwargs)
