"""Dataset names -> datasets."""
from __future__ import annotations

from kdjax.data._base import DataError, Dataset, DatasetInfo
from kdjax.data._builtin import SyntheticDataset, digits
from kdjax.data._tfds import TfdsDataset, parse_tfds_name

_BUILTIN = {"digits": digits, "synthetic": SyntheticDataset}


def available_datasets() -> tuple[str, ...]:
  """The names :func:`get_dataset` accepts (``tfds:`` takes any prepared TFDS image dataset)."""
  return (*_BUILTIN, "tfds:<dataset>[:<config>]")


def get_dataset(name: str | Dataset, *, data_dir: str | None = None) -> Dataset:
  """The dataset called ``name``; a :class:`Dataset` instance is returned as is.

  Args:
    name: ``'digits'`` (bundled with scikit-learn, offline), ``'synthetic'`` (generated; build a
      :class:`SyntheticDataset` for other shapes), or ``'tfds:<dataset>[:<config>]'`` (e.g.
      ``'tfds:cifar100'``, prepared on disk beforehand).
    data_dir: TFDS data directory (ignored by the built-in datasets).

  Raises:
    DataError: unknown name (the message lists the available ones).
    DatasetNotPreparedError: a TFDS dataset that is not prepared in ``data_dir``.
  """
  if isinstance(name, Dataset):
    return name
  if not isinstance(name, str):
    raise DataError(f"a dataset is named by a string or given as a kdjax.data.Dataset, got "
                    f"{type(name).__name__}")
  if name in _BUILTIN:
    return _BUILTIN[name]()
  if name.startswith("tfds:"):
    return TfdsDataset(parse_tfds_name(name), data_dir=data_dir)
  raise DataError(f"unknown dataset '{name}'; available: {', '.join(available_datasets())}")


def get_info(name: str | Dataset, *, data_dir: str | None = None) -> DatasetInfo:
  """The :class:`DatasetInfo` of ``name`` (see :func:`get_dataset` for the names)."""
  return get_dataset(name, data_dir=data_dir).info
