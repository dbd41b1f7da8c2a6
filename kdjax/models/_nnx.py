"""Flax NNX modules as kdjax models."""
from __future__ import annotations

import inspect
from typing import Any, Sequence

import jax
from flax import nnx

from kdjax.models import _taps
from kdjax.models._base import Model, PyTree

# Captured values: never part of the returned state.
_CAPTURED = (nnx.Intermediate, nnx.Perturbation)


def from_nnx(model: nnx.Module, *, taps: Sequence[str] = (), name: str = "",
             example_input: Any = None) -> Model:
  """Wraps an NNX module in the kdjax model protocol, as a pure ``apply``.

  The module is split once, ``nnx.split(model, nnx.Param, nnx.RngState, ...)``, into a graph
  definition, ``params`` (every ``nnx.Param``), its RNG streams, and ``model_state`` (everything
  else, e.g. ``nnx.BatchStat``). ``params`` and ``model_state`` are plain nested dicts of arrays
  with string keys (``nnx.List`` indices become ``'0'``, ``'1'``, ...), so optax, Orbax and
  ``jax.tree`` see ordinary pytrees. The caller's module is not modified.

  Each call of ``apply`` merges a fresh module from these, so nothing leaks between calls and the
  function works under ``jax.jit`` and ``jax.grad``:

  * mode: ``module.train()`` / ``module.eval()`` (``set_attributes`` of ``deterministic`` and
    ``use_running_average`` on every submodule that has them); a ``train`` argument of the
    module's ``__call__`` also receives ``train``.
  * randomness: with ``train=True`` and an ``rng``, every RNG stream of the module is reseeded from
    ``rng`` (``nnx.reseed``; the stream tagged ``t`` gets ``fold_in(rng, i)`` for its position ``i``
    among the sorted tags), so dropout masks are a function of the step's key alone. The streams'
    keys and counters are not model state: carrying them would make the state hold PRNG keys,
    which cannot be averaged across devices or checkpointed like statistics. Without an ``rng``
    the streams restart from their values at wrap time on every call.
  * state: with ``train=True`` the new ``model_state`` is read back from the module
    (``nnx.split``); with ``train=False`` the given state is returned unchanged.
  * taps: ``nnx.capture(..., nnx.Intermediate, method_outputs=nnx.Intermediate)``; a tap names a
    submodule path (``'stage1'``, ``'blocks/0/attn'``: its ``__call__`` output; ``'enc/encode'``:
    the output of its method ``encode``) or a value sown with ``self.sow(nnx.Intermediate, name,
    x)``.

  Args:
    model: the NNX module (already constructed, e.g. ``Net(..., rngs=nnx.Rngs(0))``).
    taps: feature paths to return in ``Outputs.features``.
    name: a label for the model.
    example_input: an input (or ``jax.ShapeDtypeStruct``) of the kind the model takes; when
      given, taps are checked now with a shape-only trial call, otherwise the first call checks
      them. Either way an unknown tap raises ``ValueError`` listing the available paths.

  Returns:
    A :class:`~kdjax.models.Model`.
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(f"from_nnx takes a flax.nnx.Module, got {type(model).__name__}; use "
                    f"from_linen for Linen modules and from_apply_fn for plain functions")
  taps = _taps.check_taps(taps)
  label = name or type(model).__name__
  model = nnx.clone(model)
  nnx.pop(model, _CAPTURED)  # values sown by eager calls before wrapping
  graphdef, param_state, rng_state, other_state = nnx.split(model, nnx.Param, nnx.RngState, ...)
  param_vars = _flat(param_state)
  state_vars = _flat(other_state)
  rng_vars = _flat(rng_state)
  rng_tags = sorted({v.tag for _, v in rng_vars.values() if hasattr(v, "tag")})
  rng_values = {key: var.get_value() for key, (_, var) in rng_vars.items()}
  pass_train = "train" in _call_parameters(model)

  def run(params, model_state, inputs, train, rng, capture_modules):
    module = nnx.merge(graphdef, _state(param_vars, params, "params"),
                       _state(rng_vars, rng_values, None),
                       _state(state_vars, model_state, "model_state"))
    if train:
      module.train()
    else:
      module.eval()
    if train and rng is not None and rng_tags:
      nnx.reseed(module, policy="match_shape",
                 **{tag: jax.random.fold_in(rng, i) for i, tag in enumerate(rng_tags)})
    forward = nnx.capture(module, nnx.Intermediate,
                          method_outputs=nnx.Intermediate if capture_modules else None)
    logits, captured = forward(inputs, **({"train": train} if pass_train else {}))
    new_state = model_state
    if train:
      *_, new_other = nnx.split(module, nnx.Param, nnx.RngState, _CAPTURED, ...)
      new_state = _pure(new_other)
    return logits, nnx.to_pure_dict(captured), new_state

  return _taps.tapped_model(run, params=_pure(param_state), model_state=_pure(other_state),
                            taps=taps, capture=True, label=label, name=name,
                            example_input=example_input)


def _call_parameters(model: nnx.Module):
  try:
    return inspect.signature(type(model).__call__).parameters
  except (TypeError, ValueError):
    return {}


def _flat(state: nnx.State) -> dict[tuple[str, ...], tuple[tuple[Any, ...], nnx.Variable]]:
  """Path with string keys -> (the State's own path, template Variable)."""
  return {tuple(map(str, path)): (path, var) for path, var in nnx.to_flat_state(state)}


def _pure(state: nnx.State) -> dict[str, Any]:
  """A State as nested dicts of arrays with string keys."""
  out: dict[str, Any] = {}
  for path, var in nnx.to_flat_state(state):
    node = out
    for key in map(str, path[:-1]):
      node = node.setdefault(key, {})
    node[str(path[-1])] = var.get_value()
  return out


def _state(template: dict[tuple[str, ...], tuple[tuple[Any, ...], nnx.Variable]], values: PyTree,
           what: str | None) -> nnx.State:
  """Fresh Variables (the template's types and metadata) holding ``values``."""
  if what is None:  # already flat
    flat_values = values
  else:
    flat_values = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(values)[0]:
      flat_values[tuple(str(getattr(k, "key", k)) for k in path)] = leaf
    if flat_values.keys() != template.keys():
      missing = sorted("/".join(p) for p in template.keys() - flat_values.keys())
      extra = sorted("/".join(p) for p in flat_values.keys() - template.keys())
      raise ValueError(f"{what} do not match the NNX module: missing {missing or '-'}, "
                       f"unexpected {extra or '-'}; pass the {what} of this model")
  return nnx.from_flat_state([(path, var.replace(flat_values[key]))
                              for key, (path, var) in template.items()])
