"""MobileNetV2 (Sandler et al., 2018) in the CIFAR form used as a distillation student.

As in RepDistiller's ``mobilenetv2.py`` (``mobile_half``: expansion 6, width 0.5): a stride-2 3x3
stem, seven groups of inverted residual blocks (``stage1..stage7``; t, c, n, s = 1,16,1,1 / t,24,2,1
/ t,32,3,2 / t,64,4,2 / t,96,3,1 / t,160,3,2 / t,320,1,1), a 1x1 conv to 1280 channels
(``head_conv``), global average pooling and a linear head. Every block has the 1x1 expansion
convolution, even at expansion 1 (unlike torchvision).

Taps: ``stem``, ``stage{1..7}``, ``stage{k}/block_{j}``, ``head_conv``, ``pre_logits`` ([B, 1280]).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax

from kdjax.models.zoo import _layers

# (expansion or None for the model's, channels, blocks, first stride)
SETTINGS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
            (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))


class InvertedResidual(_layers.ConvBlock):
  """1x1 expand-BN-ReLU, 3x3 depthwise(stride)-BN-ReLU, 1x1 project-BN; residual if shapes match."""

  expansion: int = 6

  @nn.compact
  def __call__(self, x, train: bool):
    hidden = x.shape[-1] * self.expansion
    y = _layers.conv_bn(self, x, hidden, 1, train=train, names=("expand", "bn1"), relu=True)
    y = _layers.conv_bn(self, y, hidden, 3, train=train, names=("depthwise", "bn2"),
                        strides=self.strides, groups=hidden, relu=True)
    y = _layers.conv_bn(self, y, self.features, 1, train=train, names=("project", "bn3"))
    return x + y if self.strides == 1 and x.shape[-1] == self.features else y


class MobileNetV2(_layers.ConvNet):
  num_classes: int
  expansion: int = 6
  width_mult: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    x = _layers.ConvBNReLU(int(32 * self.width_mult), strides=2, kernel=3, name="stem",
                           **kw)(x, train)
    for k, (t, c, n, s) in enumerate(SETTINGS):
      block = functools.partial(InvertedResidual, int(c * self.width_mult),
                                expansion=t or self.expansion, **kw)
      x = _layers.Stage(block, n, s, name=f"stage{k + 1}")(x, train)
    # The reference widens the last layer only for width_mult > 1.
    last = int(1280 * self.width_mult) if self.width_mult > 1.0 else 1280
    x = _layers.ConvBNReLU(last, kernel=1, name="head_conv", **kw)(x, train)
    return _layers.classifier(self, _layers.global_avg_pool(x), self.num_classes)
