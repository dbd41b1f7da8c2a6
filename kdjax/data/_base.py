"""What every kdjax dataset is: its description, its errors, and the random-access interface."""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Mapping, Protocol, Sequence


class DataError(ValueError):
  """A dataset, split, batch size or augmentation setting that kdjax cannot use as given."""


class DatasetNotPreparedError(DataError):
  """A TFDS dataset whose files are not on disk (kdjax never downloads at run time)."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a training run needs to know about a dataset before reading it.

  Attributes:
    name: the name the dataset is looked up by (``'digits'``, ``'tfds:cifar100'``, ...).
    num_classes: number of label classes; labels are ints in ``[0, num_classes)``.
    input_shape: shape of one image, channel-last (``(32, 32, 3)``).
    num_train: examples in the training split.
    num_eval: examples in ``eval_split``.
    splits: the split names that can be read.
    eval_split: the split evaluation reads by default (``'test'`` where there is one).
    mean: per-channel mean of the training images in ``[0, 1]`` units, or ``None`` if unknown.
    std: per-channel standard deviation, same units, or ``None``.
    class_names: the name of each label id (``class_names[label]``), or ``None`` if unknown
      (``folder:`` datasets name their classes after their class folders).
  """
  name: str
  num_classes: int
  input_shape: tuple[int, ...]
  num_train: int
  num_eval: int
  splits: tuple[str, ...] = ("train", "test")
  eval_split: str = "test"
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  class_names: tuple[str, ...] | None = None


class Source(Protocol):
  """A random-access split: ``len(source)`` examples, ``source[i]`` -> one example.

  An example is ``{'image': array [H, W, C] (uint8 in [0, 255] or float32 in [0, 1]),
  'label': int}``. Sources are pickled into grain worker processes, so they hold their data or a
  handle that pickles (not an open file).
  """

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> Mapping[str, Any]:
    ...


class Dataset(abc.ABC):
  """A named dataset: its :class:`DatasetInfo` and a :class:`Source` per split."""

  @property
  @abc.abstractmethod
  def info(self) -> DatasetInfo:
    ...

  @abc.abstractmethod
  def source(self, split: str) -> Source:
    """The random-access source of ``split``; :class:`DataError` for an unknown split."""

  def _check_split(self, split: str, splits: Sequence[str]) -> None:
    if split not in splits:
      raise DataError(f"dataset '{self.info.name}' has no split '{split}'; "
                      f"its splits are {list(splits)}")


class SplitsDataset(Dataset):
  """A :class:`Dataset` whose ``__init__`` builds everything up front: ``self._info`` and
  ``self._sources`` (split name -> :class:`Source`, one per split it can read)."""

  _info: DatasetInfo
  _sources: Mapping[str, Source]

  @property
  def info(self) -> DatasetInfo:
    return self._info

  def source(self, split: str) -> Source:
    self._check_split(split, tuple(self._sources))
    return self._sources[split]
