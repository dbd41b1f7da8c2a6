"""Plain apply functions as kdjax models."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax

from kdjax.models._base import Model, Outputs, PyTree


def from_apply_fn(apply_fn: Callable[[PyTree, Any], Any], params: PyTree, *,
                  model_state: PyTree | None = None, name: str = "") -> Model:
  """Wraps ``apply_fn(params, x)`` in the kdjax model protocol.

  ``apply_fn`` returns either ``logits`` or ``(logits, features)`` with ``features`` a mapping
  from names to arrays (they become ``Outputs.features``). It takes no train flag and no rng and
  keeps no state: ``model_state`` (default ``{}``) is passed through unchanged, so a function
  that needs either belongs in a Linen or NNX module (:func:`from_linen`, :func:`from_nnx`).

  Example::

    model = from_apply_fn(lambda p, x: x @ p["w"], {"w": w})
    out, _ = model.apply(model.params, model.model_state, x, train=False, rng=None)
  """
  if not callable(apply_fn):
    raise TypeError(f"apply_fn must be callable as apply_fn(params, x), got {type(apply_fn)}")

  def apply(params, model_state, inputs, *, train: bool, rng: jax.Array | None = None):
    del train, rng
    out = apply_fn(params, inputs)
    if isinstance(out, Outputs):
      return out, model_state
    if isinstance(out, tuple):
      if len(out) != 2 or not isinstance(out[1], Mapping):
        raise TypeError("apply_fn must return logits or (logits, features) with features a dict "
                        f"of arrays; got a tuple of {len(out)} items")
      return Outputs(logits=out[0], features=dict(out[1])), model_state
    return Outputs(logits=out), model_state

  return Model(apply=apply, params=params, model_state={} if model_state is None else model_state,
               name=name)
