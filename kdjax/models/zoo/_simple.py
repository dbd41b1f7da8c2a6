"""Small models for quick runs and tests: an MLP and a tiny CNN (8x8 digits, CIFAR-sized images)."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.zoo import _layers


class MLP(nn.Module):
  """Flatten, then ``Dense -> ReLU`` stages ``stage1..stageK`` (one per hidden size), then a head.

  With ``dropout_rate > 0``, dropout follows every hidden stage during training (the
  784-1200-1200-10 teacher of Hinton et al. 2015 is ``hidden=(1200, 1200), dropout_rate=0.5``);
  ``input_dropout_rate > 0`` also drops input pixels (Hinton et al. 2012 used 0.2). Both are off
  by default, and at evaluation.

  Taps: ``stage{i}`` ([B, hidden[i-1]], after the ReLU, before dropout), ``pre_logits``
  ([B, hidden[-1]], the input of the head, after dropout).

  References:
    Hinton, Srivastava, Krizhevsky, Sutskever, Salakhutdinov, "Improving neural networks by
    preventing co-adaptation of feature detectors", 2012.
  """

  num_classes: int
  hidden: Sequence[int] = (128,)
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None  # no BatchNorm here; taken so every zoo model takes it
  dropout_rate: float = 0.0  # after each hidden stage, in training only
  input_dropout_rate: float = 0.0  # on the flattened input, in training only

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for name, rate in (("dropout_rate", self.dropout_rate),
                       ("input_dropout_rate", self.input_dropout_rate)):
      if not 0.0 <= rate < 1.0:
        raise ValueError(f"mlp {name} must be in [0, 1), got {rate}")
    x = x.reshape(x.shape[0], -1)
    if self.input_dropout_rate:
      x = nn.Dropout(self.input_dropout_rate, deterministic=not train, name="input_dropout")(x)
    for i, width in enumerate(self.hidden):
      x = _DenseReLU(width, dtype=self.dtype, name=f"stage{i + 1}")(x)
      if self.dropout_rate:
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name=f"dropout{i + 1}")(x)
    return _layers.classifier(self, x, self.num_classes)


class _DenseReLU(nn.Module):
  features: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    return nn.relu(_layers.dense(self.features, dtype=self.dtype, name="dense")(x))


class CNNSmall(_layers.ConvNet):
  """``stem`` (conv-BN-ReLU, ``width``), ``stage1`` (conv-BN-ReLU, 2 x ``width``, 2x2 max pool),
  ``stage2`` (conv-BN-ReLU, 4 x ``width``), global average pool, head.

  Sized for 8x8 digits (about 25k parameters at ``width=16``); works on any [B, H, W, C] with
  H, W >= 2. Taps: ``stem``, ``stage1``, ``stage2`` ([B, H', W', C]), ``pre_logits`` ([B, 4*width]).
  """

  num_classes: int
  width: int = 16

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    x = _layers.ConvBNReLU(self.width, name="stem", **kw)(x, train)
    x = _layers.ConvBNReLU(2 * self.width, pool=True, name="stage1", **kw)(x, train)
    x = _layers.ConvBNReLU(4 * self.width, name="stage2", **kw)(x, train)
    return _layers.classifier(self, _layers.global_avg_pool(x), self.num_classes)
