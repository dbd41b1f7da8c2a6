"""kdjax report's panels of what transferred (transfer.png), drawn from saved predictions.

Workdirs here are made by the writer functions (:func:`kdjax.train.predictions.save`); the
numbers are checked against independent numpy loops, the figure by its panels' boxes in the PNG
(each must hold a drawing, not a blank area). Real runs: tests/train/test_predictions.py.
"""
import json
import os

import matplotlib.image
import numpy as np
import pytest

from kdjax import report
from kdjax import workdir as contract
from kdjax.train import predictions

RUNS = ("teacher", "student", "student_kd")
K = 10


def _write(path, arrays_of, *, task, num_classes, class_names=None):
  """A finished workdir: results.json naming student_kd's baseline, inputs.json naming its
  teacher, a metrics record per run and each run's predictions.npz."""
  os.makedirs(path)
  results = {}
  for run in RUNS:
    os.makedirs(os.path.join(path, run))
    entry = {"accuracy": 0.5, "model": "m", "model_section": "teacher" if run == "teacher"
             else "student", "time_s": 1.0}
    if class_names:
      entry["class_names"] = list(class_names)
    if run == "student_kd":
      entry["baseline"] = "student"
      contract_inputs = {"models": {"teacher": {"step": 4}}}
      with open(contract.inputs_path(path, run), "w") as f:
        json.dump(contract_inputs, f)
    results[run] = entry
    with open(contract.metrics_path(path, run), "w") as f:
      f.write(json.dumps({"step": 1, "loss": 1.0}) + "\n" + json.dumps({"step": 2, "loss": 0.5}))
    predictions.save(contract.predictions_path(path, run), arrays_of[run], task=task,
                     num_classes=num_classes)
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump(results, f)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"seed": 0}, f)
  return results


def _classification_arrays(seed=0, n=400):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, K, n)
  out = {}
  for run, p_right in zip(RUNS, (0.95, 0.6, 0.8)):
    right = rng.random(n) < p_right
    pred = np.where(right, labels, (labels + rng.integers(1, K, n)) % K)
    # Confidence loosely tied to being right, so the bins are uneven.
    conf = np.clip(np.where(right, rng.uniform(0.5, 1.0, n), rng.uniform(0.1, 0.9, n)), 0.1, 1.0)
    out[run] = {"label": labels.astype(np.int32), "prediction": pred.astype(np.int32),
                "confidence": conf.astype(np.float32)}
  return out


def _check_png(png, panels, titles):
  """The PNG holds every panel: its box inside the image and not blank."""
  assert [p.title for p in panels] == list(titles)
  image = matplotlib.image.imread(png)
  height, width = image.shape[:2]
  for p in panels:
    left, top, right, bottom = p.box
    assert 0 <= left < right <= width and 0 <= top < bottom <= height, (p, image.shape)
    region = image[top:bottom, left:right, :3]
    assert region.std() > 0.02, f"panel {p.title!r} is blank"
  return image


def _ece(confidence, correct, bins=15):
  """Expected calibration error, written out bin by bin: (b/n, (b+1)/n]."""
  total, n = 0.0, len(confidence)
  for b in range(bins):
    lo, hi = b / bins, (b + 1) / bins
    inside = [(c, k) for c, k in zip(confidence, correct) if (lo < c <= hi) or (b == 0 and c <= lo)]
    if inside:
      acc = sum(k for _, k in inside) / len(inside)
      conf = sum(c for c, _ in inside) / len(inside)
      total += len(inside) / n * abs(acc - conf)
  return total


@pytest.fixture(scope="module", name="classification")
def fixture_classification(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("panels") / "cls")
  arrays = _classification_arrays()
  results = _write(path, arrays, task="classification", num_classes=K)
  png, md = report.write_report([path])
  return path, arrays, results, png, md


def test_classification_panels_are_in_the_png(classification):
  path, _, _, png, md = classification
  transfer = os.path.join(path, report.TRANSFER_PNG)
  assert os.path.isfile(transfer) and f"]({report.TRANSFER_PNG})" in open(md).read()
  view = report.load(path)
  panels = report.plot_transfer(path, view.results, view.runs, transfer, view.inputs)
  image = _check_png(transfer, panels, ("per-class accuracy",
                                        "agreement with the teacher by class",
                                        "reliability diagram"))
  assert image.shape[1] >= 1200 and image.shape[0] >= 300  # Three panels side by side.
  # Panels do not overlap.
  boxes = sorted(p.box for p in panels)
  assert all(a[2] <= b[0] for a, b in zip(boxes, boxes[1:]))


def test_the_roles_come_from_the_baseline_and_the_inputs(classification):
  path, _, results, _, _ = classification
  view = report.load(path)
  assert report.roles(results, list(RUNS), view.inputs) == {
      "teacher": "teacher", "student": "alone", "student_kd": "distilled"}


