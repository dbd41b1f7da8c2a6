"""Small models and batches shared by the tests (tiny shapes: compile time is the cost)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import models


class TapMLP(nn.Module):
  """A two-stage MLP whose stages can be tapped; optional BatchNorm."""

  hidden: int = 16
  num_classes: int = 5
  batch_norm: bool = False
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.hidden, name="stage1")(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       axis_name=self.bn_axis_name if train else None, name="bn")(x)
    x = nn.relu(x)
    x = nn.relu(nn.Dense(self.hidden, name="stage2")(x))
    self.sow("intermediates", "pre_logits", x)
    return nn.Dense(self.num_classes, name="head")(x)


def tap_mlp(seed=0, *, hidden=16, num_classes=5, batch_norm=False, in_dim=6, taps=(),
            bn_axis_name=None):
  module = TapMLP(hidden=hidden, num_classes=num_classes, batch_norm=batch_norm,
                  bn_axis_name=bn_axis_name)
  variables = module.init(jax.random.key(seed), jnp.zeros((2, in_dim), jnp.float32))
  return models.from_linen(module, variables, taps=taps)


def batch(n=8, in_dim=6, num_classes=5, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.standard_normal((n, in_dim)).astype(np.float32),
          "label": rng.integers(0, num_classes, n).astype(np.int32),
          "index": np.arange(n, dtype=np.int32)}
