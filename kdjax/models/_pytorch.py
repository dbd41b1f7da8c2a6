"""CIFAR teachers trained with PyTorch (RepDistiller, mdistiller) as zoo models.

The zoo's CIFAR models follow RepDistiller's ``models/`` definitions (mdistiller uses the same
files), so a published checkpoint maps onto the zoo model of the same name tensor by tensor:
convolution weights ``[out, in/groups, kh, kw]`` -> Flax kernels ``[kh, kw, in/groups, out]``
(NCHW -> NHWC), linear weights transposed, BatchNorm ``weight``/``bias`` -> ``scale``/``bias``
and ``running_mean``/``running_var`` -> ``batch_stats`` ``mean``/``var``. The mapping is by
module path (``stage2/block_0/conv1`` <-> ``layer2.0.conv1``), one table per architecture family.

Files are read with ``torch.load(..., weights_only=True)``: a checkpoint never runs code. Only
tensors, plain containers and the harmless types in :data:`SAFE_TYPES` are unpickled.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import re
from typing import Any, Callable, Mapping, Sequence

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from kdjax.models._base import Model, PyTree

# The names RepDistiller / mdistiller use where they differ from the zoo's.
ALIASES = {"ResNet50": "resnet50", "MobileNetV2": "mobilenetv2", "mobile_half": "mobilenetv2",
           "ShuffleV1": "shufflenetv1", "ShuffleV2": "shufflenetv2",
           **{f"vgg{d}_bn": f"vgg{d}" for d in (8, 11, 13, 16, 19)}}
# How many differing tensors an error lists.
_SHOWN = 5
# Buffers PyTorch keeps that carry nothing the model computes with.
_IGNORED_SUFFIXES = (".num_batches_tracked",)


def _safe_types() -> list[Any]:
  """Types a checkpoint may hold besides tensors: data only, nothing that runs code on load."""
  types: list[Any] = [argparse.Namespace]  # RepDistiller's '<model>_last.pth' keeps its options.
  core = getattr(np, "_core", None) or np.core
  types += [core.multiarray.scalar, np.dtype]  # numpy scalars (an accuracy saved as np.float64)
  types += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32")]
  return types


SAFE_TYPES = ("argparse.Namespace", "numpy scalars")


# Flax module path -> PyTorch module name, per architecture family ------------------------------


def _stage_block(path: Sequence[str]) -> tuple[int, int]:
  return int(path[0][len("stage"):]), int(path[1][len("block_"):])


def _naming(names: Mapping[tuple[str, ...], str],
            block: Callable[[int, int, str], str]) -> Callable[[tuple[str, ...]], str | None]:
  """Module path -> PyTorch name: ``names`` for the modules outside the stages,
  ``block(k, j, layer)`` for ``stage{k}/block_{j}/layer``, None for any other path."""

  def torch_name(path: tuple[str, ...]) -> str | None:
    if path in names:
      return names[path]
    if len(path) == 3:
      k, j = _stage_block(path)
      return block(k, j, path[2])
    return None

  return torch_name


def _cifar_resnet(shortcut: str, head: str) -> Callable[[tuple[str, ...]], str | None]:
  shortcuts = {"shortcut_conv": f"{shortcut}.0", "shortcut_bn": f"{shortcut}.1"}
  return _naming({("stem", "conv"): "conv1", ("stem", "bn"): "bn1", ("head",): head},
                 lambda k, j, layer: f"layer{k}.{j}.{shortcuts.get(layer, layer)}")


def _vgg(path: tuple[str, ...]) -> str | None:
  if path == ("head",):
    return "classifier"
  if len(path) == 2:
    group = 0 if path[0] == "stem" else int(path[0][len("stage"):])
    layer, i = re.fullmatch(r"(conv|bn)(\d+)", path[1]).groups()
    return f"block{group}.{3 * int(i) + (layer == 'bn')}"
  return None


# The block layers whose PyTorch names differ from the zoo's (the others keep their names).
_WRN_LAYERS = {"shortcut_conv": "convShortcut"}
# MobileNetV2's inverted residual: its layer -> index in the PyTorch block's ``conv`` Sequential.
_MOBILENETV2_LAYERS = {"expand": 0, "bn1": 1, "depthwise": 3, "bn2": 4, "project": 6, "bn3": 7}

# Family -> (Flax module path -> PyTorch module name).
FAMILIES: dict[str, Callable[[tuple[str, ...]], str | None]] = {
    "cifar_resnet": _cifar_resnet("downsample", "fc"),  # RepDistiller resnet.py
    "resnet50": _cifar_resnet("shortcut", "linear"),  # resnetv2.py
    "wrn": _naming({("stem",): "conv1", ("bn",): "bn1", ("head",): "fc"},
                   lambda k, j, layer: f"block{k}.layer.{j}.{_WRN_LAYERS.get(layer, layer)}"),
    "vgg": _vgg,
    "mobilenetv2": _naming(
        {("stem", "conv"): "conv1.0", ("stem", "bn"): "conv1.1", ("head_conv", "conv"): "conv2.0",
         ("head_conv", "bn"): "conv2.1", ("head",): "classifier.0"},
        lambda k, j, layer: f"blocks.{k - 1}.{j}.conv.{_MOBILENETV2_LAYERS[layer]}"),
    "shufflenet": _naming(  # ShuffleNetv1.py and ShuffleNetv2.py
        {("stem", "conv"): "conv1", ("stem", "bn"): "bn1", ("head_conv", "conv"): "conv2",
         ("head_conv", "bn"): "bn2", ("head",): "linear"},
        lambda k, j, layer: f"layer{k}.{j}.{layer}"),
}


def family(name: str) -> str | None:
  """The PyTorch naming family of zoo model ``name``, or None when there is no mapping."""
  if re.fullmatch(r"resnet\d+(x4)?", name) and name != "resnet50":
    return "cifar_resnet"
  if name == "resnet50":
    return "resnet50"
  if name.startswith("wrn_"):
    return "wrn"
  if re.fullmatch(r"vgg\d+", name):
    return "vgg"
  if name == "mobilenetv2":
    return "mobilenetv2"
  if name in ("shufflenetv1", "shufflenetv2"):
    return "shufflenet"
  return None


def supported_models() -> list[str]:
  """The zoo names :func:`from_pytorch` reads."""
  from kdjax.models._create import available_models  # pylint: disable=g-import-not-at-top
  return [n for n in available_models() if family(n)]


# Reading the file -----------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split())[:300]


def read_state_dict(path: str | os.PathLike, *, part: str = "student") -> dict[str, np.ndarray]:
  """The tensors of a PyTorch checkpoint, as float32 numpy arrays keyed by PyTorch name.

  Accepts a bare ``state_dict``; a dict holding one under ``'model'``, ``'net'`` or
  ``'state_dict'`` (RepDistiller's ``<model>_best.pth`` / ``_last.pth``, mdistiller's released
  ``cifar_teachers`` files and ``student_best``); ``DataParallel`` prefixes (``module.``); and
  mdistiller's full training checkpoints, whose keys are ``module.student.*`` and
  ``module.teacher.*`` (``part`` chooses one). Tensors saved on a GPU are read onto the CPU.

  Raises:
    ImportError: torch is not installed (``pip install 'kdjax[torch]'``).
    ValueError: a file that is missing, not a PyTorch checkpoint, holds objects other than
      tensors, containers and :data:`SAFE_TYPES`, or holds no state dict; one line.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("reading a PyTorch checkpoint needs torch: pip install 'kdjax[torch]' (only "
                      "to read the file; nothing else in kdjax uses torch)") from None
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"{path} does not exist; give a PyTorch checkpoint file (.pth / .pt)")
  try:
    with torch.serialization.safe_globals(_safe_types()):
      obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # torch raises many kinds on bad files.
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    if isinstance(e, pickle.UnpicklingError) and found:
      raise ValueError(f"{path} holds a {found.group(1)} object; kdjax reads checkpoints with "
                       "torch.load(weights_only=True) and never unpickles code, so save the "
                       "weights alone: torch.save({'model': model.state_dict()}, path)") from None
    raise ValueError(f"cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: "
                     f"{_one_line(e)})") from None
  state = _find_state_dict(obj)
  if state is None:
    keys = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(f"{path} holds no state dict (found {keys}); expected a state_dict or a dict "
                     "holding one under 'model', 'net' or 'state_dict'")
  state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
  parts = {k.split(".", 1)[0] for k in state}
  if {"student", "teacher"} & parts:
    if part not in parts:
      raise ValueError(f"{path} is a distillation checkpoint with {sorted(parts)} but no "
                       f"{part!r}; choose part='student' or part='teacher'")
    state = {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
  arrays = {}
  for k, v in state.items():
    if k.endswith(_IGNORED_SUFFIXES):
      continue
    arrays[k] = v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
  return arrays


def _find_state_dict(obj: Any) -> dict[str, Any] | None:
  import torch  # pylint: disable=g-import-not-at-top

  def is_state(x):
    return isinstance(x, Mapping) and x and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in x.items())

  if is_state(obj):
    return dict(obj)
  if isinstance(obj, Mapping):
    for key in ("model", "net", "state_dict"):
      if is_state(obj.get(key)):
        return dict(obj[key])
  return None


