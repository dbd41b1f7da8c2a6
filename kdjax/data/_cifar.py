"""``cifar100-python:<path>``: CIFAR-100 from the official Python archive, without TensorFlow.

The archive is ``cifar-100-python.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html
(about 161 MB; the user downloads it once, kdjax never does). It holds three pickled dicts,
``cifar-100-python/{train,test,meta}``: ``train`` / ``test`` have ``data`` (uint8
``[N, 3072]``, each row the red, green and blue 32x32 planes in row-major order),
``fine_labels`` (100 classes) and ``coarse_labels`` (20 superclasses); ``meta`` has
``fine_label_names`` and ``coarse_label_names``. The pickles are read with an unpickler that
only rebuilds numpy arrays and plain containers, so a tampered archive cannot run code.
"""
from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tarfile
from typing import Any

import numpy as np

from kdjax.data._base import DataError
from kdjax.data._builtin import ArrayDataset
from kdjax.data._tfds import KNOWN_STATS

ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
DOWNLOAD = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
LABELS = ("fine", "coarse")
_MEMBERS = ("train", "test", "meta")
# The only globals the archive's pickles need: numpy's array reconstruction and, for pickles
# written by Python 3 with protocol 2, the codec that turns their byte strings back into bytes.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArraysOnly(pickle.Unpickler):

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in _ALLOWED:
      raise pickle.UnpicklingError(f"the pickle refers to {module}.{name}, which a CIFAR pickle "
                                   "never holds")
    return super().find_class(module, name)


def _unpickle(raw: bytes, where: str) -> dict[str, Any]:
  try:
    obj = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
  except Exception as e:  # pylint: disable=broad-except  # pickle raises many kinds.
    raise DataError(f"{where} is not a CIFAR-100 pickle ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:200]}); download the "
                    f"archive again from {DOWNLOAD}") from None
  if not isinstance(obj, dict):
    raise DataError(f"{where} holds a {type(obj).__name__}, not the dict of a CIFAR-100 pickle")
  return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_members(path: str, name: str) -> dict[str, dict[str, Any]]:
  """``{'train': ..., 'test': ..., 'meta': ...}`` from the archive or its extracted folder."""
  if (os.path.isdir(path) and not os.path.isdir(os.path.join(path, FOLDER))
      and os.path.isfile(os.path.join(path, ARCHIVE))):
    path = os.path.join(path, ARCHIVE)
  if os.path.isdir(path):
    folder = os.path.join(path, FOLDER) if os.path.isdir(os.path.join(path, FOLDER)) else path
    missing = [m for m in _MEMBERS if not os.path.isfile(os.path.join(folder, m))]
    if missing:
      raise DataError(f"dataset '{name}': {folder} has no {', '.join(missing)} file(s); point at "
                      f"{ARCHIVE} or the {FOLDER} folder extracted from it (download: {DOWNLOAD})")
    out = {}
    for m in _MEMBERS:
      with open(os.path.join(folder, m), "rb") as f:
        out[m] = _unpickle(f.read(), os.path.join(folder, m))
    return out
  if not os.path.isfile(path):
    raise DataError(f"dataset '{name}': no file or folder {path}; download {ARCHIVE} from "
                    f"{DOWNLOAD} and point at it (or at the {FOLDER} folder extracted from it)")
  try:
    with tarfile.open(path, "r:*") as tar:
      members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
      missing = [m for m in _MEMBERS if m not in members]
      if missing:
        raise DataError(f"dataset '{name}': {path} has no {FOLDER}/{', '.join(missing)}; it is "
                        f"not {ARCHIVE} (download: {DOWNLOAD})")
      return {m: _unpickle(tar.extractfile(members[m]).read(), f"{path}:{members[m].name}")
              for m in _MEMBERS}
  except (tarfile.TarError, OSError, EOFError) as e:
    raise DataError(f"dataset '{name}': cannot read {path} as a tar archive "
                    f"({' '.join(str(e).split())[:200]}); download "
                    f"{ARCHIVE} again from {DOWNLOAD}") from None


def _split(record: dict[str, Any], labels: str, where: str) -> tuple[np.ndarray, np.ndarray]:
  key = f"{labels}_labels"
  if "data" not in record or key not in record:
    raise DataError(f"{where} has no 'data' / '{key}' entries (it has {sorted(record)})")
  data = np.asarray(record["data"])
  y = np.asarray(record[key], np.int64)
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
    raise DataError(f"{where}: 'data' is {data.dtype} {data.shape}; CIFAR-100 stores uint8 "
                    "[N, 3072] (three 32x32 planes per image)")
  if len(y) != len(data):
    raise DataError(f"{where}: {len(data)} images but {len(y)} {labels} labels")
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def parse_name(path: str) -> tuple[str, str]:
  """``'<path>[:fine|:coarse]'`` -> ``(path, labels)``."""
  head, sep, tail = path.rpartition(":")
  if sep and tail in LABELS:
    return head, tail
  return path, "fine"


def load_cifar100_python(name: str, path: str, labels: str = "fine") -> ArrayDataset:
  """``cifar100-python:<path>[:coarse]``: CIFAR-100 from the official Python archive.

  ``path`` is ``cifar-100-python.tar.gz``, the ``cifar-100-python`` folder extracted from it, or
  the folder holding either. Splits ``'train'`` (50,000) and ``'test'`` (10,000), images
  ``[32, 32, 3]`` uint8; ``labels='fine'`` (default: 100 classes) or ``'coarse'`` (20
  superclasses), named from ``meta``. ``standardize=True`` uses the CIFAR-100 constants of
  ``tfds:cifar100`` (those the published CIFAR-100 teachers were trained with).
  """
  if labels not in LABELS:
    raise DataError(f"dataset '{name}': labels must be 'fine' or 'coarse', got {labels!r}")
  members = _read_members(path, name)
  splits = {s: _split(members[s], labels, f"{path} ({s})") for s in ("train", "test")}
  names_key = f"{labels}_label_names"
  class_names = tuple(n.decode() if isinstance(n, bytes) else str(n)
                      for n in members["meta"].get(names_key, ()))
  if not class_names:
    raise DataError(f"{path} (meta) has no '{names_key}'; it is not the CIFAR-100 archive")
  for split, (_, y) in splits.items():
    if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
      bad = int(np.flatnonzero((y < 0) | (y >= len(class_names)))[0])
      raise DataError(f"dataset '{name}': {labels} label {int(y[bad])} of {split} example {bad} "
                      f"is outside the {len(class_names)} classes of meta")
  dataset = ArrayDataset(name, splits, num_classes=len(class_names))
  mean, std = KNOWN_STATS["cifar100"]
  dataset._info = dataclasses.replace(dataset.info, mean=mean, std=std,  # pylint: disable=protected-access
                                      class_names=class_names)
  return dataset
