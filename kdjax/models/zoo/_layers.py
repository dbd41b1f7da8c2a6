"""Building blocks shared by the zoo: PyTorch-faithful convolutions, BatchNorm, conv-BN-ReLU
modules, stages of blocks, the head.

Every zoo model computes in ``dtype`` (float32 or bfloat16) and stores its parameters in float32.
Convolutions pad like PyTorch (``padding=k // 2`` on both sides), so strided layers see the same
pixels as the reference implementations, not XLA's ``SAME`` (which pads right/bottom only).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

PARAM_DTYPE = jnp.float32
# Kaiming-normal (fan_out), the convolution init of the CIFAR reference models.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel: int, *, strides: int = 1, groups: int = 1, use_bias: bool = False,
         dtype: Dtype, name: str | None = None) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), feature_group_count=groups, use_bias=use_bias,
                 kernel_init=conv_init, dtype=dtype, param_dtype=PARAM_DTYPE, name=name)


def batch_norm(*, train: bool, dtype: Dtype, axis_name: str | None = None,
               name: str | None = None) -> Callable[[jax.Array], jax.Array]:
  """BatchNorm matching PyTorch's defaults: eps 1e-5, running averages keep 0.9 of the old value.

  Normalises in float32 and returns ``dtype``: Flax subtracts the float32 statistics from the
  input directly, which strict dtype promotion rejects for bfloat16 inputs. ``axis_name``
  (training only) averages the batch statistics over a ``pmap`` axis, so per-device batches
  normalise like the global batch.
  """
  bn = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=jnp.float32,
                    param_dtype=PARAM_DTYPE, axis_name=axis_name if train else None, name=name)
  return lambda x: bn(x.astype(jnp.float32)).astype(dtype)


def layer_norm(*, dtype: Dtype, name: str | None = None) -> Callable[[jax.Array], jax.Array]:
  """LayerNorm (eps 1e-6) in float32, returning ``dtype`` (see :func:`batch_norm` for why)."""
  ln = nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=PARAM_DTYPE, name=name)
  return lambda x: ln(x.astype(jnp.float32)).astype(dtype)


def bn(block: nn.Module, x: jax.Array, *, train: bool, name: str, relu: bool = False) -> jax.Array:
  """:func:`batch_norm` named ``name`` inside ``block`` (with its ``dtype`` and ``bn_axis_name``),
  then ReLU when ``relu``."""
  y = batch_norm(train=train, dtype=block.dtype, axis_name=block.bn_axis_name, name=name)(x)
  return nn.relu(y) if relu else y


def conv_bn(block: nn.Module, x: jax.Array, features: int, kernel: int, *, train: bool,
            names: tuple[str, str] = ("conv", "bn"), strides: int = 1, groups: int = 1,
            use_bias: bool = False, relu: bool = False) -> jax.Array:
  """:func:`conv` then :func:`bn` inside ``block``, named ``names`` (convolution, BatchNorm),
  then ReLU when ``relu``."""
  y = conv(features, kernel, strides=strides, groups=groups, use_bias=use_bias, dtype=block.dtype,
           name=names[0])(x)
  return bn(block, y, train=train, name=names[1], relu=relu)


class ConvBlock(nn.Module):
  """The fields every convolutional block of the zoo takes; subclasses add theirs (with
  defaults) and a ``__call__(x, train)``."""

  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None


class ConvNet(nn.Module, kw_only=True):
  """The keyword-only fields every convolutional zoo model takes: ``dtype`` (the compute dtype;
  parameters stay float32) and ``bn_axis_name`` (under ``pmap``, the mapped axis name, so
  BatchNorm uses global batch statistics)."""

  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None


class ConvBNReLU(ConvBlock):
  """conv (``conv``) - BatchNorm (``bn``) - ReLU as one tappable module, then a 2x2 max pool when
  ``pool``."""

  kernel: int = 3
  pool: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = conv_bn(self, x, self.features, self.kernel, train=train, strides=self.strides, relu=True)
    return nn.max_pool(x, (2, 2), strides=(2, 2)) if self.pool else x


class Stage(nn.Module):
  """``num_blocks`` blocks named ``block_0..``, each built as ``block(strides=s, name=...)`` and
  called as ``(x, train)``: the first at ``strides``, the others at stride 1."""

  block: Callable[..., nn.Module]
  num_blocks: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for j in range(self.num_blocks):
      x = self.block(strides=self.strides if j == 0 else 1, name=f"block_{j}")(x, train)
    return x


def dense(features: int, *, dtype: Dtype, name: str | None = None) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=PARAM_DTYPE, name=name)


def classifier(module: nn.Module, x: jax.Array, num_classes: int) -> jax.Array:
  """Sows ``x`` as ``'pre_logits'`` and returns float32 logits from a head named ``'head'``.

  The head runs in float32 whatever the compute dtype: distillation losses divide logits by a
  temperature and compare softmaxes, where bfloat16's 8-bit mantissa is visible.
  """
  module.sow("intermediates", "pre_logits", x)
  return nn.Dense(num_classes, dtype=jnp.float32, param_dtype=PARAM_DTYPE,
                  name="head")(x.astype(jnp.float32))


def global_avg_pool(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, C]."""
  return jnp.mean(x, axis=(1, 2))


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """ShuffleNet's channel shuffle on NHWC: channel ``i * (C // g) + j`` moves to ``j * g + i``."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, groups, c // groups)
  return jnp.swapaxes(x, 3, 4).reshape(b, h, w, c)


def avg_pool(x: jax.Array, window: int, strides: int, padding: int) -> jax.Array:
  """PyTorch's ``AvgPool2d`` (zero padding counted in the mean) on NHWC.

  Written out because ``flax.linen.avg_pool`` divides by a NumPy integer, which strict dtype
  promotion rejects.
  """
  summed = jax.lax.reduce_window(x, jnp.zeros((), x.dtype), jax.lax.add,
                                 (1, window, window, 1), (1, strides, strides, 1),
                                 ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  return summed / (window * window)
