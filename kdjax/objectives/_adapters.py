"""Trainable adapters that map student features into the teacher's space.

A 1x1 convolution on a channel-last feature map is a dense layer on its last axis, so one
``linear`` adapter serves both FitNets regressors on ``[B, H, W, C]`` maps and projections of
``[B, D]`` embeddings. ``conv3x3_bn_relu`` is RepDistiller's FitNets regressor (``ConvReg``).

BatchNorm inside adapters (``conv3x3_bn_relu``, the OFD/AB connectors, FT's translator) always
normalises with the statistics of the batch at hand and keeps no running averages: adapters only
exist during training, where the reference implementations run them in train mode, and this keeps
them pure functions of their parameters (no extra state to thread or checkpoint).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ADAPTERS = ("linear", "mlp", "conv3x3_bn_relu")


class BatchStatNorm(nn.Module):
  """BatchNorm in training mode: normalise over every axis but the last with the batch's own
  mean and (biased) variance, eps 1e-5 as PyTorch, then a learned per-channel scale and bias.

  Under ``pmap`` with ``axis_name`` the moments are averaged over the devices, so they are the
  global batch's as under ``jit``.
  """

  epsilon: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    if self.axis_name is None:
      var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    else:
      mean_sq = jnp.mean(jnp.square(x), axis=axes, keepdims=True)
      mean, mean_sq = jax.lax.pmean((mean, mean_sq), self.axis_name)
      var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
    shape = (1,) * (x.ndim - 1) + (c,)
    return ((x - mean) * jax.lax.rsqrt(var + jnp.float32(self.epsilon)) * scale.reshape(shape)
            + bias.reshape(shape))


def _conv(features: int, kernel: int, *, use_bias: bool = True, name: str | None = None):
  pad = kernel // 2  # PyTorch's padding=k//2 on both sides.
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                 name=name)


class Projector(nn.Module):
  """Maps the last axis to ``features`` channels: ``linear`` (= 1x1 conv), a 2-layer ``mlp``, or
  ``conv3x3_bn_relu`` (RepDistiller's ``ConvReg`` for maps of equal resolution: a 3x3
  convolution with bias, BatchNorm, ReLU; needs ``[B, H, W, C]`` maps)."""

  features: int
  kind: str = "linear"
  hidden: int | None = None

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    if self.kind == "conv3x3_bn_relu":
      if x.ndim != 4:
        raise ValueError(f"the conv3x3_bn_relu regressor maps [batch, H, W, C] feature maps, got "
                         f"shape {x.shape}; use adapter='linear' for vectors")
      return nn.relu(BatchStatNorm(name="bn")(_conv(self.features, 3, name="conv")(x)))
    if self.kind == "mlp":
      x = nn.relu(nn.Dense(self.hidden or self.features, name="hidden")(x))
    return nn.Dense(self.features, name="out")(x)


class ConvBN(nn.Module):
  """A 1x1 convolution without bias, then BatchNorm: the connector of OFD (mdistiller
  ``build_feature_connector``) and AB (RepDistiller ``Connector``)."""

  features: int

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    x = nn.Dense(self.features, use_bias=False,
                 kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                 name="conv")(x)
    return BatchStatNorm(name="bn")(x)


def _leaky(x):
  return nn.leaky_relu(x, negative_slope=0.1)


class Paraphraser(nn.Module):
  """FT's paraphraser: a 3-conv encoder to ``factor`` channels and a 3-conv decoder back to the
  input's ``channels`` (3x3, stride 1, LeakyReLU 0.1, no BatchNorm), as RepDistiller
  ``models/util.py`` ``Paraphraser`` (its stride-1 transposed convolutions are convolutions)."""

  channels: int
  factor: int

  def setup(self):
    self.enc = [_conv(self.channels, 3, name="enc0"), _conv(self.factor, 3, name="enc1"),
                _conv(self.factor, 3, name="enc2")]
    self.dec = [_conv(self.factor, 3, name="dec0"), _conv(self.channels, 3, name="dec1"),
                _conv(self.channels, 3, name="dec2")]

  def encode(self, x):
    x = x.astype(jnp.float32)
    for layer in self.enc:
      x = _leaky(layer(x))
    return x

  def __call__(self, x):
    factor = self.encode(x)
    y = factor
    for layer in self.dec:
      y = _leaky(layer(y))
    return factor, y


class Translator(nn.Module):
  """FT's translator: three 3x3 convolutions with BatchNorm and LeakyReLU 0.1, to ``factor``
  channels (RepDistiller ``models/util.py`` ``Translator``)."""

  channels: int
  factor: int

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    for i, width in enumerate((self.channels, self.factor, self.factor)):
      x = _leaky(BatchStatNorm(name=f"bn{i}")(_conv(width, 3, name=f"conv{i}")(x)))
    return x


def make_projector(kind: str, features: int, hidden: int | None = None) -> Projector:
  if kind not in ADAPTERS:
    raise ValueError(f"unknown adapter {kind!r}; use one of {ADAPTERS} (or None for no adapter)")
  return Projector(features=features, kind=kind, hidden=hidden)


def init_projector(rng: jax.Array, projector: Projector, example: jax.Array) -> Any:
  return projector.init(rng, jnp.zeros(example.shape, jnp.float32))["params"]
