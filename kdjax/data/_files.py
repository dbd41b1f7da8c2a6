"""Datasets read from the user's own files: numpy archives and the IDX files of MNIST-like sets.

``npz:<file>`` and ``idx:<dir>`` are read into memory once (MNIST is 47 MB as uint8); the
image-folder layout lives in :mod:`kdjax.data._folder`, TFDS directories in
:mod:`kdjax.data._tfds_dir`.
"""
from __future__ import annotations

import dataclasses
import gzip
import math
import os
import zipfile
from typing import Mapping

import numpy as np

from kdjax.data._base import DataError
from kdjax.data._builtin import ArrayDataset


def _eval_split(splits) -> str:
  """``'test'`` when there is one, else ``'validation'`` / ``'val'``, else the first other split."""
  for name in ("test", "validation", "val"):
    if name in splits:
      return name
  return next((s for s in splits if s != "train"), "train")


def _check_arrays(where: str, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray,
                                                                            np.ndarray]:
  """Validated ``images [N, H, W, C]`` (uint8 or float32 in [0, 1]) and int64 ``labels [N]``."""
  if images.ndim == 3:  # [N, H, W]: grayscale without a channel axis.
    images = images[..., None]
  if images.ndim != 4:
    raise DataError(f"{where}: images must be [N, H, W, C] (or [N, H, W] for grayscale), got "
                    f"shape {images.shape}")
  if labels.ndim != 1:
    raise DataError(f"{where}: labels must be [N], got shape {labels.shape}")
  if len(images) != len(labels):
    raise DataError(f"{where}: {len(images)} images but {len(labels)} labels; there must be one "
                    "label per image")
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{where}: labels must be integers (class ids from 0), got dtype "
                    f"{labels.dtype}")
  if len(labels) and labels.min() < 0:
    raise DataError(f"{where}: labels must be class ids >= 0, found {int(labels.min())}")
  if images.dtype == np.uint8:
    return images, labels.astype(np.int64)
  if not np.issubdtype(images.dtype, np.floating):
    raise DataError(f"{where}: images must be uint8 in [0, 255] or float in [0, 1], got dtype "
                    f"{images.dtype}")
  finite = np.isfinite(images.reshape(len(images), int(np.prod(images.shape[1:])))).all(axis=1)
  if not finite.all():
    bad = int(np.flatnonzero(~finite)[0])
    kind = "NaN" if np.isnan(images[bad]).any() else "infinite"
    raise DataError(f"{where}: image {bad} has {kind} pixels ({int((~finite).sum())} images "
                    "in all); fix or drop those images (pixels must be finite, in [0, 1])")
  if images.size and (images.min() < 0.0 or images.max() > 1.0):
    raise DataError(f"{where}: float images must lie in [0, 1], found values in "
                    f"[{float(images.min())}, {float(images.max())}]; store uint8 pixels or "
                    "divide by 255")
  return images.astype(np.float32), labels.astype(np.int64)


def _ranges(values: list[int]) -> str:
  """[3, 4, 5, 9] -> '3..5, 9'."""
  out, start = [], None
  for i, v in enumerate(values):
    if start is None:
      start = v
    if i + 1 == len(values) or values[i + 1] != v + 1:
      out.append(f"{start}" if start == v else f"{start}..{v}")
      start = None
  return ", ".join(out[:6]) + (", ..." if len(out) > 6 else "")


