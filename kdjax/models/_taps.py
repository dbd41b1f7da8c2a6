"""Tap paths: naming, validation, lookup in a tree of captured intermediates, and the ``apply``
that both module adapters build on them.

Both Linen (``capture_intermediates`` + ``sow``) and NNX (``nnx.capture``) return the captured
values as a nested mapping keyed by module path: a module's own output sits under its method's
name (``'__call__'``), a sown value under the name it was sown with, each as a tuple with one
entry per call. A tap is the ``/``-joined path: ``'stage3'`` (a module's ``__call__`` output),
``'stage3/block_0'``, ``'pre_logits'`` or ``'blocks_1/attn_probs'`` (sown values).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import jax

from kdjax.models._base import Model, Outputs, PyTree

CALL = "__call__"


def check_taps(taps: Iterable[str]) -> tuple[str, ...]:
  """Validates the tap list's form (not whether the model has them)."""
  if isinstance(taps, str):
    raise TypeError(f"taps must be a sequence of paths, got the string {taps!r}; "
                    f"write taps=({taps!r},)")
  taps = tuple(taps)
  for tap in taps:
    if not isinstance(tap, str) or not tap or tap.startswith("/") or tap.endswith("/"):
      raise ValueError(f"a tap is a '/'-joined module path such as 'stage3' or 'blocks_0/attn', "
                       f"got {tap!r}")
  duplicates = sorted({t for t in taps if taps.count(t) > 1})
  if duplicates:
    raise ValueError(f"taps {duplicates} are listed more than once")
  return taps


def available(tree: Mapping[Any, Any]) -> list[str]:
  """Every tappable path in a captured tree: module outputs and sown values."""
  paths = []

  def walk(node, prefix):
    for key, value in node.items():
      key = str(key)
      if isinstance(value, Mapping):
        if CALL in value and prefix + (key,):
          paths.append("/".join(prefix + (key,)))
        walk(value, prefix + (key,))
      elif key != CALL:
        paths.append("/".join(prefix + (key,)))

  walk(tree, ())
  return sorted(paths)


def lookup(tree: Mapping[Any, Any], tap: str) -> Any | None:
  """The value captured for ``tap`` (its last call's), or None when nothing was captured there."""
  node: Any = tree
  for part in tap.split("/"):
    if not isinstance(node, Mapping):
      return None
    matches = [v for k, v in node.items() if str(k) == part]
    if not matches:
      return None
    node = matches[0]
  if isinstance(node, Mapping):
    node = node.get(CALL)
  if not isinstance(node, tuple) or not node:
    return None
  return node[-1]


def unknown_taps_error(unknown: Sequence[str], paths: Sequence[str], model: str) -> ValueError:
  shown = ", ".join(paths) if paths else "(none)"
  return ValueError(f"{model} has no tap {', '.join(repr(t) for t in unknown)}; "
                    f"available taps: {shown}")


def tapped_model(run: Callable[..., tuple[Any, Mapping[Any, Any], PyTree]], *, params: PyTree,
                 model_state: PyTree, taps: tuple[str, ...], capture: Any, label: str,
                 name: str, example_input: Any = None) -> Model:
  """A :class:`Model` whose ``apply`` reads its features from a captured tree.

  ``run(params, model_state, inputs, train, rng, capture) -> (logits, captured, new_state)`` is
  the framework's forward pass: ``capture`` is what ``apply`` passes when there are taps
  (``False`` without), ``True`` asks for every module output (used to list the available paths
  when a tap is missing). With ``example_input``, the taps are checked now by a shape-only call.
  """

  def apply(params, model_state, inputs, *, train: bool, rng: jax.Array | None = None):
    logits, captured, new_state = run(params, model_state, inputs, train, rng,
                                      capture if taps else False)
    features = {tap: lookup(captured, tap) for tap in taps}
    missing = [tap for tap, value in features.items() if value is None]
    if missing:
      raise unknown_taps_error(missing, discover(params, model_state, inputs), label)
    return Outputs(logits=logits, features=features), new_state

  def discover(params, model_state, inputs) -> list[str]:
    """Every tappable path, from a shape-only call that captures all module outputs."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                            (params, model_state, inputs))
    _, captured, _ = jax.eval_shape(lambda p, s, x: run(p, s, x, False, None, True), *abstract)
    return available(captured)

  if taps and example_input is not None:
    paths = discover(params, model_state, example_input)
    unknown = [tap for tap in taps if tap not in paths]
    if unknown:
      raise unknown_taps_error(unknown, paths, label)

  return Model(apply=apply, params=params, model_state=model_state, taps=taps, name=name)
