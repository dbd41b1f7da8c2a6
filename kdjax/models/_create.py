"""Zoo models by name: build, initialise and wrap in one call."""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models._base import Model, PyTree
from kdjax.models._linen import from_linen
from kdjax.models.zoo import _registry


def available_models() -> list[str]:
  """The zoo's model names, sorted."""
  return sorted(_registry.MODELS)


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """The zoo's Linen module ``name``, constructed with ``kwargs`` (``num_classes``, ``dtype``, ...).

  Raises:
    ValueError: unknown ``name`` (the message lists the available ones).
    TypeError: a keyword the module does not take.
  """
  if name not in _registry.MODELS:
    raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
  return _registry.MODELS[name](**kwargs)


def create(name: str, *, num_classes: int, input_shape: Sequence[int], rng: jax.Array,
           taps: Sequence[str] = (), dtype: Any = jnp.float32, **kwargs: Any) -> Model:
  """Builds zoo model ``name``, initialises it from ``rng`` and wraps it with :func:`from_linen`.

  Args:
    name: a name from :func:`available_models`.
    num_classes: output classes (for ``transformer_lm``: the vocabulary size).
    input_shape: one example's shape, without the batch axis: ``(32, 32, 3)`` for CIFAR images,
      ``(length,)`` for token sequences.
    rng: the initialisation key.
    taps: feature paths to return (checked now; see :func:`from_linen`).
    dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``); parameters stay float32 and
      logits are float32 either way.
    **kwargs: further module arguments (``hidden=(256, 256)`` for ``mlp``, ``width_mult`` for
      ``mobilenetv2``, ``n_layers`` for ``transformer_lm``, ...). Every zoo model takes
      ``bn_axis_name``: under ``pmap``, the mapped axis name, so BatchNorm uses global batch
      statistics.

  Returns:
    A :class:`~kdjax.models.Model` named ``name``.

  Example::

    teacher = kdjax.models.create("resnet32x4", num_classes=100, input_shape=(32, 32, 3),
                                  rng=jax.random.key(0), taps=("stage3", "pre_logits"))
  """
  module = get_model(name, num_classes=num_classes, dtype=dtype, **kwargs)
  input_dtype = _registry.INPUT_DTYPES.get(name, jnp.float32)
  example = jnp.zeros((1, *tuple(input_shape)), input_dtype)
  variables = jax.jit(functools.partial(module.init, train=False))(rng, example)
  return from_linen(module, variables, taps=taps, name=name,
                    example_input=jax.ShapeDtypeStruct(example.shape, example.dtype))


def param_count(params: PyTree) -> int:
  """The number of scalars in ``params`` (arrays or ``jax.ShapeDtypeStruct`` leaves)."""
  return sum(math.prod(leaf.shape) if hasattr(leaf, "shape") else 1
             for leaf in jax.tree.leaves(params))