def check_classes(where: str, labels: Mapping[str, np.ndarray],
                  class_names: tuple[str, ...] | None) -> int:
  """The class count, taken from the training split, after checking every split against it.

  With ``class_names`` the classes are declared: every label must be below their count.
  Without, the classes are the training labels, which must be ``0..K-1`` with each present;
  every other split must hold exactly those classes. At least two classes either way. Errors
  name the offending label, its split and example index, and ``where``.
  """
  def check_below(split: str, y: np.ndarray, k: int, reason: str, fix: str) -> None:
    outside = np.flatnonzero(y >= k)
    if outside.size:
      i = int(outside[0])
      raise DataError(f"{where}: {split} label {int(y[i])} (example {i}) {reason}; {fix}")

  train = labels["train"]
  if not len(train):
    raise DataError(f"{where}: the train split is empty; it needs examples of at least two "
                    "classes")
  if class_names is not None:
    k = len(class_names)
    for split, y in labels.items():
      check_below(split, y, k, f"is outside the {k} classes class_names lists",
                  "fix that label or list every class in class_names")
    if k < 2:
      raise DataError(f"{where}: class_names lists {k} class; a classifier needs at least two")
    return k
  present = np.unique(train)
  if present.size < 2:
    raise DataError(f"{where}: every training label is {int(present[0])}; a classifier needs at "
                    "least two classes in the train split")
  k = int(present[-1]) + 1
  missing = sorted(set(range(k)) - {int(c) for c in present})
  if missing:
    top = int(present[-1])
    raise DataError(f"{where}: the train labels skip {_ranges(missing)}; the largest, {top} (first "
                    f"at train example {int(np.flatnonzero(train == top)[0])}), would make "
                    f"{k} classes; labels must be 0..K-1 with every class in train: fix the "
                    "labels, or store a class_names array naming all K classes")
  for split, y in labels.items():
    if split == "train":
      continue
    check_below(split, y, k, f"is not a training class (the train split has classes 0..{k - 1})",
                "fix that label, or store a class_names array naming every class")
    absent = sorted(set(range(k)) - {int(c) for c in np.unique(y)})
    if absent and len(y):
      raise DataError(f"{where}: class {_ranges(absent)} appears in train but not in {split}; "
                      f"every class must appear in every split, or store a class_names array "
                      "naming the classes")
  return k


def _array_dataset(name: str, where: str, splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
                   class_names: tuple[str, ...] | None = None) -> ArrayDataset:
  if "train" not in splits:
    raise DataError(f"{where} has no 'train' split (found {sorted(splits) or 'none'})")
  shapes = {split: images.shape[1:] for split, (images, _) in splits.items()}
  if len(set(shapes.values())) > 1:
    raise DataError(f"{where}: the splits' images differ in shape ({shapes}); every split must "
                    "hold images of one [H, W, C]")
  eval_split = _eval_split(tuple(splits))
  num_classes = check_classes(where, {k: v[1] for k, v in splits.items()}, class_names)
  dataset = ArrayDataset(name, splits, num_classes=num_classes, eval_split=eval_split)
  if class_names is not None:
    dataset._info = dataclasses.replace(dataset.info, class_names=class_names)  # pylint: disable=protected-access
  return dataset


# npz ------------------------------------------------------------------------------------------


