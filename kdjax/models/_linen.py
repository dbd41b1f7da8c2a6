"""Flax Linen modules as kdjax models."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax

from kdjax.models import _taps
from kdjax.models._base import Model, PyTree

_INTERMEDIATES = "intermediates"


def from_linen(module: nn.Module, variables: Mapping[str, PyTree], *, taps: Sequence[str] = (),
               method: str | Callable[..., Any] | None = None, name: str = "",
               example_input: Any = None, rng_names: Sequence[str] = ("dropout",)) -> Model:
  """Wraps a Linen module and its variables in the kdjax model protocol.

  ``params`` are ``variables['params']``; ``model_state`` holds every other collection (BatchNorm
  ``batch_stats``, ...), ``{}`` when there are none. The returned ``apply`` runs
  ``module.apply`` with

  * ``train=train`` when the called method has a ``train`` argument, else
    ``deterministic=not train`` when it has that one, else neither;
  * the non-``params`` collections mutable when ``train`` is true (their new values come back as
    the new model state; with ``train=False`` the state is returned unchanged);
  * ``rng`` as the ``'dropout'`` stream (``rng_names`` lists the streams to feed; with several,
    each gets ``fold_in(rng, i)``); no streams when ``rng`` is None;
  * the tapped module outputs captured with ``capture_intermediates`` (a filter that selects
    exactly the tapped paths) and sown values collected from ``'intermediates'``. Captured values
    never reach the model state.

  Args:
    module: the Linen module.
    variables: its variables, as returned by ``module.init`` (an ``'intermediates'`` collection
      there is dropped).
    taps: feature paths to return in ``Outputs.features``: ``'/'``-joined submodule paths
      (``'stage3'``, ``'stage3/block_0'``), whose ``__call__`` output is taken, or names the
      module sows into ``'intermediates'`` (``'pre_logits'``, ``'blocks_0/attn_probs'``). A
      module called several times per forward pass gives its last output.
    method: the method to apply (``module.apply``'s ``method``); ``__call__`` by default.
    name: a label for the model.
    example_input: an input (or ``jax.ShapeDtypeStruct``) of the kind the model takes. When
      given, taps are checked now, with a shape-only trial call; otherwise the first call checks
      them. Either way an unknown tap raises ``ValueError`` listing the available paths.
    rng_names: the Linen rng streams fed from ``rng``.

  Returns:
    A :class:`~kdjax.models.Model`.
  """
  if not isinstance(module, nn.Module):
    raise TypeError(f"from_linen takes a flax.linen.Module, got {type(module).__name__}; "
                    f"use from_nnx for NNX modules and from_apply_fn for plain functions")
  if not isinstance(variables, Mapping) or "params" not in variables:
    raise ValueError("variables must be the output of module.init(...), a mapping with a 'params' "
                     f"collection; got {type(variables).__name__} with keys "
                     f"{sorted(variables) if isinstance(variables, Mapping) else '-'}")
  taps = _taps.check_taps(taps)
  rng_names = tuple(rng_names)
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k not in ("params", _INTERMEDIATES)}
  mode_kwarg = _mode_kwarg(module, method)
  label = name or type(module).__name__
  tap_set = frozenset(taps)

  def capture_filter(mdl: nn.Module, method_name: str) -> bool:
    return method_name == "__call__" and "/".join(mdl.path) in tap_set

  def run(params, model_state, inputs, train, rng, capture):
    kwargs = {}
    if mode_kwarg == "train":
      kwargs["train"] = train
    elif mode_kwarg == "deterministic":
      kwargs["deterministic"] = not train
    mutable = list(model_state) if train else []
    if capture is not False:
      mutable.append(_INTERMEDIATES)
    logits, updates = module.apply({"params": params, **model_state}, inputs, method=method,
                                   rngs=_rngs(rng, rng_names), mutable=mutable,
                                   capture_intermediates=capture, **kwargs)
    updates = dict(updates)
    captured = updates.pop(_INTERMEDIATES, {})
    new_state = {**model_state, **updates} if train else model_state
    return logits, captured, new_state

  return _taps.tapped_model(run, params=params, model_state=model_state, taps=taps,
                            capture=capture_filter, label=label, name=name,
                            example_input=example_input)


def _mode_kwarg(module: nn.Module, method) -> str | None:
  fn = method if callable(method) else getattr(type(module), method or "__call__")
  try:
    parameters = inspect.signature(fn).parameters
  except (TypeError, ValueError):  # builtins, odd callables: pass nothing
    return None
  for kwarg in ("train", "deterministic"):
    if kwarg in parameters:
      return kwarg
  return None


def _rngs(rng: jax.Array | None, names: tuple[str, ...]) -> dict[str, jax.Array] | None:
  if rng is None or not names:
    return None
  if len(names) == 1:
    return {names[0]: rng}
  return {n: jax.random.fold_in(rng, i) for i, n in enumerate(names)}
