"""``tfds-dir:<dir>``: a prepared TFDS dataset that exists only as a directory.

Datasets written by ``tfds build`` of a custom builder, or copied from another machine, need no
registered builder class: ``tfds.builder_from_directory`` reads the ``dataset_info.json`` and
features in ``<dir>`` (a version directory such as ``.../my_dataset/1.0.0``).
"""
from __future__ import annotations

import os

from kdjax.data._base import DataError, Dataset, DatasetInfo
from kdjax.data._files import _eval_split
from kdjax.data._tfds import _OPEN_ERRORS, KNOWN_STATS, _TfdsSource, image_shape


class TfdsDirDataset(Dataset):
  """A TFDS image-classification dataset read from its directory, by random access.

  The directory holds ``dataset_info.json``, ``features.json`` and the split files in the
  ``array_record`` format (``tfds build ... --file_format=array_record``); records need an
  ``image`` feature of fixed shape and a ``label`` class feature.

  Args:
    directory: the dataset's version directory (``<data_dir>/<name>/<config>/<version>``).
    name: the name reported in :class:`DatasetInfo` (default ``'tfds-dir:<directory>'``).

  Raises:
    DataError: no such directory, no TFDS metadata in it, missing features, or split files that
      cannot be read by index.
  """

  def __init__(self, directory: str, *, name: str = ""):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    directory = os.fspath(directory)
    self.name = name or f"tfds-dir:{directory}"
    self.directory = directory
    if not os.path.isfile(os.path.join(directory, "dataset_info.json")):
      raise DataError(f"dataset '{self.name}': {directory} holds no dataset_info.json; point "
                      "tfds-dir: at a prepared TFDS version directory "
                      "(<data_dir>/<dataset>/<version>, containing dataset_info.json, "
                      "features.json and the array_record split files)")
    try:
      self._builder = tfds.builder_from_directory(directory)
    except Exception as e:  # pylint: disable=broad-except  # tfds raises many kinds here.
      raise DataError(f"dataset '{self.name}': TFDS cannot read the dataset in {directory} "
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    features = self._builder.info.features
    shape = image_shape(features, f"dataset '{self.name}': the TFDS dataset in {directory}")
    splits = tuple(self._builder.info.splits.keys())
    if "train" not in splits:
      raise DataError(f"dataset '{self.name}': the TFDS dataset in {directory} has no 'train' "
                      f"split (its splits are {list(splits)})")
    eval_split = _eval_split(splits)
    self._sources: dict[str, _TfdsSource] = {}
    label = features["label"]
    names = getattr(label, "names", None)
    mean, std = KNOWN_STATS.get(self._builder.info.name, (None, None))
    self._info = DatasetInfo(
        name=self.name, num_classes=int(label.num_classes), input_shape=shape,
        num_train=len(self.source("train")), num_eval=len(self.source(eval_split)),
        splits=splits, eval_split=eval_split, mean=mean, std=std,
        class_names=tuple(names) if names else None)

  @property
  def info(self) -> DatasetInfo:
    return self._info

  def source(self, split: str) -> _TfdsSource:
    if split not in self._sources:
      splits = tuple(self._builder.info.splits.keys())
      if split not in splits:
        raise DataError(f"dataset '{self.name}' has no split '{split}'; its splits are "
                        f"{list(splits)}")
      try:
        ds = self._builder.as_data_source(split=split)
      except _OPEN_ERRORS as e:
        raise DataError(
            f"dataset '{self.name}': cannot open split '{split}' in {self.directory} by index "
            f"({type(e).__name__}: {e}); rebuild it with `tfds build ... "
            "--file_format=array_record`") from None
      self._sources[split] = _TfdsSource(ds)
    return self._sources[split]
