"""VGG with BatchNorm for 32x32 images, the CIFAR variant of the distillation literature.

Five groups of 3x3 conv-BN(-ReLU) layers (``stem``, ``stage1..stage4``) with 2x2 max pooling
between the first four, global average pooling and a single linear head (no fully connected stack).
Convolutions keep their bias, as in the reference ``vgg.py``. Each group's output is taken after its
ReLU; the pooling that follows a group is applied at the start of the next one, so a tap sees the
group's full-resolution map (the reference's ``f0..f4``). On 64x64 inputs a fourth max pool runs
before ``stage4``, as in the reference.

Taps: ``stem``, ``stage{1..4}``, ``pre_logits`` ([B, 512]).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

from kdjax.models.zoo import _layers

CONFIGS = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


class _ConvGroup(nn.Module):
  widths: Sequence[int]
  pool_first: bool
  dtype: Any
  bn_axis_name: str | None

  @nn.compact
  def __call__(self, x, train: bool):
    if self.pool_first:
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    for i, width in enumerate(self.widths):
      x = _layers.conv_bn(self, x, width, 3, train=train, names=(f"conv{i}", f"bn{i}"),
                          use_bias=True, relu=True)
    return x


class VGG(_layers.ConvNet):
  num_classes: int
  depth: int = 13

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.depth not in CONFIGS:
      raise ValueError(f"VGG depth must be one of {sorted(CONFIGS)}, got {self.depth}")
    groups = CONFIGS[self.depth]
    height = x.shape[1]
    names = ("stem", "stage1", "stage2", "stage3", "stage4")
    for k, (name, widths) in enumerate(zip(names, groups)):
      pool_first = 0 < k < 4 or (k == 4 and height == 64)
      x = _ConvGroup(widths, pool_first, self.dtype, self.bn_axis_name, name=name)(x, train)
    return _layers.classifier(self, _layers.global_avg_pool(x), self.num_classes)
