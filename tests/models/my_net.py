"""A user's own models, as a project outside kdjax would write them (used by test_specs.py).

Referred to by spec, e.g. ``--config.teacher.model=tests.models.my_net:MyNet``.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import kdjax


class MyNet(nn.Module):
  """A small Linen CNN with BatchNorm; ``num_classes`` is filled in by kdjax."""

  num_classes: int
  width: int = 8

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.width, (3, 3), name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
    x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    self.sow("intermediates", "pre_logits", x)
    return nn.Dense(self.num_classes, name="head")(x)


class MyNNXNet(nnx.Module):
  """The same idea in NNX."""

  def __init__(self, num_classes: int, *, width: int = 8, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, width, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(width, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x)))
    return self.head(jnp.mean(x, axis=(1, 2)))


def my_factory(num_classes, input_shape, rng):
  """A function returning a kdjax Model (here a plain linear apply function)."""
  size = 1
  for d in input_shape:
    size *= d
  w = 0.01 * jax.random.normal(rng, (size, num_classes))
  return kdjax.models.from_apply_fn(lambda p, x: x.reshape(x.shape[0], -1) @ p["w"], {"w": w})


NOT_A_MODEL = 3


class Broken(nn.Module):
  """Ignores num_classes: always 5 logits."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(5)(x.reshape(x.shape[0], -1))