# Mapping onto the zoo's variables -------------------------------------------------------------


def _convert(arrays: Mapping[str, np.ndarray], params: PyTree, model_state: PyTree,
             torch_name: Callable[[tuple[str, ...]], str | None]
             ) -> tuple[dict[str, Any], list[str]]:
  """``{'params': ..., 'batch_stats': ...}`` as flat ``{path tuple: array}``, and the problems."""
  wanted = {("params", *k): v for k, v in flax.traverse_util.flatten_dict(
      jax.tree.map(np.shape, dict(params), is_leaf=lambda x: hasattr(x, "shape"))).items()}
  wanted.update(flax.traverse_util.flatten_dict(
      jax.tree.map(np.shape, dict(model_state), is_leaf=lambda x: hasattr(x, "shape"))))
  out, problems, used = {}, [], set()
  for key, shape in wanted.items():
    collection, module, leaf = key[0], key[1:-1], key[-1]
    try:
      name = torch_name(module) if collection in ("params", "batch_stats") else None
    except (KeyError, ValueError, AttributeError, IndexError):  # a path of another family
      name = None
    suffix = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
              "var": "running_var"}.get(leaf)
    if name is None or suffix is None:
      problems.append(f"{'/'.join(key)} has no PyTorch counterpart")
      continue
    tkey = f"{name}.{suffix}"
    if tkey not in arrays:
      problems.append(f"{tkey} missing from the file (for {'/'.join(key)})")
      continue
    used.add(tkey)
    value = arrays[tkey]
    if leaf == "kernel":
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    if tuple(value.shape) != tuple(shape):
      problems.append(f"{tkey}: {tuple(arrays[tkey].shape)} in the file, the model's "
                      f"{'/'.join(key)} needs {tuple(shape)} (as {_torch_shape(leaf, shape)})")
      continue
    out[key] = value
  problems += [f"{k} in the file, not in the model" for k in sorted(set(arrays) - used)]
  return out, problems


