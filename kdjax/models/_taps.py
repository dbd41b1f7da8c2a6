"""Tap paths: naming, validation, and lookup in a tree of captured intermediates.

Both Linen (``capture_intermediates`` + ``sow``) and NNX (``nnx.capture``) return the captured
values as a nested mapping keyed by module path: a module's own output sits under its method's
name (``'__call__'``), a sown value under the name it was sown with, each as a tuple with one
entry per call. A tap is the ``/``-joined path: ``'stage3'`` (a module's ``__call__`` output),
``'stage3/block_0'``, ``'pre_logits'`` or ``'blocks_1/attn_probs'`` (sown values).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

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
