"""Dataset names -> datasets."""
from __future__ import annotations

import functools
import os

from kdjax.data import _cifar
from kdjax.data import _files
from kdjax.data._base import DataError, Dataset, DatasetInfo
from kdjax.data._builtin import SyntheticDataset, digits
from kdjax.data._dense_digits import det_digits, seg_digits
from kdjax.data._tfds import TfdsDataset, parse_tfds_name

_BUILTIN = {"digits": digits, "synthetic": SyntheticDataset,
            "seg_digits": seg_digits,  # 32x32 digit canvases with class maps (segmentation)
            "det_digits": det_digits}  # 48x48 digit canvases with boxes (detection)
# Datasets read from a path, named '<prefix>:<path>'.
_FILE_PREFIXES = ("folder", "npz", "idx", "tfds-dir", "cifar100-python")


def available_datasets() -> tuple[str, ...]:
  """The names :func:`get_dataset` accepts (``tfds:`` takes any prepared TFDS image dataset)."""
  return (*_BUILTIN, "tfds:<dataset>[:<config>]", "folder:<dir>", "npz:<file>", "idx:<dir>",
          "tfds-dir:<dir>", "cifar100-python:<archive or dir>[:coarse]")


@functools.lru_cache(maxsize=8)
def _file_dataset(name: str, prefix: str, path: str, image_size: tuple[int, int] | None,
                  modified: int) -> Dataset:
  """Reads a path once per process; a file or folder modified since is read again."""
  del modified  # Only part of the cache key.
  # Imported here: the folder reader needs Pillow, the TFDS reader imports tensorflow_datasets.
  from kdjax.data import _folder, _tfds_dir  # pylint: disable=g-import-not-at-top

  if prefix == "cifar100-python":
    return _cifar.load_cifar100_python(name, *_cifar.parse_name(path))
  if prefix == "folder":
    return _folder.FolderDataset(path, image_size=image_size, name=name)
  if prefix == "npz":
    return _files.load_npz(name, path)
  if prefix == "idx":
    return _files.load_idx(name, path)
  return _tfds_dir.TfdsDirDataset(path, name=name)


def _file_dataset_by_name(name: str, image_size) -> Dataset | None:
  prefix, _, path = name.partition(":")
  if prefix not in _FILE_PREFIXES:
    return None
  if not path:
    raise DataError(f"dataset name '{name}' names no path; write '{prefix}:<path>', e.g. "
                    f"'{prefix}:/data/my_dataset'")
  option = ""
  if prefix == "cifar100-python":  # '<path>[:fine|:coarse]'
    path, labels = _cifar.parse_name(path)
    option = f":{labels}"
  path = os.path.abspath(os.path.expanduser(path))
  if image_size is not None:
    size = tuple(int(d) for d in image_size) if not isinstance(image_size, int) else (
        image_size, image_size)
    if len(size) != 2 or min(size) < 1:
      raise DataError(f"image_size must be (height, width) or one int, got {image_size!r}")
    image_size = size
  try:
    modified = os.stat(path).st_mtime_ns
  except OSError:
    modified = -1
  return _file_dataset(name, prefix, path + option, image_size, modified)


def get_dataset(name: str | Dataset, *, data_dir: str | None = None,
                image_size: int | tuple[int, int] | None = None) -> Dataset:
  """The dataset called ``name``; a :class:`Dataset` instance is returned as is.

  Args:
    name: ``'digits'`` (bundled with scikit-learn, offline), ``'synthetic'`` (generated; build a
      :class:`SyntheticDataset` for other shapes), ``'tfds:<dataset>[:<config>]'`` (e.g.
      ``'tfds:cifar100'``, prepared on disk beforehand), or the user's own files:
      ``'folder:<dir>'`` (``<dir>/<split>/<class>/<image>``, or ``<dir>/<class>/<image>`` split
      by a seeded 10% per class; PNG/JPEG; needs Pillow),
      ``'npz:<file>'`` (``<split>_images [N, H, W, C]``, ``<split>_labels [N]``),
      ``'idx:<dir>'`` (MNIST / Fashion-MNIST / KMNIST IDX files) or ``'tfds-dir:<dir>'`` (a
      TFDS dataset directory, read with ``tfds.builder_from_directory``), or
      ``'cifar100-python:<path>[:coarse]'`` (the official ``cifar-100-python.tar.gz`` or its
      extracted folder; fine labels unless ``:coarse``). A path dataset is
      read once per process (again when the path's modification time changes).
    data_dir: TFDS data directory (ignored by the other datasets).
    image_size: ``folder:`` only: resize every image to ``(height, width)`` (one int: square);
      default: the size of the first training image.

  Raises:
    DataError: unknown name (the message lists the available ones), or files that cannot be
      read as the named kind (the message names the file or folder and what was expected).
    DatasetNotPreparedError: a TFDS dataset that is not prepared in ``data_dir``.
  """
  if isinstance(name, Dataset):
    return name
  if not isinstance(name, str):
    raise DataError(f"a dataset is named by a string or given as a kdjax.data.Dataset, got "
                    f"{type(name).__name__}")
  if image_size is not None and not name.startswith("folder:"):
    raise DataError(f"image_size applies to folder:<dir> datasets only, not to '{name}', whose "
                    "images keep their stored size; leave image_size unset")
  if name in _BUILTIN:
    return _BUILTIN[name]()
  if name.startswith("tfds:"):
    return TfdsDataset(parse_tfds_name(name), data_dir=data_dir)
  dataset = _file_dataset_by_name(name, image_size)
  if dataset is not None:
    return dataset
  raise DataError(f"unknown dataset '{name}'; available: {', '.join(available_datasets())}")


def get_info(name: str | Dataset, *, data_dir: str | None = None,
             image_size: int | tuple[int, int] | None = None) -> DatasetInfo:
  """The :class:`DatasetInfo` of ``name`` (see :func:`get_dataset` for the names)."""
  return get_dataset(name, data_dir=data_dir, image_size=image_size).info
