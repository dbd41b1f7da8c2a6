"""Dense-prediction datasets built offline from scikit-learn's handwritten digits.

``seg_digits``: 32x32 canvases holding 2-3 digits, each resized to 8-14 pixels, with a per-pixel
class map (0 background, ``1 + d`` for digit ``d``). ``det_digits``: 48x48 canvases holding 2-4
digits, each resized to 8-16 pixels, with their tight boxes and classes. Digits never overlap.
Canvas ``i`` of a split is a function of ``(split, i)`` only: its digits are drawn from that
split's digits (the fixed stratified split of ``'digits'``, so no test digit is ever trained on)
with a generator seeded by ``(seed, split, i)``; the data are identical on every machine.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np

from kdjax.data import _builtin
from kdjax.data._base import DataError, DatasetInfo, SplitsDataset

_SPLITS = ("train", "test")
# A pixel belongs to its digit when the resized stroke intensity exceeds this (in [0, 1]).
INK_THRESHOLD = 0.25
# Padding value of box classes (a canvas holds fewer digits than max_boxes).
NO_BOX = -1


@functools.lru_cache(maxsize=1)
def _digit_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  digits = _builtin.digits()
  return {split: (digits.source(split).images[..., 0], digits.source(split).labels)
          for split in _SPLITS}


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of a square image to ``size x size`` (pixel centres aligned)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

  n = image.shape[0]
  coords = (np.arange(size) + 0.5) * n / size - 0.5
  yy, xx = np.meshgrid(coords, coords, indexing="ij")
  return np.clip(ndimage.map_coordinates(image, [yy, xx], order=1, mode="nearest"), 0.0, 1.0)


def _compose(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, canvas: int,
             count: tuple[int, int], size: tuple[int, int]):
  """Places non-overlapping digits; returns the canvas, its class map and the digits' boxes."""
  image = np.zeros((canvas, canvas), np.float32)
  classes = np.zeros((canvas, canvas), np.int64)
  occupied = np.zeros((canvas, canvas), bool)
  boxes, box_classes = [], []
  for _ in range(int(rng.integers(count[0], count[1] + 1))):
    k = int(rng.integers(len(labels)))
    s = int(rng.integers(size[0], size[1] + 1))
    digit = _resize(images[k], s)
    for _ in range(50):  # Rejection sampling of a free spot (one pixel of margin).
      y, x = (int(v) for v in rng.integers(0, canvas - s + 1, size=2))
      if not occupied[max(y - 1, 0):y + s + 1, max(x - 1, 0):x + s + 1].any():
        break
    else:
      continue
    ink = digit > INK_THRESHOLD
    if not ink.any():
      continue
    occupied[y:y + s, x:x + s] = True
    image[y:y + s, x:x + s] = np.maximum(image[y:y + s, x:x + s], digit)
    classes[y:y + s, x:x + s][ink] = 1 + int(labels[k])
    rows, cols = np.nonzero(ink)
    boxes.append((x + cols.min(), y + rows.min(), x + cols.max() + 1, y + rows.max() + 1))
    box_classes.append(int(labels[k]))
  return image, classes, boxes, box_classes


class DenseDigitsSource(_builtin.SeededSource):
  """One split of a digit-canvas dataset; example ``i`` is generated on access, deterministically.

  Examples: ``{'image': float32 [S, S, 1] in [0, 1], 'label': int32 [S, S]}`` (segmentation: the
  class map) or ``{'image', 'boxes': float32 [max_boxes, 4], 'box_classes': int32 [max_boxes]}``
  (detection: ``(x0, y0, x1, y1)`` pixel boxes, classes ``-1`` where padded).
  """

  def __init__(self, task: str, split: str, size: int, seed: int, canvas: int,
               count: tuple[int, int], digit_size: tuple[int, int], max_boxes: int):
    super().__init__(size, seed, _SPLITS.index(split))
    self.task, self.split = task, split
    self.canvas, self.count, self.digit_size, self.max_boxes = canvas, count, digit_size, max_boxes

  def __getitem__(self, index: int) -> Mapping[str, Any]:
    rng = self._rng(index)
    images, labels = _digit_splits()[self.split]
    image, classes, boxes, box_classes = _compose(rng, images, labels, self.canvas, self.count,
                                                  self.digit_size)
    out = {"image": image[..., None]}
    if self.task == "segmentation":
      out["label"] = classes.astype(np.int32)
      return out
    padded = np.zeros((self.max_boxes, 4), np.float32)
    cls = np.full((self.max_boxes,), NO_BOX, np.int32)
    padded[:len(boxes)] = np.asarray(boxes, np.float32).reshape(-1, 4)
    cls[:len(box_classes)] = box_classes
    out.update(boxes=padded, box_classes=cls)
    return out

  def arrays(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """Examples ``start .. stop - 1`` stacked into arrays, one per key."""
    rows = [self[i] for i in range(start, self.size if stop is None else stop)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class DenseDigits(SplitsDataset):
  """Digit canvases for segmentation (``task='segmentation'``) or detection (``'detection'``).

  Args:
    task: ``'segmentation'`` (class maps, ``num_classes = 11``: background and 10 digits) or
      ``'detection'`` (boxes, ``num_classes = 10``).
    num_train: canvases in ``'train'``.
    num_eval: canvases in ``'test'``.
    seed: the seed every canvas is drawn from.
  """

  def __init__(self, task: str, *, num_train: int = 2000, num_eval: int = 300, seed: int = 0):
    if task == "segmentation":
      name, canvas, count, digit_size, num_classes, max_boxes = (
          "seg_digits", 32, (2, 3), (8, 14), 11, 0)
    elif task == "detection":
      name, canvas, count, digit_size, num_classes, max_boxes = (
          "det_digits", 48, (2, 4), (8, 16), 10, 4)
    else:
      raise DataError(f"DenseDigits task must be 'segmentation' or 'detection', got {task!r}")
    if num_train < 1 or num_eval < 1:
      raise DataError(f"{name} needs num_train and num_eval >= 1, got {num_train}, {num_eval}")
    self._sources = {
        split: DenseDigitsSource(task, split, n, seed, canvas, count, digit_size, max_boxes)
        for split, n in (("train", num_train), ("test", num_eval))}
    names = ("background", *map(str, range(10))) if task == "segmentation" else tuple(
        map(str, range(10)))
    self._info = DatasetInfo(name=name, num_classes=num_classes, input_shape=(canvas, canvas, 1),
                             num_train=num_train, num_eval=num_eval, class_names=names)


@functools.lru_cache(maxsize=1)
def seg_digits() -> DenseDigits:
  """The ``seg_digits`` dataset: 2000 train / 300 test 32x32 canvases with class maps."""
  return DenseDigits("segmentation")


@functools.lru_cache(maxsize=1)
def det_digits() -> DenseDigits:
  """The ``det_digits`` dataset: 2000 train / 300 test 48x48 canvases with boxes."""
  return DenseDigits("detection")
