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

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.zoo import _layers


class _Stem(nn.Module):
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x, train: bool):
    x = _layers.conv(24, 1, dtype=self.dtype, name="conv")(x)
    return nn.relu(_layers.batch_norm(train=train, dtype=self.dtype, axis_name=self.bn_axis_name,
                                      name="bn")(x))


class ShuffleV1Unit(nn.Module):
  features: int  # output channels of the residual branch
  strides: int
  groups: int
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: _layers.batch_norm(train=train, dtype=self.dtype,  # noqa: E731
                                         axis_name=self.bn_axis_name, name=name)
    mid = self.features // 4
    g = 1 if x.shape[-1] == 24 else self.groups
    y = nn.relu(bn("bn1")(_layers.conv(mid, 1, groups=g, dtype=self.dtype, name="conv1")(x)))
    y = _layers.channel_shuffle(y, g)
    y = _layers.conv(mid, 3, strides=self.strides, groups=mid, dtype=self.dtype, name="conv2")(y)
    y = nn.relu(bn("bn2")(y))
    y = bn("bn3")(_layers.conv(self.features, 1, groups=self.groups, dtype=self.dtype,
                               name="conv3")(y))
    if self.strides == 2:
      shortcut = _layers.avg_pool(x, 3, strides=2, padding=1)
      return nn.relu(jnp.concatenate([y, shortcut], axis=-1))
    return nn.relu(y + x)


class _V1Stage(nn.Module):
  features: int
  num_blocks: int
  groups: int
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x, train: bool):
    for j in range(self.num_blocks):
      # The first unit concatenates its input, so its branch makes only the missing channels.
      branch = self.features - x.shape[-1] if j == 0 else self.features
      x = ShuffleV1Unit(branch, 2 if j == 0 else 1, self.groups, self.dtype, self.bn_axis_name,
                        name=f"block_{j}")(x, train)
    return x


class ShuffleNetV1(nn.Module):
  num_classes: int
  widths: Sequence[int] = (240, 480, 960)
  blocks: Sequence[int] = (4, 8, 4)
  groups: int = 3
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = _Stem(self.dtype, self.bn_axis_name, name="stem")(x, train)
    for k, (width, n) in enumerate(zip(self.widths, self.blocks)):
      x = _V1Stage(width, n, self.groups, self.dtype, self.bn_axis_name,
                   name=f"stage{k + 1}")(x, train)
    return _layers.classifier(self, _layers.global_avg_pool(x), self.num_classes)


class ShuffleV2DownUnit(nn.Module):
  features: int
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: _layers.batch_norm(train=train, dtype=self.dtype,  # noqa: E731
                                         axis_name=self.bn_axis_name, name=name)
    c_in, mid = x.shape[-1], self.features // 2
    # left: depthwise 3x3 stride 2 - BN - 1x1 - BN - ReLU
    left = bn("bn1")(_layers.conv(c_in, 3, strides=2, groups=c_in, dtype=self.dtype,
                                  name="conv1")(x))
    left = nn.relu(bn("bn2")(_layers.conv(mid, 1, dtype=self.dtype, name="conv2")(left)))
    # right: 1x1 - BN - ReLU - depthwise 3x3 stride 2 - BN - 1x1 - BN - ReLU
    right = nn.relu(bn("bn3")(_layers.conv(mid, 1, dtype=self.dtype, name="conv3")(x)))
    right = bn("bn4")(_layers.conv(mid, 3, strides=2, groups=mid, dtype=self.dtype,
                                   name="conv4")(right))
    right = nn.relu(bn("bn5")(_layers.conv(mid, 1, dtype=self.dtype, name="conv5")(right)))
    return _layers.channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleV2BasicUnit(nn.Module):
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: _layers.batch_norm(train=train, dtype=self.dtype,  # noqa: E731
                                         axis_name=self.bn_axis_name, name=name)
    c = x.shape[-1] // 2
    x1, x2 = x[..., :c], x[..., c:]
    y = nn.relu(bn("bn1")(_layers.conv(c, 1, dtype=self.dtype, name="conv1")(x2)))
    y = bn("bn2")(_layers.conv(c, 3, groups=c, dtype=self.dtype, name="conv2")(y))
    y = nn.relu(bn("bn3")(_layers.conv(c, 1, dtype=self.dtype, name="conv3")(y)))
    return _layers.channel_shuffle(jnp.concatenate([x1, y], axis=-1), 2)


class _V2Stage(nn.Module):
  features: int
  num_blocks: int
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x, train: bool):
    x = ShuffleV2DownUnit(self.features, self.dtype, self.bn_axis_name, name="block_0")(x, train)
    for j in range(self.num_blocks):
      x = ShuffleV2BasicUnit(self.dtype, self.bn_axis_name, name=f"block_{j + 1}")(x, train)
    return x


class ShuffleNetV2(nn.Module):
  num_classes: int
  widths: Sequence[int] = (116, 232, 464, 1024)
  blocks: Sequence[int] = (3, 7, 3)  # basic units per stage, after its down-sampling unit
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = _Stem(self.dtype, self.bn_axis_name, name="stem")(x, train)
    for k, (width, n) in enumerate(zip(self.widths[:3], self.blocks)):
      x = _V2Stage(width, n, self.dtype, self.bn_axis_name, name=f"stage{k + 1}")(x, train)
    x = _HeadConv(self.widths[3], self.dtype, self.bn_axis_name, name="head_conv")(x, train)
    return _layers.classifier(self, _layers.global_avg_pool(x), self.num_classes)


class _HeadConv(nn.Module):
  features: int
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x, train: bool):
    x = _layers.conv(self.features, 1, dtype=self.dtype, name="conv")(x)
    return nn.relu(_layers.batch_norm(train=train, dtype=self.dtype, axis_name=self.bn_axis_name,
                                      name="bn")(x))
