"""TFDS datasets through tfds.data_source, on TFDS's mock data (no files, no network)."""
import json
import tempfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kdjax import data
from tests import helpers
from tests.data.test_eval import check_covers_split_once
from tests.data.test_train import assert_batches_equal, global_batches, take

NUM_EXAMPLES = 45


@pytest.fixture(name="no_network")
def fixture_no_network(monkeypatch, tmp_path):
  """Any connection attempt fails the test at once; a hang is cut after 60 s."""
  # Building an unprepared TFDS builder leaves an empty temporary folder behind: keep those
  # in pytest's own temporary folder.
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  with helpers.no_network(monkeypatch) as attempts:
    yield attempts


@pytest.fixture(name="mock_tfds")
def fixture_mock_tfds(no_network):
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    yield
  assert not no_network


@pytest.mark.parametrize("name, shape, classes, mean", [
    ("tfds:cifar100", (32, 32, 3), 100, (0.5071, 0.4867, 0.4408)),
    ("tfds:mnist", (28, 28, 1), 10, (0.1307,)),
])
def test_info_from_the_tfds_builder(mock_tfds, name, shape, classes, mean):
  info = data.get_info(name)
  assert (info.name, info.input_shape, info.num_classes) == (name, shape, classes)
  assert (info.num_train, info.num_eval, info.eval_split) == (NUM_EXAMPLES, NUM_EXAMPLES, "test")
  assert info.mean == mean
  example = data.get_dataset(name).source("train")[3]
  assert sorted(example) == ["image", "label"]
  assert example["image"].dtype == np.uint8 and example["image"].shape == shape
  assert isinstance(example["label"], int) and 0 <= example["label"] < classes


@pytest.mark.parametrize("name", ["tfds:cifar100", "tfds:mnist"])
def test_tfds_train_stream_sharding_and_state(mock_tfds, name):
  kwargs = dict(global_batch_size=12, seed=1, augment={"crop_padding": 4, "flip": True,
                                                       "mixup_alpha": 0.2}, standardize=True)
  single_it = data.make_train_iterator(name, **kwargs)
  single = take(single_it, 5)  # 60 > 45 examples: crosses into the second epoch
  assert single[0]["image"].dtype == np.float32 and single[0]["label"].dtype == np.int32
  first_epoch = np.concatenate([b["index"] for b in single])[:NUM_EXAMPLES]
  np.testing.assert_array_equal(np.sort(first_epoch), np.arange(NUM_EXAMPLES))
  slices = [take(data.make_train_iterator(name, process_index=p, process_count=3, **kwargs), 5)
            for p in range(3)]
  assert_batches_equal(global_batches(slices), single)

  state = json.loads(json.dumps(single_it.get_state()))
  expected = take(single_it, 2)
  resumed = [data.make_train_iterator(name, process_index=p, process_count=2, **kwargs)
             for p in range(2)]
  for it in resumed:
    it.set_state(state)
  assert_batches_equal(global_batches([take(it, 2) for it in resumed]), expected)


def test_tfds_eval_covers_each_example_once(mock_tfds):
  dataset = data.get_dataset("tfds:cifar100")
  per_process = [list(data.make_eval_batches(dataset, batch_size=16, process_index=p,
                                             process_count=2)) for p in range(2)]
  merged = [{k: np.concatenate([b[k] for b in step]) for k in step[0]}
            for step in zip(*per_process)]
  check_covers_split_once(merged, dataset, "test", 16)
  assert [int(b["mask"].sum()) for b in merged] == [16, 16, 13]


def test_not_prepared_dataset_raises_before_any_download(no_network, tmp_path):
  with pytest.raises(data.DatasetNotPreparedError) as error:
    data.make_train_iterator("tfds:cifar100", global_batch_size=8, seed=0,
                             data_dir=str(tmp_path))
  message = str(error.value)
  assert "'cifar100' is not prepared in " + str(tmp_path) in message
  # Building cifar100 with tfds needs TensorFlow: the message points to the official archive.
  assert "tfds build" not in message
  assert "config.data.name=cifar100-python:" in message and "cifar-100-python.tar.gz" in message
  assert "config.data.data_dir" in message
  assert isinstance(error.value, data.DataError) and isinstance(error.value, ValueError)
  assert not no_network
  with pytest.raises(data.DatasetNotPreparedError,
                     match="'mnist' is not prepared.*tfds build mnist --file_format=array_record"):
    data.get_info("tfds:mnist", data_dir=str(tmp_path))


