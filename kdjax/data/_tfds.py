"""TFDS datasets read with random access (``tfds.data_source``; no TensorFlow, never a download)."""
from __future__ import annotations

from typing import Any, Mapping

from kdjax.data._base import DataError, Dataset, DatasetInfo, DatasetNotPreparedError

# Per-channel mean / std of the training images in [0, 1] units, as published with the
# datasets (CIFAR-10: the population std over all training pixels, not the often-copied
# per-image 0.2023/0.1994/0.2010). CIFAR-100: the constants RepDistiller and mdistiller train
# and evaluate their published teachers with, so that those teachers (kdjax.models.from_pytorch)
# see the inputs they were trained on; the population values, (0.5071, 0.4865, 0.4409) /
# (0.2673, 0.2564, 0.2762), differ in the fourth decimal. Every CIFAR-100 reader uses this row.
KNOWN_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}

# Errors tfds raises when a split cannot be opened (files missing, wrong format, bad split).
_OPEN_ERRORS = (AssertionError, NotImplementedError, ValueError, KeyError, OSError)


def parse_tfds_name(name: str) -> str:
  """``'tfds:<dataset>[:<config>]'`` -> the TFDS name ``'<dataset>[/<config>]'``."""
  parts = name.split(":")[1:]
  if not 1 <= len(parts) <= 2 or not all(parts):
    raise DataError(f"cannot parse dataset name '{name}'; write 'tfds:<dataset>' or "
                    "'tfds:<dataset>:<config>' (e.g. 'tfds:cifar100')")
  return "/".join(parts)


def image_shape(features: Mapping[str, Any], where: str) -> tuple[int, ...]:
  """The fixed ``[H, W, C]`` of a TFDS dataset's ``image`` feature, once its features are checked
  to hold ``image`` and ``label``; errors begin with ``where`` (the dataset, as users name it)."""
  missing = [k for k in ("image", "label") if k not in features]
  if missing:
    raise DataError(f"{where} has no {missing} feature(s) (it has {sorted(features.keys())}); "
                    "kdjax reads image classification datasets with 'image' and 'label' features")
  shape = tuple(features["image"].shape)
  if any(d is None for d in shape):
    raise DataError(f"{where} has images of varying size {shape}; kdjax batches fixed-size "
                    "images only (e.g. cifar10, cifar100, mnist)")
  return shape


class _TfdsSource:
  """Maps a TFDS record to kdjax's ``{'image', 'label'}``; pickles into grain workers."""

  def __init__(self, data_source: Any):
    self.data_source = data_source

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, index: int) -> Mapping[str, Any]:
    record = self.data_source[int(index)]
    return {"image": record["image"], "label": int(record["label"])}


class TfdsDataset(Dataset):
  """A TFDS image-classification dataset with ``image`` (uint8) and ``label`` features.

  The dataset must already be prepared in ``data_dir`` in the ``array_record`` format (random
  access); kdjax never downloads. ``num_classes`` and ``input_shape`` come from the TFDS builder's
  features, the split sizes from the prepared files.

  Args:
    tfds_name: the TFDS name, ``'cifar100'`` or ``'<dataset>/<config>'``.
    data_dir: where the prepared dataset lives; default: ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``.

  Raises:
    DatasetNotPreparedError: the dataset is not prepared in ``data_dir``.
    DataError: unknown dataset or config, unsupported features, or files not readable by random
      access.
  """

  def __init__(self, tfds_name: str, *, data_dir: str | None = None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    self._tfds = tfds
    self.tfds_name = tfds_name
    self.name = f"tfds:{tfds_name.replace('/', ':')}"
    self.data_dir = None if data_dir is None else str(data_dir)
    try:
      self._builder = tfds.builder(tfds_name, data_dir=self.data_dir)
    except ValueError as e:  # DatasetNotFoundError and unknown configs are ValueErrors.
      raise DataError(f"TFDS cannot build '{tfds_name}': {str(e).splitlines()[0]}") from e
    except ImportError as e:  # Some builders need TensorFlow (or another extra) to exist.
      raise DataError(f"TFDS cannot build '{tfds_name}' without an optional package "
                      f"({str(e).splitlines()[-1]}); kdjax reads TFDS without TensorFlow, so "
                      "use an image dataset whose builder does not need it, or install the "
                      "package") from e
    features = self._builder.info.features
    shape = image_shape(features, f"TFDS dataset '{tfds_name}'")
    splits = tuple(self._builder.info.splits.keys())
    eval_split = "test"
    if splits and "test" not in splits:
      eval_split = "validation" if "validation" in splits else next(
          (s for s in splits if s != "train"), "train")
    self._sources: dict[str, _TfdsSource] = {}
    num_train = len(self.source("train"))
    num_eval = len(self.source(eval_split))
    mean, std = KNOWN_STATS.get(tfds_name.split("/")[0], (None, None))
    self._info = DatasetInfo(
        name=self.name, num_classes=int(features["label"].num_classes), input_shape=shape,
        num_train=num_train, num_eval=num_eval, splits=splits or ("train", eval_split),
        eval_split=eval_split, mean=mean, std=std)

  @property
  def info(self) -> DatasetInfo:
    return self._info

  def source(self, split: str) -> _TfdsSource:
    if split not in self._sources:
      try:
        ds = self._tfds.data_source(self.tfds_name, split=split, data_dir=self.data_dir,
                                    download=False)
      except _OPEN_ERRORS as e:
        raise self._open_error(split, e) from e
      self._sources[split] = _TfdsSource(ds)
    return self._sources[split]

  def _open_error(self, split: str, error: Exception) -> DataError:
    root = self._builder.data_dir_root
    build = (f"`tfds build {self.tfds_name} --file_format=array_record --data_dir={root}` on a "
             "machine with network access")
    if not self._builder.is_prepared():
      if self.tfds_name.split("/")[0] == "cifar100":
        # Building it needs TensorFlow; the official archive needs nothing.
        return DatasetNotPreparedError(
            f"TFDS dataset 'cifar100' is not prepared in {root}; download "
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and set "
            "config.data.name=cifar100-python:<path to the archive> (no TensorFlow needed), or "
            "set config.data.data_dir to where a prepared tfds cifar100 is")
      return DatasetNotPreparedError(
          f"TFDS dataset '{self.tfds_name}' is not prepared in {root}; run {build} (and copy "
          "the folder here), or set config.data.data_dir to where it is prepared")
    formats = self._builder.info.available_file_formats() or {self._builder.info.file_format}
    random_access = self._tfds.core.file_adapters.FileFormat.with_random_access()
    if not any(f in random_access for f in formats):
      return DataError(
          f"TFDS dataset '{self.tfds_name}' in {root} is stored as "
          f"{sorted(str(getattr(f, 'value', f)) for f in formats)}, which cannot be read by "
          f"index; rebuild it with {build}")
    return DataError(f"cannot open split '{split}' of TFDS dataset '{self.tfds_name}' in {root}: "
                     f"{error}")
