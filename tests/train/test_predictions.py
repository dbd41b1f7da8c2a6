"""Each run saves its final predictions (``<run>/predictions.npz``) and the report draws them.

The tiny pipeline of tests/train/conftest.py (``reference``, shared, read only) is checked
against the dataset and the runs' own results; the dense tasks' predictions against the student
applied directly; the latency of an exported student in onnxruntime.
"""
import os

import jax
import numpy as np
import pytest

from kdjax import data, parallel, report
from kdjax import workdir as contract
from kdjax.train import predictions

RUNS = ("teacher", "student", "student_kd")


def _eval_labels():
  labels = []
  for batch in data.make_eval_batches("digits", batch_size=368):
    labels.append(np.asarray(batch["label"])[np.asarray(batch["mask"], bool)])
  return np.concatenate(labels)


def test_every_run_saves_its_final_predictions(reference):
  workdir, results = reference
  labels = _eval_labels()
  saved = {}
  for run in RUNS:
    p = contract.read_predictions(contract.predictions_path(workdir, run))
    assert p is not None, f"{run} saved no predictions"
    assert str(p["task"]) == "classification" and int(p["num_classes"]) == 10
    np.testing.assert_array_equal(p["label"], labels)  # Every example, in the split's order.
    assert p["prediction"].shape == labels.shape and p["confidence"].dtype == np.float32
    assert np.all((p["confidence"] > 0) & (p["confidence"] <= 1))
    correct = p["prediction"] == p["label"]
    # The same model as the run's final evaluation: its accuracy and ECE, recomputed.
    assert correct.mean() == pytest.approx(results[run]["accuracy"], abs=1e-12)
    assert report.reliability(p["confidence"], correct)["ece"] == pytest.approx(
        results[run]["ece"], abs=1e-6)
    saved[run] = p
  # The distilled run's agreement with its teacher, from the two runs' saved predictions.
  agree = np.mean(saved["student_kd"]["prediction"] == saved["teacher"]["prediction"])
  assert agree == pytest.approx(results["student_kd"]["agreement"], abs=1e-12)


def test_the_report_of_a_real_run_draws_the_panels(reference, tmp_path):
  workdir, _ = reference
  png, md = report.write_report([workdir], out=str(tmp_path))
  transfer = os.path.join(str(tmp_path), report.TRANSFER_PNG)
  assert os.path.isfile(png) and os.path.isfile(transfer)
  text = open(md).read()
  assert "## What transferred" in text and f"]({report.TRANSFER_PNG})" in text
  view = report.load(workdir)
  panels = report.plot_transfer(workdir, view.results, view.runs, str(tmp_path / "again.png"),
                                view.inputs)
  assert [p.title for p in panels] == ["per-class accuracy", "agreement with the teacher by class",
                                       "reliability diagram"]
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  image = matplotlib.image.imread(str(tmp_path / "again.png"))
  for p in panels:
    left, top, right, bottom = p.box
    assert image[top:bottom, left:right, :3].std() > 0.02, p.title


@pytest.mark.slow  # A dense teacher and student built and compiled (about 15 s of CPU each).
@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_dense_predictions_are_the_students_own(task):
  from tests.dense import test_engine  # pylint: disable=g-import-not-at-top
  state = test_engine._state(task)  # pylint: disable=protected-access
  runner = parallel.MeshRunner(parallel.make_mesh(devices=jax.devices()[:1]))
  placed = runner.put_state(state)
  batches = list(data.make_eval_batches(test_engine._dataset(task), batch_size=2))  # pylint: disable=protected-access
  got = predictions.collect(task, runner, placed, batches, examples=3)
  images = np.concatenate([b["image"] for b in batches])[:3]
  np.testing.assert_array_equal(got["image"], images)  # The first 3 examples, over 2 batches.
  out, _ = state.student_apply(state.params["student"], state.student_state, images,
                               train=False, rng=None)
  if task == "segmentation":
    labels = np.concatenate([b["label"] for b in batches])[:3]
    np.testing.assert_array_equal(got["label"], labels)
    np.testing.assert_array_equal(got["prediction"], np.argmax(np.asarray(out.logits), -1))
  else:
    from kdjax.models import zoo  # pylint: disable=g-import-not-at-top
    boxes, scores, classes = zoo.decode_detections(out.logits, out.features["box_logits"],
                                                   max_detections=20)
    np.testing.assert_allclose(got["boxes"], boxes, atol=1e-4)
    np.testing.assert_allclose(got["scores"], scores, atol=1e-5)
    np.testing.assert_array_equal(got["classes"], classes)
    gt = np.concatenate([b["boxes"] for b in batches])[:3]
    np.testing.assert_array_equal(got["gt_boxes"], gt)


