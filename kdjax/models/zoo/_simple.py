"""Small models for quick runs and tests: an MLP and a tiny CNN (8x8 digits, CIFAR-sized images)."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models.zoo import _layers


class MLP(nn.Module):
  """Flatten, then ``Dense -> ReLU`` stages ``stage1..stageK`` (one per hidden size), then a head.

  Taps: ``stage{i}`` ([B, hidden[i-1]], after the ReLU), ``pre_logits`` (= the last stage).
  """

  num_classes: int
  hidden: Sequence[int] = (128,)
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None  # no BatchNorm here; taken so every zoo model takes it

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # no BatchNorm or dropout
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      x = _DenseReLU(width, dtype=self.dtype, name=f"stage{i + 1}")(x)
    return _layers.classifier(self, x, self.num_classes)


class _DenseReLU(nn.Module):
  features: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    return nn.relu(_layers.dense(self.features, dtype=self.dtype, name="dense")(x))


class _ConvBNReLU(nn.Module):
  features: int
  dtype: Any
  pool: bool = False  # 2x2 max pool after the activation
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = _layers.conv(self.features, 3, dtype=self.dtype, name="conv")(x)
    x = nn.relu(_layers.batch_norm(train=train, dtype=self.dtype, axis_name=self.bn_axis_name,
                                   name="bn")(x))
    return nn.max_pool(x, (2, 2), strides=(2, 2)) if self.pool else x


class CNNSmall(nn.Module):
  """``stem`` (conv-BN-ReLU, ``width``), ``stage1`` (conv-BN-ReLU, 2 x ``width``, 2x2 max pool),
  ``stage2`` (conv-BN-ReLU, 4 x ``width``), global average pool, head.

  Sized for 8x8 digits (about 25k parameters at ``width=16``); works on any [B, H, W, C] with
  H, W >= 2. Taps: ``stem``, ``stage1``, ``stage2`` ([B, H', W', C]), ``pre_logits`` ([B, 4*width]).
  """

  num_classes: int
  width: int = 16
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name)
    x = _ConvBNReLU(self.width, name="stem", **kw)(x, train)
    x = _ConvBNReLU(2 * self.width, pool=True, name="stage1", **kw)(x, train)
    x = _ConvBNReLU(4 * self.width, name="stage2", **kw)(x, train)
    return _layers.classifier(self, _layers.global_avg_pool(x), self.num_classes)