def _torch_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if leaf == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf == "kernel" and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def _restore(flat: dict[tuple[str, ...], np.ndarray], params: PyTree,
             model_state: PyTree) -> tuple[PyTree, PyTree]:
  nested = flax.traverse_util.unflatten_dict(flat)

  def cast(target, stored):
    return jax.tree.map(lambda t, s: jnp.asarray(s, dtype=t.dtype), target, stored)

  new_params = cast(dict(params), nested["params"])
  new_state = {k: cast(v, nested[k]) for k, v in dict(model_state).items()}
  return new_params, new_state


def convert_state_dict(arrays: Mapping[str, np.ndarray], *, params: PyTree, model_state: PyTree,
                       name: str | None = None, where: str = "the checkpoint"
                       ) -> tuple[PyTree, PyTree]:
  """PyTorch tensors (:func:`read_state_dict`) as a zoo model's ``(params, model_state)``.

  ``name`` picks the naming family; without it every family is tried and the one that maps
  every tensor wins (the error then reports the closest one).

  Raises:
    ValueError: the tensors do not fit the model; the message lists the first differences.
  """
  families = [family(name)] if name is not None else list(FAMILIES)
  if families == [None]:
    raise ValueError(f"no PyTorch mapping for zoo model {name!r}; from_pytorch reads "
                     f"{', '.join(supported_models())}")
  best = None
  for fam in families:
    flat, problems = _convert(arrays, params, model_state, FAMILIES[fam])
    if not problems:
      return _restore(flat, params, model_state)
    if best is None or len(problems) < len(best):
      best = problems
  more = f"; and {len(best) - _SHOWN} more" if len(best) > _SHOWN else ""
  head = next((p for p in best if re.match(r"(fc|linear|classifier(\.0)?)\.weight:", p)), None)
  fix = ("set num_classes to the file's class count" if head else
         "name the zoo model the file was trained as (RepDistiller / mdistiller naming)")
  raise ValueError(f"{where} does not fit the model ({len(best)} differences: "
                   f"{'; '.join(([head] if head else []) + [p for p in best if p != head][:_SHOWN])}"
                   f"{more}); {fix}")