def test_an_exported_students_latency_is_timed_at_batch_1_and_32(tmp_path):
  pytest.importorskip("onnxruntime")
  pytest.importorskip("jax2onnx")
  from kdjax import export, models  # pylint: disable=g-import-not-at-top
  model = models.create("mlp", num_classes=10, input_shape=(8, 8, 1), rng=jax.random.key(0),
                        hidden=(8,))
  fn = export.inference_fn(model)
  symbolic = export.export_onnx(fn, (8, 8, 1), tmp_path / "s.onnx")
  latency = export.onnx_latency(symbolic, (8, 8, 1), runs=3)
  assert set(latency) == {"latency_b1_ms", "latency_b32_ms"}
  assert all(np.isfinite(v) and v > 0 for v in latency.values())
  fixed = export.export_onnx(fn, (8, 8, 1), tmp_path / "f.onnx", batch_size=32)
  assert set(export.onnx_latency(fixed, (8, 8, 1), runs=2)) == {"latency_b32_ms"}
  with pytest.raises(ValueError, match="runs >= 1"):
    export.onnx_latency(symbolic, (8, 8, 1), runs=0)


@pytest.mark.slow  # The tiny pipeline again, with an export run (ONNX).
def test_the_export_run_records_its_onnx_latency(tmp_path):
  pytest.importorskip("onnxruntime")
  pytest.importorskip("jax2onnx")
  from kdjax import train  # pylint: disable=g-import-not-at-top
  from kdjax.train import table  # pylint: disable=g-import-not-at-top
  from tests.train.conftest import tiny  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "w")
  train.train_and_evaluate(tiny(**{"export.formats": ("onnx",), "eval_every": 0}), workdir)
  results = contract.read_results(workdir)  # As written to results.json.
  members = results["export"]["members"]
  assert members
  for member in members:
    for key in ("latency_b1_ms", "latency_b32_ms"):
      assert np.isfinite(member[key]) and member[key] > 0, (member["run"], key)
  text = table.results_table(results)
  assert "latency_b1_ms" in text and "latency_b32_ms" in text
  assert f"{members[0]['latency_b32_ms']:.3f}" in text


@pytest.mark.slow  # Two short dense pipelines through the command line (about a minute each).
@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_a_dense_runs_report_draws_its_overlays(task, tmp_path):
  from tests.dense import test_engine  # pylint: disable=g-import-not-at-top
  from tests.train.conftest import run_cli  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / task)
  run_cli(*test_engine._cli_args(task, workdir, "--config.compare_baseline=True"))  # pylint: disable=protected-access
  for run in RUNS:
    p = contract.read_predictions(contract.predictions_path(workdir, run))
    assert str(p["task"]) == task and len(p["image"]) == predictions.EXAMPLES
  report.write_report([workdir])
  view = report.load(workdir)
  panels = report.plot_transfer(workdir, view.results, view.runs, str(tmp_path / "t.png"),
                                view.inputs)
  columns = ("ground truth", "teacher", "student (alone)", "student_kd (distilled)")
  assert [p.title for p in panels] == [f"{c} #{row}" for row in range(predictions.EXAMPLES)
                                       for c in columns]
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  image = matplotlib.image.imread(str(tmp_path / "t.png"))
  for p in panels:
    left, top, right, bottom = p.box
    assert image[top:bottom, left:right, :3].std() > 0.02, p.title


def test_the_compress_table_shows_latency_beside_accuracy_and_size():
  from kdjax.train import table  # pylint: disable=g-import-not-at-top
  entry = {"model": "mlp", "accuracy": 0.8, "top5": 1.0, "macro_f1": 0.8, "ece": 0.02,
           "agreement": 0.9, "params": 33738, "time_s": 1.0}
  results = {"student_kd": entry,
             "student_kd_pruned": {**entry, "sparsity": 0.8, "nonzero": 7010},
             "student_kd_int8": {**entry, "ptq_accuracy": 0.79},
             "export": {"time_s": 2.0, "members": [
                 {"run": "student_kd_int8", "accuracy": 0.81, "max_abs_diff": 2e-6,
                  "size_bytes": 53771, "latency_b1_ms": 0.05, "latency_b32_ms": 0.089}]}}
  lines = table.results_table(results).splitlines()
  assert max(map(len, lines)) <= table.WIDTH
  header = next(line.split() for line in lines if "latency_b1_ms" in line)
  assert header == ["run", "accuracy", "max_abs_diff", "size_bytes", "latency_b1_ms",
                    "latency_b32_ms"]
  row = next(line.split() for line in lines if line.strip().startswith("export[student_kd_int8]")
             and "53,771" in line)
  assert row == ["export[student_kd_int8]", "0.8100", "2.00e-06", "53,771", "0.050", "0.089"]
