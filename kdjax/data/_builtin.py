"""Datasets that need no download: in-memory arrays, scikit-learn's digits, and synthetic data."""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import numpy as np

from kdjax.data._base import DataError, DatasetInfo, SplitsDataset

DIGITS_NUM_EVAL = 359
DIGITS_SPLIT_SEED = 0


class ArraySource:
  """A split held in memory as arrays: ``images [N, H, W, C]`` and integer ``labels [N]``."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if len(images) != len(labels):
      raise DataError(f"{len(images)} images but {len(labels)} labels; give one label per image")
    self.images = images
    self.labels = np.asarray(labels, np.int64)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> Mapping[str, Any]:
    return {"image": self.images[index], "label": int(self.labels[index])}


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  x = images.astype(np.float64)
  if images.dtype == np.uint8:
    x = x / 255.0
  axes = tuple(range(x.ndim - 1))
  return tuple(float(v) for v in x.mean(axes)), tuple(float(v) for v in x.std(axes))


class ArrayDataset(SplitsDataset):
  """A dataset from numpy arrays, one ``(images, labels)`` pair per split.

  Images are ``[N, H, W, C]``, uint8 in ``[0, 255]`` or float32 in ``[0, 1]``. The per-channel
  mean and standard deviation used by ``standardize=True`` are computed from the ``'train'``
  split.
  """

  def __init__(self, name: str, splits: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
               num_classes: int, eval_split: str = "test"):
    if "train" not in splits or eval_split not in splits:
      raise DataError(f"dataset '{name}' needs a 'train' and a '{eval_split}' split, got "
                      f"{sorted(splits)}")
    self._sources = {k: ArraySource(*v) for k, v in splits.items()}
    train_images = self._sources["train"].images
    if train_images.ndim != 4:
      raise DataError(f"dataset '{name}': images must be [N, H, W, C], got shape "
                      f"{train_images.shape}")
    mean, std = _channel_stats(train_images)
    self._info = DatasetInfo(
        name=name, num_classes=int(num_classes), input_shape=tuple(train_images.shape[1:]),
        num_train=len(self._sources["train"]), num_eval=len(self._sources[eval_split]),
        splits=tuple(self._sources), eval_split=eval_split, mean=mean, std=std)


def digits_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Row numbers (into ``load_digits()``) of the fixed train and test splits, each sorted."""
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top

  train, test = train_test_split(np.arange(len(labels)), test_size=DIGITS_NUM_EVAL,
                                 stratify=labels, random_state=DIGITS_SPLIT_SEED)
  # Sorted so that an example's index within its split follows the original file order.
  return np.sort(train), np.sort(test)


@functools.lru_cache(maxsize=1)
def digits() -> ArrayDataset:
  """scikit-learn's bundled handwritten digits: 1797 8x8 grayscale images, 10 classes.

  Images are ``[8, 8, 1]`` float32 in ``[0, 1]`` (the raw 0..16 intensities divided by 16).
  The train/test split is fixed: stratified by class with seed 0, 1438 train and 359 test
  examples, the same on every machine.
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  data = load_digits()
  images = (data.images / 16.0).astype(np.float32)[..., None]
  labels = data.target.astype(np.int64)
  train, test = digits_split(labels)
  return ArrayDataset("digits", {"train": (images[train], labels[train]),
                                 "test": (images[test], labels[test])}, num_classes=10)


class SeededSource:
  """A generated split of ``size`` examples: example ``i`` is drawn from a generator seeded by
  ``(seed, split_id, i)`` alone, so it is the same on every machine and in every worker."""

  def __init__(self, size: int, seed: int, split_id: int):
    self.size = size
    self.seed = seed
    self.split_id = split_id

  def __len__(self) -> int:
    return self.size

  def _rng(self, index: int) -> np.random.Generator:
    """The generator of example ``index``; :class:`IndexError` outside the split."""
    index = int(index)
    if not 0 <= index < self.size:
      raise IndexError(f"index {index} out of range for a split of {self.size} examples")
    return np.random.default_rng((self.seed, self.split_id, index))


class _SyntheticSource(SeededSource):
  """Example ``i`` is its class prototype plus Gaussian noise, drawn from ``(seed, split, i)``."""

  def __init__(self, prototypes: np.ndarray, size: int, seed: int, split_id: int, noise: float):
    super().__init__(size, seed, split_id)
    self.prototypes = prototypes
    self.noise = noise

  def __getitem__(self, index: int) -> Mapping[str, Any]:
    rng = self._rng(index)
    label = int(rng.integers(len(self.prototypes)))
    noise = rng.standard_normal(self.prototypes.shape[1:]).astype(np.float32)
    image = np.clip(self.prototypes[label] + self.noise * noise, 0.0, 1.0)
    return {"image": image.astype(np.float32), "label": label}


class SyntheticDataset(SplitsDataset):
  """A generated, learnable classification dataset for tests and smoke runs.

  Each class has a random prototype image in ``[0, 1]``; an example is its class prototype plus
  Gaussian noise, clipped to ``[0, 1]``. Everything is a function of ``seed`` and the example's
  split and index, so the data are identical on every machine and in every worker process.

  Args:
    input_shape: shape of one image, channel-last.
    num_classes: number of classes.
    num_train: examples in the ``'train'`` split.
    num_eval: examples in the ``'test'`` split.
    seed: the seed everything is drawn from.
    noise: standard deviation of the noise added to the prototypes.
    name: the name reported in :class:`DatasetInfo`.
  """

  def __init__(self, input_shape: Sequence[int] = (16, 16, 3), num_classes: int = 10,
               num_train: int = 1024, num_eval: int = 256, *, seed: int = 0,
               noise: float = 0.15, name: str = "synthetic"):
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
      raise DataError(f"synthetic input_shape must be (height, width, channels), got {input_shape}")
    if num_classes < 1 or num_train < 1 or num_eval < 1:
      raise DataError("synthetic num_classes, num_train and num_eval must be positive, got "
                      f"{num_classes}, {num_train}, {num_eval}")
    prototypes = np.random.default_rng((seed, 2)).uniform(
        0.1, 0.9, (num_classes, *input_shape)).astype(np.float32)
    self._sources = {"train": _SyntheticSource(prototypes, num_train, seed, 0, noise),
                     "test": _SyntheticSource(prototypes, num_eval, seed, 1, noise)}
    sample = self._sources["train"]
    sample = np.stack([sample[i]["image"] for i in range(min(num_train, 256))])
    mean, std = _channel_stats(sample)
    self._info = DatasetInfo(name=name, num_classes=num_classes, input_shape=input_shape,
                             num_train=num_train, num_eval=num_eval, mean=mean, std=std)
