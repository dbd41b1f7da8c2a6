"""Wide ResNets (Zagoruyko & Komodakis, 2016) for 32x32 images: WRN-depth-k.

Pre-activation blocks (BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3); where the width changes the
shortcut is a strided 1x1 convolution of the *activated* input, as in the reference ``wrn.py`` of
the CIFAR distillation code bases. A 3x3 stem of 16 channels, three stages of ``(depth - 4) / 6``
blocks at widths 16k, 32k, 64k (strides 1, 2, 2), a final BN-ReLU, global average pooling, a head.

Taps: ``stem``; ``stage{1,2,3}`` (stage outputs, before the final BN-ReLU); ``stage{k}/block_{j}``;
``pre_logits`` ([B, 64k]).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax

from kdjax.models.zoo import _layers


class WideBasicBlock(_layers.ConvBlock):
  """BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3, plus the identity or a strided 1x1
  convolution of the activated input."""

  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool):
    act = _layers.bn(self, x, train=train, name="bn1", relu=True)
    y = _layers.conv(self.features, 3, strides=self.strides, dtype=self.dtype, name="conv1")(act)
    y = _layers.bn(self, y, train=train, name="bn2", relu=True)
    if self.dropout_rate > 0:
      y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = _layers.conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
    if x.shape[-1] == self.features:
      return x + y
    shortcut = _layers.conv(self.features, 1, strides=self.strides, dtype=self.dtype,
                            name="shortcut_conv")(act)
    return shortcut + y


class WideResNet(_layers.ConvNet):
  num_classes: int
  depth: int = 16
  widen_factor: int = 1
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(f"a Wide ResNet has depth 6n+4 (10, 16, 22, 28, 40, ...), got {self.depth}")
    n = (self.depth - 4) // 6
    k = self.widen_factor
    x = _layers.conv(16, 3, dtype=self.dtype, name="stem")(x)
    for s, (width, strides) in enumerate(((16 * k, 1), (32 * k, 2), (64 * k, 2))):
      block = functools.partial(WideBasicBlock, width, dropout_rate=self.dropout_rate,
                                dtype=self.dtype, bn_axis_name=self.bn_axis_name)
      x = _layers.Stage(block, n, strides, name=f"stage{s + 1}")(x, train)
    x = _layers.bn(self, x, train=train, name="bn", relu=True)
    return _layers.classifier(self, _layers.global_avg_pool(x), self.num_classes)
