"""ShuffleNet V1 (Zhang et al., 2018) and V2 (Ma et al., 2018) for 32x32 images.

The CIFAR forms of RepDistiller's ``ShuffleNetv1.py`` / ``ShuffleNetv2.py``: a 1x1 stem of 24
channels (no stride, no max pool), three stages that each halve the resolution, global average
pooling and a linear head (V2 adds a 1x1 conv, ``head_conv``, before pooling).

V1 (``ShuffleV1``: groups 3, widths 240/480/960, 4/8/4 units): grouped 1x1 convolutions around a
3x3 depthwise one, with a channel shuffle; the first unit of a stage concatenates a 3x3 stride-2
average-pooled shortcut (zero padding counted in the average, like PyTorch's ``AvgPool2d``). The
first unit after the stem uses an ungrouped first 1x1 convolution, as in the paper.

V2 (``ShuffleV2``, net size 1: widths 116/232/464, head 1024, 1 + 3/7/3 units): each stage opens
with a down-sampling unit (two branches, concatenated, shuffled) followed by basic units that split
the channels in half, transform one half, concatenate and shuffle.

Taps: ``stem``, ``stage{1,2,3}``, ``stage{k}/block_{j}``, ``head_conv`` (V2), ``pre_logits``.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.zoo import _layers


class ShuffleV1Unit(_layers.ConvBlock):
  """A unit whose output has ``features`` channels: at stride 2 the residual branch makes only the
  channels its concatenated (pooled) input lacks."""

  groups: int = 3

  @nn.compact
  def __call__(self, x, train: bool):
    branch = self.features - x.shape[-1] if self.strides == 2 else self.features
    mid = branch // 4
    g = 1 if x.shape[-1] == 24 else self.groups
    y = _layers.conv_bn(self, x, mid, 1, train=train, names=("conv1", "bn1"), groups=g, relu=True)
    y = _layers.channel_shuffle(y, g)
    y = _layers.conv_bn(self, y, mid, 3, train=train, names=("conv2", "bn2"), strides=self.strides,
                        groups=mid, relu=True)
    y = _layers.conv_bn(self, y, branch, 1, train=train, names=("conv3", "bn3"), groups=self.groups)
    if self.strides == 2:
      shortcut = _layers.avg_pool(x, 3, strides=2, padding=1)
      return nn.relu(jnp.concatenate([y, shortcut], axis=-1))
    return nn.relu(y + x)


class ShuffleNetV1(_layers.ConvNet):
  num_classes: int
  widths: Sequence[int] = (240, 480, 960)
  blocks: Sequence[int] = (4, 8, 4)
  groups: int = 3

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    x = _layers.ConvBNReLU(24, kernel=1, name="stem", **kw)(x, train)
    for k, (width, n) in enumerate(zip(self.widths, self.blocks)):
      block = functools.partial(ShuffleV1Unit, width, groups=self.groups, **kw)
      x = _layers.Stage(block, n, 2, name=f"stage{k + 1}")(x, train)
    return _layers.classifier(self, _layers.global_avg_pool(x), self.num_classes)


class ShuffleV2DownUnit(nn.Module):
  """Two stride-2 branches, each making ``features // 2`` channels, concatenated and shuffled."""

  features: int
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    c_in, mid = x.shape[-1], self.features // 2
    # left: depthwise 3x3 stride 2 - BN - 1x1 - BN - ReLU
    left = _layers.conv_bn(self, x, c_in, 3, train=train, names=("conv1", "bn1"), strides=2,
                           groups=c_in)
    left = _layers.conv_bn(self, left, mid, 1, train=train, names=("conv2", "bn2"), relu=True)
    # right: 1x1 - BN - ReLU - depthwise 3x3 stride 2 - BN - 1x1 - BN - ReLU
    right = _layers.conv_bn(self, x, mid, 1, train=train, names=("conv3", "bn3"), relu=True)
    right = _layers.conv_bn(self, right, mid, 3, train=train, names=("conv4", "bn4"), strides=2,
                            groups=mid)
    right = _layers.conv_bn(self, right, mid, 1, train=train, names=("conv5", "bn5"), relu=True)
    return _layers.channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleV2BasicUnit(nn.Module):
  """Splits the channels in half, transforms the second half, concatenates and shuffles."""

  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1] // 2
    x1, x2 = x[..., :c], x[..., c:]
    y = _layers.conv_bn(self, x2, c, 1, train=train, names=("conv1", "bn1"), relu=True)
    y = _layers.conv_bn(self, y, c, 3, train=train, names=("conv2", "bn2"), groups=c)
    y = _layers.conv_bn(self, y, c, 1, train=train, names=("conv3", "bn3"), relu=True)
    return _layers.channel_shuffle(jnp.concatenate([x1, y], axis=-1), 2)


class _V2Stage(nn.Module):
  """A down-sampling unit (``block_0``), then ``num_blocks`` basic units."""

  features: int
  num_blocks: int
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x, train: bool):
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    x = ShuffleV2DownUnit(self.features, name="block_0", **kw)(x, train)
    for j in range(self.num_blocks):
      x = ShuffleV2BasicUnit(name=f"block_{j + 1}", **kw)(x, train)
    return x


class ShuffleNetV2(_layers.ConvNet):
  num_classes: int
  widths: Sequence[int] = (116, 232, 464, 1024)
  blocks: Sequence[int] = (3, 7, 3)  # basic units per stage, after its down-sampling unit

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    x = _layers.ConvBNReLU(24, kernel=1, name="stem", **kw)(x, train)
    for k, (width, n) in enumerate(zip(self.widths[:3], self.blocks)):
      x = _V2Stage(width, n, name=f"stage{k + 1}", **kw)(x, train)
    x = _layers.ConvBNReLU(self.widths[3], kernel=1, name="head_conv", **kw)(x, train)
    return _layers.classifier(self, _layers.global_avg_pool(x), self.num_classes)

