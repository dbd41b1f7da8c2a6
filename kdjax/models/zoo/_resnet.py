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

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.zoo import _layers


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: _layers.batch_norm(train=train, dtype=self.dtype,  # noqa: E731
                                         axis_name=self.bn_axis_name, name=name)
    y = _layers.conv(self.features, 3, strides=self.strides, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(bn("bn1")(y))
    y = _layers.conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    y = bn("bn2")(y)
    return nn.relu(y + _shortcut(self, x, self.features, train))


class Bottleneck(nn.Module):
  """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN, plus the shortcut, then ReLU."""

  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: _layers.batch_norm(train=train, dtype=self.dtype,  # noqa: E731
                                         axis_name=self.bn_axis_name, name=name)
    y = nn.relu(bn("bn1")(_layers.conv(self.features, 1, dtype=self.dtype, name="conv1")(x)))
    y = _layers.conv(self.features, 3, strides=self.strides, dtype=self.dtype, name="conv2")(y)
    y = nn.relu(bn("bn2")(y))
    y = _layers.conv(4 * self.features, 1, dtype=self.dtype, name="conv3")(y)
    y = bn("bn3")(y)
    return nn.relu(y + _shortcut(self, x, 4 * self.features, train))


def _shortcut(block: nn.Module, x: jax.Array, features: int, train: bool) -> jax.Array:
  if block.strides == 1 and x.shape[-1] == features:
    return x
  x = _layers.conv(features, 1, strides=block.strides, dtype=block.dtype, name="shortcut_conv")(x)
  return _layers.batch_norm(train=train, dtype=block.dtype, axis_name=block.bn_axis_name,
                            name="shortcut_bn")(x)


class _Stage(nn.Module):
  block: type
  features: int
  num_blocks: int
  strides: int
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x, train: bool):
    for j in range(self.num_blocks):
      x = self.block(self.features, strides=self.strides if j == 0 else 1, dtype=self.dtype,
                     bn_axis_name=self.bn_axis_name, name=f"block_{j}")(x, train)
    return x


class _Stem(nn.Module):
  features: int
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x, train: bool):
    x = _layers.conv(self.features, 3, dtype=self.dtype, name="conv")(x)
    return nn.relu(_layers.batch_norm(train=train, dtype=self.dtype, axis_name=self.bn_axis_name,
                                      name="bn")(x))


class ResNet(nn.Module):
  """A stem of ``widths[0]`` channels, then one stage per remaining width (the first at stride 1,
  the others at stride 2), each of ``blocks[k]`` blocks."""

  num_classes: int
  blocks: Sequence[int] = (3, 3, 3)
  widths: Sequence[int] = (16, 16, 32, 64)
  block: type = BasicBlock
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if len(self.widths) != len(self.blocks) + 1:
      raise ValueError(f"ResNet needs one width for the stem plus one per stage, got "
                       f"widths={tuple(self.widths)} for blocks={tuple(self.blocks)}")
    x = _Stem(self.widths[0], self.dtype, self.bn_axis_name, name="stem")(x, train)
    for k, (n, width) in enumerate(zip(self.blocks, self.widths[1:])):
      x = _Stage(self.block, width, n, 1 if k == 0 else 2, self.dtype, self.bn_axis_name,
                 name=f"stage{k + 1}")(x, train)
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
