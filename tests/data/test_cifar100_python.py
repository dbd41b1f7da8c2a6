"""cifar100-python:<path>: the official CIFAR-100 Python archive, written here in its format.

The archive is a tar.gz of ``cifar-100-python/{train,test,meta}``, each a pickled dict with byte
string keys: ``data`` uint8 [N, 3072] (the R, G and B 32x32 planes of each image), ``fine_labels``
and ``coarse_labels`` lists, and in ``meta`` the ``fine_label_names`` / ``coarse_label_names``.
"""
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from kdjax import data
from kdjax.data import _tfds

FINE = [f"fine_{i}".encode() for i in range(100)]
COARSE = [f"coarse_{i}".encode() for i in range(20)]


def _record(n, seed):
  rng = np.random.default_rng(seed)
  fine = rng.integers(0, 100, n)
  return {b"batch_label": b"training batch 1 of 1", b"filenames": [b"x.png"] * n,
          b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
          b"fine_labels": [int(v) for v in fine], b"coarse_labels": [int(v) // 5 for v in fine]}


def write_cifar100(root, n_train=12, n_test=6, *, extracted=False, members=None):
  members = members or {"train": _record(n_train, 0), "test": _record(n_test, 1),
                        "meta": {b"fine_label_names": FINE, b"coarse_label_names": COARSE}}
  blobs = {k: v if isinstance(v, bytes) else pickle.dumps(v, protocol=2)
           for k, v in members.items()}
  if extracted:
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    for k, blob in blobs.items():
      with open(os.path.join(folder, k), "wb") as f:
        f.write(blob)
    return folder, members
  path = os.path.join(root, "cifar-100-python.tar.gz")
  with tarfile.open(path, "w:gz") as tar:
    for k, blob in blobs.items():
      info = tarfile.TarInfo(f"cifar-100-python/{k}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return path, members


def error(name):
  with pytest.raises(data.DataError) as e:
    data.get_dataset(name)
  assert "\n" not in str(e.value)
  return str(e.value)


@pytest.mark.parametrize("extracted", [False, True])
def test_reads_images_labels_and_names(tmp_path, extracted):
  path, members = write_cifar100(str(tmp_path), extracted=extracted)
  for name in (f"cifar100-python:{path}", f"cifar100-python:{tmp_path}"):
    dataset = data.get_dataset(name)
    info = dataset.info
    assert (info.num_classes, info.input_shape, info.num_train, info.num_eval) == (
        100, (32, 32, 3), 12, 6)
    assert info.class_names[7] == "fine_7"
    assert (info.mean, info.std) == _tfds.KNOWN_STATS["cifar100"]
    for split in ("train", "test"):
      record = members[split]
      example = dataset.source(split)[4]
      row = record[b"data"][4]
      # Pixel (y, x) of channel c is row[c * 1024 + y * 32 + x].
      for y, x, c in ((0, 0, 0), (3, 17, 1), (31, 31, 2)):
        assert example["image"][y, x, c] == row[c * 1024 + y * 32 + x]
      assert example["image"].dtype == np.uint8
      assert example["label"] == record[b"fine_labels"][4]


def test_coarse_labels(tmp_path):
  path, members = write_cifar100(str(tmp_path))
  dataset = data.get_dataset(f"cifar100-python:{path}:coarse")
  assert dataset.info.num_classes == 20 and dataset.info.class_names[3] == "coarse_3"
  assert dataset.source("test")[2]["label"] == members["test"][b"coarse_labels"][2]
  assert data.get_dataset(f"cifar100-python:{path}:fine").info.num_classes == 100


def test_pipeline_runs_on_it(tmp_path):
  path, _ = write_cifar100(str(tmp_path))
  it = data.make_train_iterator(f"cifar100-python:{path}", global_batch_size=4, seed=0,
                                standardize=True, augment={"crop_padding": 4, "flip": True})
  batch = next(it)
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32


def test_errors(tmp_path):
  assert "cifar-100-python.tar.gz" in error(f"cifar100-python:{tmp_path}/nowhere.tar.gz")
  assert "www.cs.toronto.edu" in error(f"cifar100-python:{tmp_path}/nowhere.tar.gz")
  (tmp_path / "junk.tar.gz").write_bytes(b"junk")
  assert "cannot read" in error(f"cifar100-python:{tmp_path}/junk.tar.gz")
  bad = tmp_path / "bad"
  bad.mkdir()
  path, _ = write_cifar100(str(bad), members={
      "train": _record(4, 0), "test": _record(2, 1),
      "meta": pickle.dumps({b"fine_label_names": FINE, b"payload": Exploit()}, protocol=2)})
  message = error(f"cifar100-python:{path}")
  assert "is not a CIFAR-100 pickle" in message and "refers to" in message and "system" in message


class Exploit:
  def __reduce__(self):
    return (os.system, ("echo should never run",))
