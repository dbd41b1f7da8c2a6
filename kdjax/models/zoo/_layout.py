"""Where a zoo CNN's stage outputs and the layers around them are, as tap paths."""
from __future__ import annotations

import dataclasses
from typing import Mapping

from kdjax.models.zoo import _mobilenet, _registry, _resnet, _shufflenet, _vgg, _wrn


@dataclasses.dataclass(frozen=True)
class StageLayout:
  """The stage layout of a zoo CNN, for terms that read its feature maps.

  Attributes:
    model: the zoo name.
    stages: the stage taps in order (``'stage1'``, ``'stage2'``, ...).
    channels: channels of the stem's output map and of each stage's, or None where they depend
      on a width multiplier (MobileNetV2, ShuffleNet).
    preact: per stage, the tap of its output before its last ReLU: a ResNet's last block's last
      BatchNorm (before the residual addition), a VGG group's last BatchNorm; the stage itself
      where the stage ends without a ReLU (Wide ResNets' pre-activation blocks, MobileNetV2's
      linear bottlenecks) or in a concatenation (ShuffleNet).
    bn_before_relu: per stage, the BatchNorm whose output the ReLU after the stage reads (the
      BatchNorm of ``preact`` for ResNets and VGG; for a Wide ResNet, the BatchNorm the stage
      output enters next). Absent for the families without such a layer.
  """

  model: str
  stages: tuple[str, ...]
  channels: tuple[int, ...] | None
  preact: Mapping[str, str]
  bn_before_relu: Mapping[str, str]


def stage_layout(name: str) -> StageLayout:
  """The :class:`StageLayout` of zoo CNN ``name`` (e.g. ``'resnet32x4'``).

  Raises:
    ValueError: ``name`` is not a zoo model with stages (an MLP, a Transformer, ...).
  """
  if name not in _registry.MODELS:
    raise ValueError(f"{name!r} is not a zoo model; use one of {sorted(_registry.MODELS)}")
  module = _registry.MODELS[name](num_classes=1)
  if isinstance(module, _resnet.ResNet):
    stages = _names(len(module.blocks))
    bottleneck = module.block is _resnet.Bottleneck
    last_bn = "bn3" if bottleneck else "bn2"
    expansion = 4 if bottleneck else 1
    channels = (module.widths[0],) + tuple(expansion * w for w in module.widths[1:])
    preact = {s: f"{s}/block_{n - 1}/{last_bn}" for s, n in zip(stages, module.blocks)}
    return StageLayout(name, stages, channels, preact, dict(preact))
  if isinstance(module, _wrn.WideResNet):
    stages, k = _names(3), module.widen_factor
    after = {s: f"stage{i + 2}/block_0/bn1" for i, s in enumerate(stages[:-1])}
    return StageLayout(name, stages, (16, 16 * k, 32 * k, 64 * k), {s: s for s in stages},
                       {**after, stages[-1]: "bn"})
  if isinstance(module, _vgg.VGG):
    groups = _vgg.CONFIGS[module.depth]
    stages = _names(len(groups) - 1)
    preact = {s: f"{s}/bn{len(g) - 1}" for s, g in zip(stages, groups[1:])}
    return StageLayout(name, stages, tuple(g[-1] for g in groups), preact, dict(preact))
  if isinstance(module, _mobilenet.MobileNetV2):
    stages = _names(len(_mobilenet.SETTINGS))
  elif isinstance(module, (_shufflenet.ShuffleNetV1, _shufflenet.ShuffleNetV2)):
    stages = _names(3)
  else:
    raise ValueError(f"zoo model {name!r} has no convolutional stages to lay out")
  return StageLayout(name, stages, None, {s: s for s in stages}, {})


def _names(n: int) -> tuple[str, ...]:
  return tuple(f"stage{k}" for k in range(1, n + 1))