def from_pytorch(name: str, checkpoint_path: str | os.PathLike, *, num_classes: int = 100,
                 taps: Sequence[str] = (), dtype: Any = jnp.float32,
                 input_shape: Sequence[int] = (32, 32, 3), part: str = "student") -> Model:
  """A CIFAR model trained with RepDistiller or mdistiller, as the zoo model of the same name.

  Builds zoo model ``name`` (:func:`kdjax.models.create`) and fills every parameter and
  BatchNorm statistic from the PyTorch checkpoint, so that ``model.apply(..., train=False)``
  gives the PyTorch model's eval-mode logits (to float32 rounding) on the same images laid out
  NHWC (``x_nhwc = x_nchw.transpose(0, 2, 3, 1)``), normalised as they were in training
  (CIFAR-100: ``kdjax.data`` ``standardize=True``).

  Mapping: convolution ``weight [out, in/groups, kh, kw]`` -> ``kernel [kh, kw, in/groups, out]``;
  linear ``weight [out, in]`` -> ``kernel [in, out]``; BatchNorm ``weight, bias, running_mean,
  running_var`` -> ``scale, bias`` (params) and ``mean, var`` (``batch_stats``); module names
  as in RepDistiller's ``models/`` (``layer2.0.conv1`` <-> ``stage2/block_0/conv1``).

  Args:
    name: a zoo name (``resnet8..110``, ``resnet8x4``, ``resnet32x4``, ``resnet50``,
      ``wrn_16_1/16_2/40_1/40_2``, ``vgg8..19``, ``mobilenetv2``, ``shufflenetv1``,
      ``shufflenetv2``) or the RepDistiller/mdistiller name (``ResNet50``, ``MobileNetV2``,
      ``ShuffleV1``, ``ShuffleV2``, ``vgg13_bn``, ...).
    checkpoint_path: the ``.pth`` file: a ``state_dict``, a dict holding one under ``'model'``
      or ``'net'`` (RepDistiller, mdistiller's ``cifar_teachers``), or an mdistiller training
      checkpoint (``module.student.*`` / ``module.teacher.*``); GPU-saved files are fine.
    num_classes: the classes of the file's head (100 for CIFAR-100).
    taps: feature paths the model returns (see :func:`kdjax.models.create`).
    dtype: compute dtype; parameters stay float32.
    input_shape: one image's shape, NHWC without the batch axis.
    part: for an mdistiller training checkpoint, ``'student'`` or ``'teacher'``.

  Returns:
    A :class:`~kdjax.models.Model` named ``name`` (the zoo name).

  Raises:
    ImportError: torch is missing (``pip install 'kdjax[torch]'``; used only to read the file).
    ValueError: a name without a mapping, an unreadable or unsafe file (``torch.load`` runs with
      ``weights_only=True``; objects other than tensors, containers, ``argparse.Namespace`` and
      numpy scalars are refused), or tensors that do not fit the model (the message lists them).

  Example::

    teacher = kdjax.models.from_pytorch(
        "resnet32x4", "cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth",
        taps=("stage3", "pre_logits"))

  References:
    Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020 (RepDistiller);
    Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022 (mdistiller).
  """
  from kdjax.models._create import create  # pylint: disable=g-import-not-at-top

  zoo_name = ALIASES.get(name, name)
  if family(zoo_name) is None:
    raise ValueError(f"from_pytorch has no mapping for {name!r}; it reads "
                     f"{', '.join(supported_models())} (and the RepDistiller names "
                     f"{', '.join(ALIASES)})")
  arrays = read_state_dict(checkpoint_path, part=part)
  model = create(zoo_name, num_classes=num_classes, input_shape=input_shape,
                 rng=jax.random.key(0), taps=taps, dtype=dtype)
  params, state = convert_state_dict(arrays, params=model.params, model_state=model.model_state,
                                     name=zoo_name, where=os.fspath(checkpoint_path))
  return dataclasses.replace(model, params=params, model_state=state)
