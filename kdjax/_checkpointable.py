"""States that own their checkpoint tree: which fields a checkpoint holds, and how to read it back.

A training state (:class:`kdjax.DistillState`, :class:`kdjax.strategies.MutualState`, ...) is a
``flax.struct`` dataclass. Every pytree field is checkpointed unless it is declared with
:func:`frozen_field` (the teacher: restored from its own run, never saved with the student).
Adding a field to a state therefore adds it to its checkpoints, with no list to keep in sync.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp

_CHECKPOINT = "checkpoint"


def frozen_field(**kwargs) -> Any:
  """A pytree field that checkpoints leave out (it is rebuilt, not trained: a frozen teacher)."""
  return flax.struct.field(pytree_node=True, metadata={_CHECKPOINT: False}, **kwargs)


def checkpoint_fields(state: Any) -> tuple[str, ...]:
  """The names of the fields of ``state`` that a checkpoint holds, in declaration order."""
  return tuple(f.name for f in dataclasses.fields(state)
               if f.metadata.get("pytree_node", True) and f.metadata.get(_CHECKPOINT, True))


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def checkpoint_tree(state: Any) -> dict[str, Any]:
  """``{field: value}`` of the checkpointed fields; typed PRNG keys become their raw key data."""
  tree = {name: getattr(state, name) for name in checkpoint_fields(state)}
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_checkpoint_tree(state: Any, tree: Any) -> Any:
  """``state`` with its checkpointed fields replaced by ``tree``'s (from :func:`checkpoint_tree`)."""
  current = {name: getattr(state, name) for name in checkpoint_fields(state)}
  restored = jax.tree.map(
      lambda now, saved: (jax.random.wrap_key_data(saved, impl=jax.random.key_impl(now))
                          if _is_key(now) else saved), current, dict(tree))
  return state.replace(**restored)