def test_unknown_tfds_dataset_or_config(no_network, tmp_path):
  with pytest.raises(data.DataError, match="TFDS cannot build 'no_such_dataset_kdjax'"):
    data.get_info("tfds:no_such_dataset_kdjax", data_dir=str(tmp_path))
  with pytest.raises(data.DataError, match="TFDS cannot build 'cifar100/nope'"):
    data.get_info("tfds:cifar100:nope", data_dir=str(tmp_path))
  with pytest.raises(data.DataError, match="no \\['label'\\] feature"):
    data.get_info("tfds:binarized_mnist", data_dir=str(tmp_path))
  with pytest.raises(data.DataError, match="images of varying size"):
    data.get_info("tfds:imagenet2012", data_dir=str(tmp_path))
  with pytest.raises(data.DataError, match="cannot build 'coco_captions' without an optional"):
    data.get_info("tfds:coco_captions", data_dir=str(tmp_path))


class KdjaxTinyImages(tfds.core.GeneratorBasedBuilder):
  """A tiny image dataset that TFDS prepares on disk without TensorFlow or network."""

  VERSION = tfds.core.Version("1.0.0")
  # No code folder (and so no checksums file): tfds's lookup of it for a builder defined in a
  # test module needs the `importlib_resources` backport.
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        # A Tensor rather than an Image feature: encoding PNGs would need TensorFlow.
        "image": tfds.features.Tensor(shape=(6, 5, 3), dtype=np.uint8),
        "label": tfds.features.ClassLabel(num_classes=4)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(20, 0), "test": self._generate_examples(7, 1)}

  def _generate_examples(self, num_examples, seed):
    rng = np.random.default_rng(seed)
    for i in range(num_examples):
      yield i, {"image": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), "label": i % 4}


@pytest.fixture(name="tiny_dir", scope="module")
def fixture_tiny_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tmp")))
    KdjaxTinyImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return str(data_dir)


def test_prepared_array_record_files(tiny_dir, no_network):
  name = "tfds:kdjax_tiny_images"
  info = data.get_info(name, data_dir=tiny_dir)
  assert (info.num_train, info.num_eval, info.input_shape, info.num_classes) == (20, 7, (6, 5, 3),
                                                                                4)
  assert info.splits == ("train", "test") and info.mean is None
  kwargs = dict(global_batch_size=8, seed=2, augment={"crop_padding": 1, "flip": True},
                data_dir=tiny_dir)
  reference = take(data.make_train_iterator(name, **kwargs), 6)
  np.testing.assert_array_equal(
      np.sort(np.concatenate([b["index"] for b in reference])[:20]), np.arange(20))
  # A worker process reads the real files through the pickled data source; state still resumes.
  with data.make_train_iterator(name, worker_count=1, process_index=1, process_count=2,
                                **kwargs) as it:
    halves = take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
  for got, want in zip(halves, reference):
    np.testing.assert_array_equal(got["image"], want["image"][4:])
  resumed = [data.make_train_iterator(name, process_index=p, process_count=2, **kwargs)
             for p in range(2)]
  for it in resumed:
    it.set_state(state)
  assert_batches_equal(global_batches([take(it, 3) for it in resumed]), reference[3:])
  check_covers_split_once(list(data.make_eval_batches(name, batch_size=4, data_dir=tiny_dir)),
                          data.get_dataset(name, data_dir=tiny_dir), "test", 4)
  with pytest.raises(data.DataError, match="no known per-channel mean/std"):
    data.make_eval_batches(name, batch_size=4, data_dir=tiny_dir, standardize=True)
  with pytest.raises(data.DataError, match="cannot open split 'validation'"):
    data.make_eval_batches(name, batch_size=4, data_dir=tiny_dir, split="validation")
  assert not no_network


def test_files_without_random_access(tiny_dir, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top

  copy = tmp_path / "tfds"
  shutil.copytree(tiny_dir, copy)
  info_file = copy / "kdjax_tiny_images" / "1.0.0" / "dataset_info.json"
  info_file.write_text(info_file.read_text().replace('"array_record"', '"tfrecord"'))
  with pytest.raises(data.DataError, match="stored as \\['tfrecord'\\].*--file_format="
                                           "array_record") as error:
    data.get_info("tfds:kdjax_tiny_images", data_dir=str(copy))
  assert not isinstance(error.value, data.DatasetNotPreparedError)