def test_per_class_numbers_equal_numpy_on_the_saved_predictions(classification):
  path, arrays, _, _, md = classification
  saved = {run: contract.read_predictions(contract.predictions_path(path, run)) for run in RUNS}
  for run in RUNS:
    np.testing.assert_array_equal(saved[run]["prediction"], arrays[run]["prediction"])
    assert str(saved[run]["task"]) == "classification" and int(saved[run]["num_classes"]) == K
  labels = arrays["teacher"]["label"]
  rows = {cells[0]: cells[1:] for cells in
          ([c.strip() for c in line.strip("|").split("|")]
           for line in open(md).read().split("## What transferred")[1].splitlines()
           if line.startswith("| ") and not line.startswith("| class"))}
  for c in range(K):
    of_c = [i for i in range(len(labels)) if labels[i] == c]
    for j, run in enumerate(RUNS):
      expected = sum(arrays[run]["prediction"][i] == c for i in of_c) / len(of_c)
      got = report.per_class_accuracy(labels, arrays[run]["prediction"], K)[c]
      assert got == pytest.approx(expected, abs=1e-12)
      assert rows[str(c)][j] == f"{expected:.4f}"
      # Agreement with the teacher among the examples of class c.
      agree = sum(arrays[run]["prediction"][i] == arrays["teacher"]["prediction"][i]
                  for i in of_c) / len(of_c)
      assert report.agreement_by_class(labels, arrays[run]["prediction"],
                                       arrays["teacher"]["prediction"], K)[c] == pytest.approx(
                                           agree, abs=1e-12)
  for j, run in enumerate(RUNS):
    correct = arrays[run]["prediction"] == labels
    ece = _ece(arrays[run]["confidence"].astype(np.float64).tolist(), correct.tolist())
    assert report.reliability(arrays[run]["confidence"], correct)["ece"] == pytest.approx(
        ece, abs=1e-9)
    assert rows["ECE"][j] == f"{ece:.4f}"


def test_the_reliability_bins_hold_what_they_say():
  confidence = np.array([0.05, 0.5, 0.5, 1.0, 0.98, 0.34])
  correct = np.array([0, 1, 0, 1, 1, 0])
  rel = report.reliability(confidence, correct, bins=3)
  # (0, 1/3]: 0.05; (1/3, 2/3]: 0.5, 0.5, 0.34; (2/3, 1]: 1.0, 0.98.
  np.testing.assert_array_equal(rel["count"], [1, 3, 2])
  np.testing.assert_allclose(rel["accuracy"], [0.0, 1 / 3, 1.0])
  np.testing.assert_allclose(rel["confidence"], [0.05, (0.5 + 0.5 + 0.34) / 3, (1.0 + 0.98) / 2])
  assert rel["ece"] == pytest.approx(_ece(confidence.tolist(), correct.tolist(), bins=3))


def _dense_arrays(task, seed=0, n=3):
  rng = np.random.default_rng(seed)
  size = 32
  images = rng.uniform(0, 1, (n, size, size, 1)).astype(np.float32)
  out = {}
  if task == "segmentation":
    label = np.zeros((n, size, size), np.int32)
    label[:, 4:14, 4:12] = 3
    label[:, 18:30, 16:26] = 8
    for i, run in enumerate(RUNS):
      pred = label.copy()
      pred[:, : 4 * i + 2, :] = 5  # A different mistake per run.
      out[run] = {"image": images, "label": label, "prediction": pred}
    return out
  gt_boxes = np.zeros((n, 4, 4), np.float32)
  gt_classes = -np.ones((n, 4), np.int32)
  gt_boxes[:, 0] = [2, 3, 12, 15]
  gt_boxes[:, 1] = [16, 14, 28, 30]
  gt_classes[:, :2] = [[4, 7]] * n
  for i, run in enumerate(RUNS):
    boxes = np.tile(np.array([[2 + i, 3, 12, 15], [16, 14, 28, 30], [0, 0, 5, 5]], np.float32),
                    (n, 1, 1))
    out[run] = {"image": images, "gt_boxes": gt_boxes, "gt_classes": gt_classes, "boxes": boxes,
                "scores": np.tile(np.array([0.9, 0.6 - 0.1 * i, 0.05], np.float32), (n, 1)),
                "classes": np.tile(np.array([4, 7, 1], np.int32), (n, 1))}
  return out


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_dense_overlays_are_in_the_png(tmp_path, task):
  path = str(tmp_path / task)
  names = (["background"] if task == "segmentation" else []) + [str(d) for d in range(10)]
  _write(path, _dense_arrays(task), task=task, num_classes=len(names), class_names=names)
  _, md = report.write_report([path])
  transfer = os.path.join(path, report.TRANSFER_PNG)
  assert f"]({report.TRANSFER_PNG})" in open(md).read()
  view = report.load(path)
  panels = report.plot_transfer(path, view.results, view.runs, transfer, view.inputs)
  columns = ("ground truth", "teacher", "student (alone)", "student_kd (distilled)")
  titles = [f"{c} #{row}" for row in range(3) for c in columns]
  image = _check_png(transfer, panels, titles)
  # Each overlay shows the image under its masks or boxes: the distilled student's panel of an
  # example differs from the ground truth's where its predictions differ.
  first = {p.title: p.box for p in panels}
  gt, kd = first["ground truth #0"], first["student_kd (distilled) #0"]
  crop = lambda b: image[b[1]:b[1] + 150, b[0]:b[0] + 150, :3]
  assert np.abs(crop(gt) - crop(kd)).mean() > 1e-3


def test_a_workdir_without_predictions_has_no_transfer_panels(tmp_path):
  path = str(tmp_path / "w")
  _write(path, _classification_arrays(), task="classification", num_classes=K)
  for run in RUNS:
    os.remove(contract.predictions_path(path, run))
  _, md = report.write_report([path])
  assert not os.path.exists(os.path.join(path, report.TRANSFER_PNG))
  assert "What transferred" not in open(md).read()


def test_an_unreadable_predictions_file_is_named(tmp_path):
  path = str(tmp_path / "w")
  _write(path, _classification_arrays(), task="classification", num_classes=K)
  with open(contract.predictions_path(path, "student"), "wb") as f:
    f.write(b"not an npz")
  with pytest.raises(report.ReportError, match=r"student/predictions.npz.*delete the file"):
    report.write_report([path])
