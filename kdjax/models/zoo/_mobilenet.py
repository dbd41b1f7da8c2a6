"""MobileNetV2 (Sandler et al., 2018) in the CIFAR form used as a distillation student.

As in RepDistiller's ``mobilenetv2.py`` (``mobile_half``: expansion 6, width 0.5): a stride-2 3x3
stem, seven groups of inverted residual blocks (``stage1..stage7``; t, c, n, s = 1,16,1,1 / t,24,2,1
/ t,32,3,2 / t,64,4,2 / t,96,3,1 / t,160,3,2 / t,320,1,1), a 1x1 conv to 1280 channels
(``head_conv``), global average pooling and a linear head. Every block has the 1x1 expansion
convolution, even at expansion 1 (unlike torchvision).

Taps: ``stem``, ``stage{1..7}``, ``stage{k}/block_{j}``, ``head_conv``, ``pre_logits`` ([B, 1280]).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.zoo import _layers

# (expansion or None for the model's, channels, blocks, first stride)
SETTINGS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
            (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))


class _ConvBNReLU(nn.Module):
  features: int
  kernel: int
  strides: int
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x, train: bool):
    x = _layers.conv(self.features, self.kernel, strides=self.strides, dtype=self.dtype,
                     name="conv")(x)
    return nn.relu(_layers.batch_norm(train=train, dtype=self.dtype, axis_name=self.bn_axis_name,
                                      name="bn")(x))


class InvertedResidual(nn.Module):
  """1x1 expand-BN-ReLU, 3x3 depthwise(stride)-BN-ReLU, 1x1 project-BN; residual if shapes match."""

  features: int
  strides: int
  expansion: int
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: _layers.batch_norm(train=train, dtype=self.dtype,  # noqa: E731
                                         axis_name=self.bn_axis_name, name=name)
    hidden = x.shape[-1] * self.expansion
    y = nn.relu(bn("bn1")(_layers.conv(hidden, 1, dtype=self.dtype, name="expand")(x)))
    y = _layers.conv(hidden, 3, strides=self.strides, groups=hidden, dtype=self.dtype,
                     name="depthwise")(y)
    y = nn.relu(bn("bn2")(y))
    y = bn("bn3")(_layers.conv(self.features, 1, dtype=self.dtype, name="project")(y))
    return x + y if self.strides == 1 and x.shape[-1] == self.features else y


class _Stage(nn.Module):
  features: int
  num_blocks: int
  strides: int
  expansion: int
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x, train: bool):
    for j in range(self.num_blocks):
      x = InvertedResidual(self.features, self.strides if j == 0 else 1, self.expansion,
                           self.dtype, self.bn_axis_name, name=f"block_{j}")(x, train)
    return x


class MobileNetV2(nn.Module):
  num_classes: int
  expansion: int = 6
  width_mult: float = 0.5
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    x = _ConvBNReLU(int(32 * self.width_mult), 3, 2, name="stem", **kw)(x, train)
    for k, (t, c, n, s) in enumerate(SETTINGS):
      x = _Stage(int(c * self.width_mult), n, s, t or self.expansion, name=f"stage{k + 1}",
                 **kw)(x, train)
    # The reference widens the last layer only for width_mult > 1.
    last = int(1280 * self.width_mult) if self.width_mult > 1.0 else 1280
    x = _ConvBNReLU(last, 1, 1, name="head_conv", **kw)(x, train)
    return _layers.classifier(self, _layers.global_avg_pool(x), self.num_classes)
