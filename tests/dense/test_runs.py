"""Segmentation and detection through the run layer: dense targets in the data pipeline, the task
read from them, the task's evaluation (mean IoU; COCO mAP from pycocotools) and the configs."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import data, metrics, models, objectives, parallel
from kdjax.data._dense_digits import DenseDigits
from kdjax.models import zoo
from kdjax.train import evaluation, tasks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_task_follows_the_targets():
  assert tasks.task_of({"label": ((), np.int32)}).name == "classification"
  assert tasks.task_of({"label": ((32, 32), np.int32)}).name == "segmentation"
  assert tasks.task_of({"boxes": ((4, 4), np.float32),
                        "box_classes": ((4,), np.int32)}).name == "detection"
  seg = DenseDigits("segmentation", num_train=3, num_eval=2)
  assert tasks.task_of(data.target_specs(seg.source("train"))).name == "segmentation"
  assert tasks.task_of(data.target_specs(data.get_dataset("digits").source("train"))).name == (
      "classification")


def test_class_maps_flip_and_crop_with_their_images():
  seg = DenseDigits("segmentation", num_train=8, num_eval=2)
  raw = seg.source("train").arrays()
  batch = next(data.make_train_iterator(seg, global_batch_size=8, seed=1,
                                        augment={"flip": True}))
  assert batch["label"].shape == (8, 32, 32) and batch["label"].dtype == np.int32
  flipped = 0
  for img, lab in zip(batch["image"], batch["label"]):
    i = next(i for i in range(8) if np.array_equal(raw["image"][i], img) or
             np.array_equal(raw["image"][i][:, ::-1], img))
    if np.array_equal(raw["image"][i], img) and not np.array_equal(img, img[:, ::-1]):
      np.testing.assert_array_equal(lab, raw["label"][i])
    else:
      np.testing.assert_array_equal(lab, raw["label"][i][:, ::-1])
      flipped += 1
  assert 0 < flipped < 8
  cropped = next(data.make_train_iterator(seg, global_batch_size=8, seed=1,
                                          augment={"crop_padding": 3}))
  # Background pixels (class 0) stay unlit and digit pixels keep their class: the map moved with
  # the image.
  ink = cropped["image"][..., 0] > 0.25
  assert np.all(cropped["label"][ink] > 0)
  assert np.all(cropped["image"][..., 0][cropped["label"] == 0] <= 0.25)


def test_boxes_refuse_crops_and_padded_eval_rows_carry_no_box():
  det = DenseDigits("detection", num_train=4, num_eval=3)
  with pytest.raises(data.DataError, match="config.data.augment.crop_padding=0"):
    next(data.make_train_iterator(det, global_batch_size=4, seed=0, augment={"flip": True}))
  (batch,) = list(data.make_eval_batches(det, batch_size=4))
  np.testing.assert_array_equal(batch["mask"], [True, True, True, False])
  np.testing.assert_array_equal(batch["box_classes"][3], -1)
  np.testing.assert_array_equal(batch["boxes"][:3], det.source("test").arrays()["boxes"])


def _np_miou(pred, label, c):
  ious = []
  for k in range(c):
    inter = np.sum((pred == k) & (label == k))
    union = np.sum((pred == k) | (label == k))
    if union:
      ious.append(inter / union)
  return float(np.mean(ious))


def test_segmentation_metrics_count_the_pixels_of_real_images():
  rng = np.random.default_rng(0)
  pred = rng.integers(0, 3, size=(4, 5, 5)).astype(np.int32)
  label = rng.integers(0, 3, size=(4, 5, 5)).astype(np.int32)
  mask = np.array([True, True, True, False])
  reduce_fn = evaluation.make_segmentation_reduce_fn(3)
  out = {"prediction": jnp.asarray(pred), "mask": jnp.asarray(mask),
         "agreement": jnp.asarray(pred == 1)}
  total = evaluation.accumulate(None, reduce_fn(out, {"label": jnp.asarray(label)}))
  got = evaluation.finalize_segmentation(total)
  assert got["count"] == 3
  np.testing.assert_allclose(got["miou"], _np_miou(pred[:3], label[:3], 3), rtol=1e-6)
  np.testing.assert_allclose(got["accuracy"], np.mean(pred[:3] == label[:3]), rtol=1e-6)
  np.testing.assert_allclose(got["agreement"], np.mean(pred[:3] == 1), rtol=1e-6)


def _detector_state(det):
  module = zoo.PointDetector(num_classes=10, width=2)
  x = jnp.zeros((1, 48, 48, 1), jnp.float32)
  variables = module.init(jax.random.key(0), x, train=False)
  student = models.from_linen(module, variables, taps=("box_logits",))
  example = next(data.make_train_iterator(det, global_batch_size=2, seed=0))
  return kdjax.DistillState.create(
      student=student, teacher=None, objective=objectives.combine(
          {"det": objectives.point_detection()}), tx=optax.sgd(0.1), rng=jax.random.key(1),
      example_batch=example), module, variables


def _detection_metrics(runner):
  det = DenseDigits("detection", num_train=2, num_eval=3)
  state, module, variables = _detector_state(det)
  batches = data.make_eval_batches(det, batch_size=8)  # One example per fake device.
  got = tasks.TASKS["detection"].evaluate(runner, runner.put_state(state), batches, 10)
  return got, det, module, variables


def test_detection_evaluation_is_pycocotools_map_of_the_decoded_detections():
  got, det, module, variables = _detection_metrics(parallel.MeshRunner(parallel.make_mesh()))
  test = det.source("test").arrays()
  logits, inter = module.apply(variables, test["image"], train=False,
                               mutable=["intermediates"])
  boxes, scores, classes = zoo.decode_detections(logits, inter["intermediates"]["box_logits"][0])
  want = metrics.coco_map(test["boxes"], test["box_classes"], np.asarray(boxes),
                          np.asarray(scores), np.asarray(classes))
  assert got["count"] == 3
  np.testing.assert_allclose([got["map"], got["map50"]], [want["map"], want["map50"]],
                             atol=1e-6)


@pytest.mark.slow  # A second compile of the detector, under pmap.
def test_pmap_gathers_the_devices_detections_in_batch_order():
  mesh = _detection_metrics(parallel.MeshRunner(parallel.make_mesh()))[0]
  assert _detection_metrics(parallel.PmapRunner())[0] == mesh


def _run_cli(config, workdir, *overrides):
  cmd = [sys.executable, "-m", "kdjax.main", f"--config={config}", f"--workdir={workdir}",
         "--config.progress_bar=False", *overrides]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


@pytest.mark.slow  # Three short runs of each task through the CLI (about a minute each on CPU).
@pytest.mark.parametrize("task, keys", [("segmentation", ("miou",)),
                                        ("detection", ("map50", "map"))])
def test_the_dense_configs_run_teacher_student_and_student_kd(tmp_path, task, keys):
  results = _run_cli(f"configs/{task}/digits.py", str(tmp_path / task), "--config.total_steps=2",
                     "--config.teacher.total_steps=2", "--config.eval_every=2",
                     "--config.checkpoint_every=2")
  assert list(results) == ["teacher", "student", "student_kd"]
  for run in results.values():
    for key in keys:
      assert 0.0 <= run[key] <= 1.0
  assert results["student_kd"]["baseline"] == "student"


def test_the_example_summarizes_seeds_from_their_results(tmp_path, capsys):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "dense_digits_example", os.path.join(REPO, "examples", "dense_digits.py"))
  example = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(example)
  workdirs = []
  for seed, (alone, distilled) in enumerate([(0.5, 0.7), (0.6, 0.6)]):
    workdir = tmp_path / f"s{seed}"
    workdir.mkdir()
    rows = {"teacher": {"miou": 0.9, "accuracy": 0.99, "time_s": 10.0},
            "student": {"miou": alone, "accuracy": 0.9, "time_s": 5.0},
            "student_kd": {"miou": distilled, "accuracy": 0.9, "time_s": 6.0}}
    (workdir / "results.json").write_text(json.dumps(rows))
    workdirs.append(str(workdir))
  example.summarize(workdirs)
  lines = capsys.readouterr().out.splitlines()
  assert lines[1].startswith("student ") and "miou 0.5500 +- 0.0500 [0.5000, 0.6000]" in lines[1]
  assert "accuracy" not in lines[1]  # Mean IoU, not the background-dominated pixel accuracy.
  assert lines[-1] == "gain miou: +0.1000 +- 0.1000 [+0.2000, +0.0000]"