def load_npz(name: str, path: str) -> ArrayDataset:
  """``npz:<file>``: an archive with ``<split>_images [N, H, W, C]`` and ``<split>_labels [N]``.

  Every ``<split>`` with both arrays is a split; ``'train'`` is required and evaluation reads
  ``'test'`` (else ``'validation'``/``'val'``). Images are uint8 in ``[0, 255]`` or float in
  ``[0, 1]`` (finite); ``[N, H, W]`` is read as grayscale. An optional ``class_names`` array
  (strings) declares and names the classes; otherwise the classes are the training labels,
  ``0..K-1`` (see :func:`check_classes`).
  """
  if not os.path.isfile(path):
    raise DataError(f"dataset '{name}': no file {path}; expected a numpy .npz archive with "
                    "train_images / train_labels (and test_images / test_labels) arrays")
  try:
    with np.load(path, allow_pickle=False) as archive:
      arrays = {key: archive[key] for key in archive.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise DataError(f"dataset '{name}': cannot read {path} as a numpy .npz archive ({e})") from None
  prefixes = {key[:-len(suffix)] for key in arrays for suffix in ("_images", "_labels")
              if key.endswith(suffix)}
  splits = {}
  for split in sorted(prefixes):
    images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
    if images is None or labels is None:
      have, lacks = ("images", "labels") if labels is None else ("labels", "images")
      raise DataError(f"dataset '{name}': {path} has {split}_{have} but no {split}_{lacks}; "
                      f"store both arrays for split '{split}'")
    splits[split] = _check_arrays(f"{path} split '{split}'", images, labels)
  if "train" not in splits:
    raise DataError(f"dataset '{name}': {path} has no train_images / train_labels arrays (it "
                    f"has {sorted(arrays)}); expected <split>_images [N, H, W, C] and "
                    "<split>_labels [N] for split 'train' and an evaluation split such as 'test'")
  class_names = None
  if "class_names" in arrays:
    class_names = tuple(str(c) for c in np.asarray(arrays["class_names"]).reshape(-1))
  return _array_dataset(name, f"dataset '{name}' ({path})", splits, class_names)


# IDX ------------------------------------------------------------------------------------------

# The IDX type byte -> numpy dtype (big-endian), from the format's description on
# http://yann.lecun.com/exdb/mnist/.
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
# kdjax split -> the file prefix MNIST, Fashion-MNIST and KMNIST use.
_IDX_SPLITS = {"train": "train", "test": "t10k"}


def read_idx(path: str) -> np.ndarray:
  """The array stored in one IDX file (optionally gzip-compressed, ``.gz``).

  Raises:
    DataError: the file is not IDX, or shorter than its header says.
  """
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"cannot read the IDX file {path} ({e})") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise DataError(f"{path} is not an IDX file (its first 4 bytes are {raw[:4].hex()}; an IDX "
                    "file starts with 00 00, a type byte such as 08 for uint8, and the number "
                    "of dimensions)")
  dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path}: truncated IDX header")
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
  expected = header + math.prod(dims) * dtype.itemsize
  if len(raw) != expected:
    raise DataError(f"{path}: its header says {dims} values of {dtype.name} ({expected} bytes "
                    f"in all) but the file has {len(raw)} bytes; the file is truncated or "
                    "damaged")
  return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_file(directory: str, prefix: str, kind: str, ndim: int) -> str:
  names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
  for base in names:
    for candidate in (base, base + ".gz"):
      if os.path.isfile(os.path.join(directory, candidate)):
        return os.path.join(directory, candidate)
  raise DataError(f"{directory} has no {names[0]} file (nor {names[0]}.gz or {names[1]}[.gz]); "
                  "idx:<dir> expects the MNIST / Fashion-MNIST / KMNIST files "
                  "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                  "t10k-labels-idx1-ubyte, optionally gzipped")


def load_idx(name: str, directory: str) -> ArrayDataset:
  """``idx:<dir>``: the IDX files of MNIST, Fashion-MNIST or KMNIST (``train-`` and ``t10k-``).

  ``train-*`` is the ``'train'`` split, ``t10k-*`` the ``'test'`` split; images ``[N, 28, 28,
  1]`` uint8; the classes are the training labels (see :func:`check_classes`).
  """
  if not os.path.isdir(directory):
    raise DataError(f"dataset '{name}': no directory {directory}; expected a directory with "
                    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
                    "and t10k-labels-idx1-ubyte (optionally .gz)")
  splits = {}
  for split, prefix in _IDX_SPLITS.items():
    images_path = _idx_file(directory, prefix, "images", 3)
    labels_path = _idx_file(directory, prefix, "labels", 1)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim not in (3, 4):
      raise DataError(f"{images_path} holds an array of shape {images.shape}; expected images "
                      "[N, H, W]")
    if labels.ndim != 1:
      raise DataError(f"{labels_path} holds an array of shape {labels.shape}; expected labels [N]")
    if len(images) != len(labels):
      raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                      f"{len(labels)} labels; the two files must come from the same split")
    splits[split] = _check_arrays(f"{images_path}", images, labels)
  return _array_dataset(name, f"dataset '{name}' ({directory})", splits)
