"""Evaluation batches: the whole split once, in order, padded, sliced per process."""
import numpy as np
import pytest

from kdjax import data


def check_covers_split_once(batches, dataset, split, batch_size):
  """Every example exactly once, in order, at full batch size; padding masked out."""
  source = dataset.source(split)
  n = len(source)
  assert len(batches) == -(-n // batch_size)
  seen = []
  for batch in batches:
    assert batch["image"].shape[0] == batch_size and batch["mask"].dtype == bool
    real = batch["mask"]
    seen.extend(batch["index"][real].tolist())
    assert np.all(batch["index"][~real] == -1) and np.all(batch["image"][~real] == 0)
    for row in np.flatnonzero(real)[:3]:
      example = source[int(batch["index"][row])]
      np.testing.assert_allclose(batch["image"][row],
                                 np.asarray(example["image"], np.float32) / (
                                     255.0 if example["image"].dtype == np.uint8 else 1.0))
      assert batch["label"][row] == example["label"]
  assert seen == list(range(n))


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_eval_covers_each_example_once(process_count):
  dataset = data.get_dataset("digits")
  per_process = [list(data.make_eval_batches("digits", batch_size=96, process_index=p,
                                             process_count=process_count))
                 for p in range(process_count)]
  assert len({len(b) for b in per_process}) == 1  # every process runs the same number of steps
  for batches in per_process:
    assert all(b["image"].shape == (96 // process_count, 8, 8, 1) for b in batches)
  merged = [{k: np.concatenate([b[k] for b in step]) for k in step[0]}
            for step in zip(*per_process)]
  check_covers_split_once(merged, dataset, "test", 96)
  assert merged[-1]["mask"].sum() == 359 - 3 * 96


def test_eval_batches_are_reiterable_and_deterministic():
  batches = data.make_eval_batches("digits", batch_size=128, split="train")
  assert batches.num_examples == 1438 and batches.info.name == "digits"
  first, second = list(batches), list(batches)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a["image"], b["image"])
  assert len(first) == len(batches) == 12


def test_eval_standardize_and_exact_multiple():
  dataset = data.SyntheticDataset((4, 4, 3), num_classes=3, num_train=20, num_eval=16)
  plain = list(data.make_eval_batches(dataset, batch_size=8))
  assert len(plain) == 2 and all(b["mask"].all() for b in plain)
  std = list(data.make_eval_batches(dataset, batch_size=8, standardize=True))
  mean, sd = np.asarray(dataset.info.mean), np.asarray(dataset.info.std)
  np.testing.assert_allclose(std[1]["image"], (plain[1]["image"] - mean) / sd, rtol=1e-5,
                             atol=1e-6)
