"""``folder:<dir>``: images in class folders, ``<dir>/<split>/<class>/<image>`` or
``<dir>/<class>/<image>``, decoded by Pillow."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from kdjax.data._base import DataError, DatasetInfo, SplitsDataset
from kdjax.data._builtin import _channel_stats
from kdjax.data._files import _eval_split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# The per-channel mean/std (for standardize=True) come from this many training images, evenly
# spaced over the split, so opening a large folder stays fast.
STATS_SAMPLE = 512


def _pillow():
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError("folder:<dir> datasets decode images with Pillow, which is not installed; "
                    "`pip install pillow` (or `pip install kdjax[images]`)") from None
  return Image


def _decode(path: str, mode: str, size: tuple[int, int] | None) -> np.ndarray:
  """One image as uint8 ``[H, W, C]`` in ``mode`` (``'L'``, ``'RGB'``), resized to ``size``."""
  image_lib = _pillow()
  try:
    with image_lib.open(path) as image:
      image = image.convert(mode)
      if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), image_lib.Resampling.BILINEAR)
      array = np.asarray(image, np.uint8)
  except (OSError, ValueError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError.
    raise DataError(f"cannot decode the image {path} ({type(e).__name__}: {e}); remove it or "
                    "replace it with a readable PNG/JPEG file") from None
  return array[..., None] if array.ndim == 2 else array


class FolderSource:
  """One split of an image folder: file paths and labels; decodes on access (in grain workers)."""

  def __init__(self, paths: Sequence[str], labels: np.ndarray, *, mode: str,
               size: tuple[int, int]):
    self.paths = list(paths)
    self.labels = np.asarray(labels, np.int64)
    self.mode = mode
    self.size = size

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> Mapping[str, Any]:
    index = int(index)
    return {"image": _decode(self.paths[index], self.mode, self.size),
            "label": int(self.labels[index])}


def _subdirs(path: str) -> list[str]:
  return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _images(folder: str) -> list[str]:
  return sorted(os.path.join(folder, e.name) for e in os.scandir(folder)
                if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def _one_class_error(name: str, where: str, class_names: Sequence[str]) -> DataError:
  return DataError(f"dataset '{name}': {where} has one class folder ({class_names[0]!r}); a "
                   "classifier needs at least two classes, one folder each")


def _split_layout(root: str, name: str, splits: Sequence[str]
                  ) -> tuple[tuple[str, ...], dict[str, tuple[list[str], list[int]]]]:
  """``<root>/<split>/<class>/<image>``: classes from ``train``."""
  class_names = tuple(_subdirs(os.path.join(root, "train")))
  if not class_names:
    raise DataError(f"dataset '{name}': {os.path.join(root, 'train')} has no class folders; "
                    "expected train/<class>/<image>")
  if len(class_names) < 2:
    raise _one_class_error(name, os.path.join(root, "train"), class_names)
  label_of = {c: i for i, c in enumerate(class_names)}
  files: dict[str, tuple[list[str], list[int]]] = {}
  for split in splits:
    split_dir = os.path.join(root, split)
    paths, labels = [], []
    for cls in _subdirs(split_dir):
      if cls not in label_of:
        raise DataError(f"dataset '{name}': class folder {os.path.join(split_dir, cls)} has "
                        f"no counterpart in {os.path.join(root, 'train')}; the training "
                        f"classes are {list(class_names)}")
      found = _images(os.path.join(split_dir, cls))
      if not found:
        raise DataError(f"dataset '{name}': class folder {os.path.join(split_dir, cls)} holds "
                        f"no images (files ending in {', '.join(IMAGE_EXTENSIONS)})")
      paths += found
      labels += [label_of[cls]] * len(found)
    if not paths:
      raise DataError(f"dataset '{name}': {split_dir} has no class folders with images; "
                      f"expected {split}/<class>/<image>")
    files[split] = (paths, labels)
  return class_names, files


def _class_layout(root: str, name: str, class_names: Sequence[str], eval_fraction: float,
                  seed: int) -> tuple[tuple[str, ...], dict[str, tuple[list[str], list[int]]]]:
  """``<root>/<class>/<image>``: a seeded, per-class ``train`` / ``test`` split."""
  class_names = tuple(class_names)
  if len(class_names) < 2:
    raise _one_class_error(name, root, class_names)
  files: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
  for label, cls in enumerate(class_names):
    found = _images(os.path.join(root, cls))
    if not found:
      raise DataError(f"dataset '{name}': class folder {os.path.join(root, cls)} holds no images "
                      f"(files ending in {', '.join(IMAGE_EXTENSIONS)})")
    n = len(found)
    held = 0 if n < 2 else min(max(int(round(eval_fraction * n)), 1), n - 1)
    order = np.random.default_rng((seed, label)).permutation(n)
    test = set(int(i) for i in order[:held])
    for i, path in enumerate(found):
      split = "test" if i in test else "train"
      files[split][0].append(path)
      files[split][1].append(label)
  if not files["test"][0]:
    raise DataError(f"dataset '{name}': no class folder of {root} has two images, so nothing is "
                    "left for evaluation; add images or use <dir>/train and <dir>/test folders")
  return class_names, files


class FolderDataset(SplitsDataset):
  """Images in class folders: ``<root>/<split>/<class>/<image>`` or ``<root>/<class>/<image>``.

  Split layout: every sub-folder of ``root`` is a split (``'train'`` is required; evaluation
  reads ``'test'``, else ``'validation'``/``'val'``). The class folders of ``'train'``, sorted by
  name, give the label ids (``class_names[label]``); another split may lack a class but not add
  one.

  Class layout (torchvision's ``ImageFolder``; used when ``root`` has no ``train`` folder and its
  sub-folders hold images): every sub-folder is a class, and the ``'train'`` / ``'test'`` split
  is drawn per class: ``round(eval_fraction * n)`` of a class's ``n`` images (at least one when
  ``n >= 2``, never all) go to ``'test'``, chosen by a permutation seeded with
  ``(split_seed, class index)``, the same on every machine.

  Images are files ending in .png, .jpg, .jpeg, .bmp, .gif or .webp (other files are ignored),
  decoded with Pillow when read (in grain's worker processes when ``worker_count > 0``):
  grayscale (``[H, W, 1]``) when the first training image is grayscale, else RGB
  (``[H, W, 3]``), and resized (bilinear) to ``image_size`` when they differ from it.

  Args:
    root: the dataset folder.
    image_size: ``(height, width)`` of every image; default: the first training image's size.
    name: the name reported in :class:`DatasetInfo` (default ``'folder:<root>'``).
    eval_fraction: class layout only: the share of each class held out for ``'test'``.
    split_seed: class layout only: the seed of the held-out choice.

  Raises:
    DataError: a missing folder or ``'train'`` split, a single class, a class folder without
      images, a class in another split that ``'train'`` lacks, or an image that cannot be
      decoded; the message names the folder or file.
  """

  def __init__(self, root: str, *, image_size: tuple[int, int] | None = None, name: str = "",
               eval_fraction: float = 0.1, split_seed: int = 0):
    root = os.fspath(root)
    name = name or f"folder:{root}"
    if not os.path.isdir(root):
      raise DataError(f"dataset '{name}': no folder {root}; expected the layout "
                      "<dir>/<split>/<class>/<image> (e.g. <dir>/train/cat/001.png) or "
                      "<dir>/<class>/<image>")
    if not 0.0 < eval_fraction < 1.0:
      raise DataError(f"dataset '{name}': eval_fraction must be in (0, 1), got {eval_fraction}")
    splits = _subdirs(root)
    if "train" in splits:
      class_names, files = _split_layout(root, name, splits)
    elif any(_images(os.path.join(root, d)) for d in splits):
      class_names, files = _class_layout(root, name, splits, eval_fraction, split_seed)
    else:
      raise DataError(f"dataset '{name}': {root} has no 'train' folder and no class folders "
                      f"with images (found {splits or 'no folders'}); expected "
                      "<dir>/train/<class>/<image> (and e.g. <dir>/test/<class>/<image>), or "
                      "<dir>/<class>/<image>")
    eval_split = _eval_split(tuple(files))
    first = files["train"][0][0]
    image_lib = _pillow()
    try:
      with image_lib.open(first) as image:
        grayscale = image.mode in ("1", "L", "I", "I;16", "F")
        width, height = image.size
    except (OSError, ValueError, SyntaxError) as e:
      raise DataError(f"cannot decode the image {first} ({type(e).__name__}: {e}); remove it or "
                      "replace it with a readable PNG/JPEG file") from None
    mode = "L" if grayscale else "RGB"
    size = (height, width) if image_size is None else tuple(int(d) for d in image_size)
    self._sources = {split: FolderSource(p, np.asarray(l), mode=mode, size=size)
                     for split, (p, l) in files.items()}
    train = self._sources["train"]
    sample = np.unique(np.linspace(0, len(train) - 1, min(len(train), STATS_SAMPLE)).astype(int))
    mean, std = _channel_stats(np.stack([train[i]["image"] for i in sample]))
    self._info = DatasetInfo(
        name=name, num_classes=len(class_names), input_shape=(*size, 1 if grayscale else 3),
        num_train=len(train), num_eval=len(self._sources[eval_split]), splits=tuple(files),
        eval_split=eval_split, mean=mean, std=std, class_names=class_names)
