"""Building blocks shared by the zoo: PyTorch-faithful convolutions, BatchNorm, the head.

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
