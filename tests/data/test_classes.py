"""Classes come from the training split; labels and pixels that would silently change the model are
one-line errors naming the label (or image), its split and its file (npz:, idx:, folder:)."""
import os

import numpy as np
import pytest

from kdjax import data
from tests.data.test_files import write_idx

PIL = pytest.importorskip("PIL.Image")


def _images(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 1), dtype=np.uint8)


def _npz(path, train_labels, test_labels, **extra):
  train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
  np.savez(path, train_images=_images(len(train_labels)), train_labels=train_labels,
           test_images=_images(len(test_labels), 1), test_labels=test_labels, **extra)
  return f"npz:{path}"


def error(name):
  with pytest.raises(data.DataError) as e:
    data.get_dataset(name)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_npz_classes_from_the_training_split(tmp_path):
  path = str(tmp_path / "d.npz")
  ok = _npz(path, [0, 1, 2, 0, 1, 2], [2, 1, 0])
  assert data.get_info(ok).num_classes == 3
  # One stray train label of 99 would make a 100-class model.
  message = error(_npz(path, [0, 1, 2, 0, 99, 2], [2, 1, 0]))
  assert path in message and "skip 3..98" in message and "99 (first at train example 4)" in message
  assert "class_names" in message
  # One test label of 12 would make a 13-class model.
  message = error(_npz(path, [0, 1, 2, 0, 1, 2], [2, 12, 0]))
  assert "test label 12 (example 1) is not a training class" in message and path in message
  # A class seen in train only.
  message = error(_npz(path, [0, 1, 2, 0, 1, 2], [0, 1, 0]))
  assert "class 2 appears in train but not in test" in message
  # A single class.
  assert "every training label is 4" in error(_npz(path, [4, 4, 4], [4]))
  # Declared classes: the test split may lack some, but no label may exceed them.
  names = np.array(["a", "b", "c", "d"])
  assert data.get_info(_npz(path, [0, 1, 2, 0], [1, 1], class_names=names)).num_classes == 4
  message = error(_npz(path, [0, 1, 2, 0], [1, 5], class_names=names))
  assert "test label 5 (example 1) is outside the 4 classes" in message


def test_npz_nan_and_inf_pixels_are_refused(tmp_path):
  path = str(tmp_path / "f.npz")
  images = np.full((4, 4, 4, 1), 0.5, np.float32)
  images[2, 1, 1, 0] = np.nan
  np.savez(path, train_images=images, train_labels=np.array([0, 1, 0, 1]))
  message = error(f"npz:{path}")
  assert "split 'train': image 2 has NaN pixels" in message and path in message
  images[2, 1, 1, 0] = np.inf
  np.savez(path, train_images=images, train_labels=np.array([0, 1, 0, 1]))
  assert "image 2 has infinite pixels" in error(f"npz:{path}")


def test_idx_test_label_outside_the_training_classes(tmp_path):
  root = str(tmp_path)
  for prefix, labels in (("train", [0, 1, 2, 0, 1, 2]), ("t10k", [0, 1, 7])):
    write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte"), _images(len(labels))[..., 0])
    write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte"), np.array(labels))
  message = error(f"idx:{root}")
  assert "test label 7 (example 2) is not a training class" in message and root in message


def _png(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  PIL.fromarray(np.zeros((4, 4), np.uint8)).save(path)


def test_folder_single_class(tmp_path):
  for split in ("train", "test"):
    _png(str(tmp_path / split / "cat" / "0.png"))
  message = error(f"folder:{tmp_path}")
  assert "one class folder ('cat')" in message and str(tmp_path / "train") in message


def test_folder_class_layout_splits_by_a_seeded_fraction(tmp_path):
  root = tmp_path / "flowers"
  for cls, n in (("daisy", 10), ("rose", 20), ("tulip", 1)):
    for i in range(n):
      _png(str(root / cls / f"{i:02d}.png"))
  dataset = data.get_dataset(f"folder:{root}")
  info = dataset.info
  assert info.class_names == ("daisy", "rose", "tulip") and info.splits == ("train", "test")
  test, train = dataset.source("test"), dataset.source("train")
  assert (len(train), len(test)) == (1 + 9 + 18, 1 + 2)  # 10% of each class, none of a single one
  assert sorted(test.labels.tolist()) == [0, 1, 1]
  assert not set(test.paths) & set(train.paths)
  again = data.FolderDataset(str(root))
  assert again.source("test").paths == test.paths  # the same split every time
  other = data.FolderDataset(str(root), split_seed=1, eval_fraction=0.5)
  assert len(other.source("test")) == 5 + 10
  single = tmp_path / "one"
  _png(str(single / "cat" / "0.png"))
  assert "one class folder ('cat')" in error(f"folder:{single}")
