"""The one model protocol every kdjax component speaks.

A model is an ``apply`` function

    apply(params, model_state, inputs, *, train: bool, rng: jax.Array | None)
        -> (Outputs, new_model_state)

plus its initial ``params`` (trainable) and ``model_state`` (non-trainable collections such as
BatchNorm statistics; ``{}`` when there are none). ``Outputs.features`` maps the tap paths the user
asked for (``"stage3"``, ``"blocks_5/attn"``) to the arrays those modules produced.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol

import flax
import jax

PyTree = Any


@flax.struct.dataclass
class Outputs:
  """What a model returns: class (or token) logits and the tapped features, keyed by path."""

  logits: jax.Array
  features: Mapping[str, jax.Array] = flax.struct.field(default_factory=dict)


class ApplyFn(Protocol):

  def __call__(self, params: PyTree, model_state: PyTree, inputs: Any, *, train: bool,
               rng: jax.Array | None) -> tuple[Outputs, PyTree]:
    ...


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
  """A model in kdjax's protocol: a pure ``apply`` plus its initial variables.

  ``eq=False`` makes a ``Model`` hash by identity, so its ``apply`` can be a static field of a
  jitted state without triggering recompilation.
  """

  apply: Callable[..., tuple[Outputs, PyTree]]
  params: PyTree
  model_state: PyTree = dataclasses.field(default_factory=dict)
  taps: tuple[str, ...] = ()
  name: str = ""
