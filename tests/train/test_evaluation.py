"""Evaluation sums and metrics against independent formulas (scikit-learn, a direct ECE)."""
import jax
import numpy as np
import pytest
from sklearn.metrics import f1_score

from kdjax.train import evaluation

C = 7


def outputs(n, seed, teacher=True):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, C, n).astype(np.int32)
  # Predictions right about half the time, so every metric is away from 0 and 1.
  pred = np.where(rng.random(n) < 0.5, labels, rng.integers(0, C, n)).astype(np.int32)
  confidence = rng.uniform(1.0 / C, 1.0, n).astype(np.float32)
  mask = np.ones(n, bool)
  mask[-3:] = False  # padding
  out = {"prediction": pred, "confidence": confidence, "correct": pred == labels,
         "top5": rng.random(n) < 0.8, "mask": mask}
  if teacher:
    t = rng.integers(0, C, n).astype(np.int32)
    out.update(teacher_prediction=t, agreement=pred == t)
  return out, {"label": labels, "mask": mask}


def direct_ece(confidence, correct, bins=evaluation.ECE_BINS):
  total = 0.0
  edges = np.linspace(0, 1, bins + 1)
  for lo, hi in zip(edges[:-1], edges[1:]):
    in_bin = (confidence > lo) & (confidence <= hi)
    if in_bin.any():
      total += in_bin.sum() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
  return total / len(confidence)


def test_metrics_match_independent_formulas():
  out, batch = outputs(64, 0)
  reduce_fn = jax.jit(evaluation.make_reduce_fn(C))
  metrics = evaluation.finalize(evaluation.accumulate(None, reduce_fn(out, batch)))
  real = batch["mask"]
  labels, pred = batch["label"][real], out["prediction"][real]
  assert metrics["count"] == real.sum()
  np.testing.assert_allclose(metrics["accuracy"], np.mean(labels == pred), rtol=1e-12)
  np.testing.assert_allclose(metrics["top5"], np.mean(out["top5"][real]), rtol=1e-12)
  np.testing.assert_allclose(metrics["agreement"], np.mean(out["agreement"][real]), rtol=1e-12)
  np.testing.assert_allclose(metrics["macro_f1"], f1_score(labels, pred, average="macro"),
                             rtol=1e-12)
  np.testing.assert_allclose(metrics["ece"], direct_ece(out["confidence"][real].astype(np.float64),
                                                        (labels == pred).astype(np.float64)),
                             rtol=1e-5)


def test_batching_does_not_change_the_result():
  out, batch = outputs(64, 1, teacher=False)
  reduce_fn = jax.jit(evaluation.make_reduce_fn(C))
  whole = evaluation.finalize(evaluation.accumulate(None, reduce_fn(out, batch)))
  total = None
  for part in np.split(np.arange(64), 4):
    total = evaluation.accumulate(total, reduce_fn({k: v[part] for k, v in out.items()},
                                                   {k: v[part] for k, v in batch.items()}))
  split = evaluation.finalize(total)
  assert "agreement" not in split
  for key in whole:
    np.testing.assert_allclose(split[key], whole[key], rtol=1e-6)


def test_macro_f1_counts_classes_seen_in_labels_or_predictions():
  labels = np.array([0, 0, 1, 2])
  pred = np.array([0, 1, 1, 4])
  confusion = np.zeros((6, 6), np.int64)
  np.add.at(confusion, (labels, pred), 1)
  assert evaluation.macro_f1(confusion) == pytest.approx(f1_score(labels, pred, average="macro"))


def test_perfectly_calibrated_bins_have_zero_ece():
  # Every bin's accuracy equals its confidence: 0.5 confident and right half the time.
  assert evaluation.expected_calibration_error([0] * 7 + [4] + [0] * 7,
                                               [0] * 7 + [2] + [0] * 7,
                                               [0] * 7 + [2.0] + [0] * 7) == 0.0
