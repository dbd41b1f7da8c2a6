"""Training stream: order and augmentation independent of the process count, seeds, epochs,
augmentation, checkpointable state (also with grain worker processes) and errors."""
import itertools
import json

import numpy as np
import pytest

from kdjax import data
from kdjax.data import _augment

AUG = {"crop_padding": 2, "flip": True, "mixup_alpha": 0.4}


def take(it, steps):
  return [next(it) for _ in range(steps)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def global_batches(per_process):
  """Concatenates, step by step, the slices of all processes."""
  return [{k: np.concatenate([s[k] for s in slices]) for k in slices[0]}
          for slices in zip(*per_process)]


def raw_images(dataset, split, indices):
  source = dataset.source(split)
  return np.stack([_augment.to_float(source[int(i)]["image"]) for i in indices])


def test_batch_layout():
  it = data.make_train_iterator("digits", global_batch_size=12, seed=0, process_index=1,
                                process_count=3)
  batch = next(it)
  assert sorted(batch) == ["image", "index", "label"]
  assert batch["image"].shape == (4, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int32
  assert it.local_batch_size == 4 and it.global_batch_size == 12
  assert it.steps_per_epoch == pytest.approx(1438 / 12)
  ds = data.get_dataset("digits")
  np.testing.assert_array_equal(batch["image"], raw_images(ds, "train", batch["index"]))
  labels = [ds.source("train")[int(i)]["label"] for i in batch["index"]]
  np.testing.assert_array_equal(batch["label"], labels)


@pytest.mark.parametrize("augment", [None, AUG, {"cutmix_alpha": 1.0, "flip": True}])
def test_process_slices_concatenate_to_the_single_process_batch(augment):
  kwargs = dict(global_batch_size=16, seed=3, augment=augment, standardize=True)
  steps = 4
  single = take(data.make_train_iterator("digits", **kwargs), steps)
  for count in (2, 4):
    slices = [take(data.make_train_iterator("digits", process_index=p, process_count=count,
                                            **kwargs), steps) for p in range(count)]
    for s in slices:
      assert s[0]["image"].shape[0] == 16 // count
    assert_batches_equal(global_batches(slices), single)


def test_same_seed_same_stream_different_seed_different_order():
  a = take(data.make_train_iterator("digits", global_batch_size=32, seed=5, augment=AUG), 3)
  b = take(data.make_train_iterator("digits", global_batch_size=32, seed=5, augment=AUG), 3)
  c = take(data.make_train_iterator("digits", global_batch_size=32, seed=6, augment=AUG), 3)
  assert_batches_equal(a, b)
  assert not np.array_equal(a[0]["index"], c[0]["index"])


def test_every_index_once_per_epoch_and_epochs_reshuffled():
  n, batch = 1438, 64
  it = data.make_train_iterator("digits", global_batch_size=batch, seed=0)
  stream = np.concatenate([b["index"] for b in take(it, -(-2 * n // batch))])
  first, second = stream[:n], stream[n:2 * n]
  np.testing.assert_array_equal(np.sort(first), np.arange(n))
  np.testing.assert_array_equal(np.sort(second), np.arange(n))
  assert not np.array_equal(first, second)
  assert not np.array_equal(first, np.arange(n))


def test_crop_and_flip_views():
  ds = data.get_dataset("digits")
  kwargs = dict(global_batch_size=64, seed=1)
  plain = next(data.make_train_iterator("digits", **kwargs))
  aug = next(data.make_train_iterator("digits", augment={"crop_padding": 2, "flip": True},
                                      **kwargs))
  again = next(data.make_train_iterator("digits", augment={"crop_padding": 2, "flip": True},
                                        **kwargs))
  np.testing.assert_array_equal(aug["index"], plain["index"])  # augmentation keeps the order
  np.testing.assert_array_equal(aug["image"], again["image"])
  originals = raw_images(ds, "train", plain["index"])
  np.testing.assert_array_equal(plain["image"], originals)  # no augmentation: identity
  padded = np.pad(originals, ((0, 0), (2, 2), (2, 2), (0, 0)))
  changed = flipped = 0
  for i in range(64):
    views = [(dy, dx, f) for dy, dx, f in itertools.product(range(5), range(5), (False, True))
             if np.array_equal(aug["image"][i], (lambda v: v[:, ::-1] if f else v)(
                 padded[i, dy:dy + 8, dx:dx + 8]))]
    assert views, f"row {i} is not a padded crop / flip of its example"
    changed += not np.array_equal(aug["image"][i], originals[i])
    flipped += all(f for _, _, f in views)
  assert changed > 32 and 8 < flipped < 56


def test_views_depend_on_seed_and_stream_position():
  n = 1438
  it = data.make_train_iterator("digits", global_batch_size=n, seed=2,
                                augment={"crop_padding": 2, "flip": True})
  epoch0, epoch1 = next(it), next(it)
  other_seed = next(data.make_train_iterator("digits", global_batch_size=n, seed=4,
                                             augment={"crop_padding": 2, "flip": True}))
  by_index = lambda b: b["image"][np.argsort(b["index"])]
  # The same example gets a new view in each epoch and under another seed.
  assert np.mean(np.any(by_index(epoch0) != by_index(epoch1), axis=(1, 2, 3))) > 0.5
  assert np.mean(np.any(by_index(epoch0) != by_index(other_seed), axis=(1, 2, 3))) > 0.5


def test_options_do_not_shift_each_others_draws():
  positions = np.arange(100, 164)
  flip_only = _augment.draw_views(3, positions, _augment.AugmentOptions(flip=True))
  crop_only = _augment.draw_views(3, positions, _augment.AugmentOptions(crop_padding=4))
  everything = _augment.draw_views(3, positions, _augment.AugmentOptions(
      crop_padding=4, flip=True, mixup_alpha=0.3))
  np.testing.assert_array_equal(flip_only.flips, everything.flips)
  np.testing.assert_array_equal(crop_only.offsets, everything.offsets)
  assert 0 < flip_only.flips.sum() < 64
  assert everything.offsets.min() == 0 and everything.offsets.max() == 8


def test_mixup_blends_two_examples_of_the_global_batch():
  ds = data.get_dataset("digits")
  kwargs = dict(global_batch_size=16, seed=0, augment={"mixup_alpha": 0.4})
  halves = [next(data.make_train_iterator("digits", process_index=p, process_count=2, **kwargs))
            for p in range(2)]
  full = global_batches([[h] for h in halves])[0]
  lam = full["mix_lambda"]
  assert lam.dtype == np.float32 and full["label_mix"].dtype == np.int32
  assert np.all((lam >= 0) & (lam <= 1)) and np.any((lam > 0.05) & (lam < 0.95))
  own = raw_images(ds, "train", full["index"])
  for i, row in enumerate(full["image"]):
    # Some row j of the same global batch is the partner: image = lam x_i + (1 - lam) x_j.
    partners = [j for j in range(16) if full["label"][j] == full["label_mix"][i] and np.allclose(
        row, lam[i] * own[i] + (1 - lam[i]) * own[j], atol=1e-6)]
    assert partners, f"row {i} is not a mixup of two rows of the global batch"


def test_cutmix_pastes_a_box_and_lambda_is_the_pixel_share():
  kwargs = dict(global_batch_size=32, seed=0)
  plain = next(data.make_train_iterator("digits", **kwargs))
  cut = next(data.make_train_iterator("digits", augment={"cutmix_alpha": 1.0}, **kwargs))
  lam = cut["mix_lambda"]
  assert np.all((lam >= 0) & (lam <= 1)) and np.any(lam < 1)
  own = plain["image"]
  for i in range(32):
    kept = np.all(cut["image"][i] == own[i], axis=-1).mean()
    assert kept >= lam[i] - 1e-6  # a pasted pixel may equal the original by chance


def test_state_round_trips_through_json():
  kwargs = dict(global_batch_size=24, seed=9, augment=AUG)
  it = data.make_train_iterator("digits", **kwargs)
  take(it, 5)
  state = json.loads(json.dumps(it.get_state()))
  assert state["step"] == 5
  expected = take(it, 3)
  fresh = data.make_train_iterator("digits", **kwargs)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 3), expected)
  # The state is the global step, so it resumes under another process count as well.
  slices = []
  for p in range(2):
    part = data.make_train_iterator("digits", process_index=p, process_count=2, **kwargs)
    part.set_state(state)
    slices.append(take(part, 3))
  assert_batches_equal(global_batches(slices), expected)


def test_state_with_worker_processes():
  kwargs = dict(global_batch_size=16, seed=4, augment={"crop_padding": 1, "flip": True})
  reference = take(data.make_train_iterator("digits", **kwargs), 6)
  with data.make_train_iterator("digits", worker_count=2, **kwargs) as it:
    assert_batches_equal(take(it, 3), reference[:3])
    state = json.loads(json.dumps(it.get_state()))
    assert_batches_equal(take(it, 1), reference[3:4])
    it.set_state(state)  # rewinds, restarting the workers
    assert_batches_equal(take(it, 3), reference[3:])
  resumed = data.make_train_iterator("digits", **kwargs)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 3), reference[3:])


def test_state_from_another_config_is_refused():
  it = data.make_train_iterator("digits", global_batch_size=8, seed=0)
  next(it)
  other = data.make_train_iterator("digits", global_batch_size=8, seed=1)
  with pytest.raises(data.DataError, match="seed=0 but this iterator has seed=1"):
    other.set_state(it.get_state())
  with pytest.raises(data.DataError, match="not a kdjax training iterator state"):
    other.set_state({"next_index": 3})


def test_batch_size_must_divide_over_processes():
  with pytest.raises(data.DataError, match=r"global_batch_size=10 is not divisible by "
                                           r"process_count=4.*multiple of 4 \(e.g. 8 or 12\)"):
    data.make_train_iterator("digits", global_batch_size=10, seed=0, process_count=4)
  with pytest.raises(data.DataError, match="not divisible"):
    data.make_eval_batches("digits", batch_size=6, process_count=4)
  with pytest.raises(data.DataError, match="process_index"):
    data.make_train_iterator("digits", global_batch_size=8, seed=0, process_index=2,
                             process_count=2)


def test_bad_options_are_refused():
  with pytest.raises(data.DataError, match="unknown augment option.*'crop'"):
    data.make_train_iterator("digits", global_batch_size=8, seed=0, augment={"crop": 4})
  with pytest.raises(data.DataError, match="set one of them to 0"):
    data.make_train_iterator("digits", global_batch_size=8, seed=0,
                             augment={"mixup_alpha": 1.0, "cutmix_alpha": 1.0})
  with pytest.raises(data.DataError, match="seed must be"):
    data.make_train_iterator("digits", global_batch_size=8, seed=-1)


def test_augment_accepts_a_config_dict():
  import ml_collections  # pylint: disable=g-import-not-at-top

  config = ml_collections.ConfigDict({"crop_padding": 2, "flip": True, "mixup_alpha": 0.0})
  a = next(data.make_train_iterator("digits", global_batch_size=8, seed=0, augment=config))
  b = next(data.make_train_iterator("digits", global_batch_size=8, seed=0,
                                    augment=data.AugmentOptions(crop_padding=2, flip=True)))
  np.testing.assert_array_equal(a["image"], b["image"])


def test_standardize():
  kwargs = dict(global_batch_size=8, seed=0)
  info = data.get_info("digits")
  raw = next(data.make_train_iterator("digits", **kwargs))
  std = next(data.make_train_iterator("digits", standardize=True, **kwargs))
  np.testing.assert_allclose(std["image"], (raw["image"] - info.mean[0]) / info.std[0],
                             rtol=1e-5, atol=1e-6)

  class NoStats(data.Dataset):
    info = data.DatasetInfo("nostats", 2, (8, 8, 1), 1438, 359)

    def source(self, split):
      return data.get_dataset("digits").source(split)

  with pytest.raises(data.DataError, match="no known per-channel mean/std; set standardize"):
    data.make_train_iterator(NoStats(), standardize=True, **kwargs)
