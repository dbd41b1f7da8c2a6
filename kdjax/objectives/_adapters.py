"""Trainable adapters that map student features into the teacher's space.

A 1x1 convolution on a channel-last feature map is a dense layer on its last axis, so one
``linear`` adapter serves both FitNets regressors on ``[B, H, W, C]`` maps and projections of
``[B, D]`` embeddings.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ADAPTERS = ("linear", "mlp")


class Projector(nn.Module):
  """Maps the last axis to ``features`` channels: ``linear`` (= 1x1 conv) or a 2-layer ``mlp``."""

  features: int
  kind: str = "linear"
  hidden: int | None = None

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    if self.kind == "mlp":
      x = nn.relu(nn.Dense(self.hidden or self.features, name="hidden")(x))
    return nn.Dense(self.features, name="out")(x)


def make_projector(kind: str, features: int, hidden: int | None = None) -> Projector:
  if kind not in ADAPTERS:
    raise ValueError(f"unknown adapter {kind!r}; use one of {ADAPTERS} (or None for no adapter)")
  return Projector(features=features, kind=kind, hidden=hidden)


def init_projector(rng: jax.Array, projector: Projector, example: jax.Array) -> Any:
  return projector.init(rng, jnp.zeros(example.shape, jnp.float32))["params"]
