"""Variables trained by another codebase: Flax msgpack files, Orbax checkpoints of plain trees and
PyTorch checkpoints of the zoo's CIFAR models."""
from __future__ import annotations

import os
from typing import Any

import flax.serialization
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from kdjax.models._base import PyTree

# How many differing paths an error lists.
_SHOWN = 6
# Collections a Linen ``init`` may return that are never model state.
_NOT_STATE = ("params", "intermediates")
# Suffixes of PyTorch checkpoint files (read by kdjax.models._pytorch).
PYTORCH_SUFFIXES = (".pth", ".pt")
# Files that mark a directory as an Orbax PyTree checkpoint.
_ORBAX_MARKERS = ("_METADATA", "manifest.ocdbt", "_CHECKPOINT_METADATA", "checkpoint")


def _flat(tree: Any) -> dict[str, Any]:
  state = flax.serialization.to_state_dict(tree)
  if not isinstance(state, dict):
    return {"": state}
  return {"/".join(map(str, k)): v for k, v in
          flax.traverse_util.flatten_dict(state, keep_empty_nodes=False).items()}


def _shape(x: Any) -> tuple[int, ...]:
  return tuple(getattr(x, "shape", np.shape(x)))


def _mismatches(found: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
  problems = []
  # Parameters first: a different architecture shows there before in its BatchNorm state.
  for key in sorted(set(found) | set(wanted), key=lambda k: (not k.startswith("params/"), k)):
    if key not in found:
      problems.append(f"{key}: missing from the file (the model has {_shape(wanted[key])})")
    elif key not in wanted:
      problems.append(f"{key}: in the file {_shape(found[key])}, not in the model")
    elif _shape(found[key]) != _shape(wanted[key]):
      problems.append(f"{key}: {_shape(found[key])} in the file, {_shape(wanted[key])} in the "
                      "model")
  return problems


def _split(tree: Any, path: str, has_state: bool) -> tuple[Any, Any]:
  """``{'params': ..., <collections>}`` -> (params, other collections); params alone -> (it, {})."""
  if isinstance(tree, dict) and "params" in tree:
    return tree["params"], {k: v for k, v in tree.items() if k not in _NOT_STATE}
  if has_state:
    raise ValueError(f"{path} holds parameters only, but the model also has state "
                     "(e.g. BatchNorm 'batch_stats'); save {'params': ..., 'batch_stats': ...}, "
                     "the variables returned by module.init / the training script's state")
  return tree, {}


def _orbax_dir(path: str) -> str | None:
  """The Orbax PyTree checkpoint directory ``path`` names, or None.

  Accepts the checkpoint itself, an item inside it (``<step>/default``: Orbax's
  ``CheckpointManager`` default item) or a manager directory (its latest numeric step).
  """
  def is_checkpoint(p):
    return any(os.path.exists(os.path.join(p, m)) for m in _ORBAX_MARKERS) and not any(
        os.path.isdir(os.path.join(p, d)) and d.isdigit() for d in os.listdir(p))

  if is_checkpoint(path):
    return path
  steps = sorted((d for d in os.listdir(path) if d.isdigit()), key=int)
  candidates = [os.path.join(path, steps[-1])] if steps else [path]
  for base in candidates:
    for item in ("", "default", "params", "state"):
      p = os.path.join(base, item) if item else base
      if os.path.isdir(p) and is_checkpoint(p):
        return p
  return None


def _read(path: str) -> Any:
  """The plain tree stored at ``path``: a msgpack file or an Orbax checkpoint directory."""
  if os.path.isfile(path):
    with open(path, "rb") as f:
      raw = f.read()
    try:
      return flax.serialization.msgpack_restore(raw)
    except Exception as e:  # pylint: disable=broad-except  # msgpack raises several kinds.
      raise ValueError(f"{path} is not a Flax msgpack file ({type(e).__name__}: {e}); write it "
                       "with flax.serialization.to_bytes(variables)") from None
  if os.path.isdir(path):
    ckpt = _orbax_dir(path)
    if ckpt is None:
      raise ValueError(f"{path} is a directory but not an Orbax checkpoint (no _METADATA, "
                       "manifest.ocdbt or _CHECKPOINT_METADATA in it or in a step/'default' "
                       "sub-directory); point at the directory written by "
                       "orbax.checkpoint.StandardCheckpointer().save(path, variables), or, "
                       "for a kdjax run, at its run directory (WORKDIR/teacher)")
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

    try:
      metadata = ocp.PyTreeCheckpointer().metadata(ckpt)
      tree = getattr(metadata, "item_metadata", None) or getattr(metadata, "tree", metadata)
      target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
      return ocp.PyTreeCheckpointer().restore(
          ckpt, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    except Exception as e:  # pylint: disable=broad-except  # Orbax/tensorstore raise many kinds.
      raise ValueError(f"cannot read the Orbax checkpoint {ckpt} ({type(e).__name__}: "
                       f"{' '.join(str(e).split())[:300]})") from None
  raise ValueError(f"{path} does not exist; give a Flax .msgpack file or an Orbax checkpoint "
                   "directory")


def load_variables(path: str | os.PathLike, *, params: PyTree,
                   model_state: PyTree) -> tuple[PyTree, PyTree]:
  """Reads a model's variables saved by another codebase, checked against the model's own.

  Three formats: a Flax msgpack file (``flax.serialization.to_bytes`` of the Linen variables
  ``{'params': ..., 'batch_stats': ...}``, or of the params alone when the model has no state),
  or an Orbax checkpoint directory of such a plain tree
  (``orbax.checkpoint.StandardCheckpointer().save(path, variables)``; a ``CheckpointManager``
  directory reads its latest step's ``default`` item). The stored tree must have exactly the
  structure and shapes of ``params`` / ``model_state``; values are cast to their dtypes. A file
  ending in ``.pth`` or ``.pt`` is a PyTorch checkpoint of one of the zoo's CIFAR models
  (RepDistiller / mdistiller; read by :func:`kdjax.models.from_pytorch`'s loader, with
  ``weights_only=True``): its tensors are mapped onto ``params`` / ``model_state`` by module
  path, the architecture's naming found from the tensors themselves.

  Args:
    path: the msgpack file or Orbax checkpoint directory.
    params: the freshly initialised ``Model.params`` of the model the file should hold (the
      Linen ``'params'`` collection for zoo models).
    model_state: its ``Model.model_state`` (every other Linen collection; ``{}`` for none).

  Returns:
    ``(params, model_state)`` with the stored values, in the containers and dtypes of the
    arguments.

  Raises:
    ValueError: unreadable file, or a tree that differs from the model's; the message lists the
      first differing paths (missing, extra, or of another shape); also a PyTorch file without
      torch installed (``pip install 'kdjax[torch]'``).

  Example::

    teacher = kdjax.models.create("mlp", num_classes=10, input_shape=(28, 28, 1),
                                  rng=jax.random.key(0), hidden=(1200, 1200))
    params, state = kdjax.models.load_variables("teacher.msgpack", params=teacher.params,
                                                model_state=teacher.model_state)
    teacher = dataclasses.replace(teacher, params=params, model_state=state)
  """
  path = os.fspath(path)
  if path.endswith(PYTORCH_SUFFIXES):
    from kdjax.models import _pytorch  # pylint: disable=g-import-not-at-top

    try:
      arrays = _pytorch.read_state_dict(path)
    except ImportError as e:  # One kind of error for every unreadable file.
      raise ValueError(str(e)) from None
    return _pytorch.convert_state_dict(arrays, params=params, model_state=model_state,
                                       where=path)
  found_params, found_state = _split(_read(path), path, bool(jax.tree.leaves(model_state)))
  found = {**{f"params/{k}": v for k, v in _flat(found_params).items()},
           **{f"{k}": v for k, v in _flat(found_state).items()}}
  wanted = {**{f"params/{k}": v for k, v in _flat(params).items()},
            **{f"{k}": v for k, v in _flat(model_state).items()}}
  problems = _mismatches(found, wanted)
  if problems:
    more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    raise ValueError(
        f"the variables in {path} do not match the configured model ({len(problems)} differing "
        f"paths: {'; '.join(problems[:_SHOWN])}{more}); build the architecture the file was "
        "trained with: its model (a zoo name, or your own class as 'package.module:Class'), "
        "model_kwargs and num_classes")

  def restore(target, stored):
    state = flax.serialization.to_state_dict(target)
    flat = {k: jnp.asarray(stored[k], dtype=v.dtype) for k, v in _flat(target).items()}
    if not isinstance(state, dict):
      return flax.serialization.from_state_dict(target, flat[""])
    nested = flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    return flax.serialization.from_state_dict(target, nested)

  return (restore(params, _flat(found_params)),
          restore(model_state, _flat(found_state)) if jax.tree.leaves(model_state) else
          model_state)
