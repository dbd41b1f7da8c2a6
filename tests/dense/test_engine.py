"""Segmentation and detection on the one engine: the mesh and pmap runners, exact resume from a
checkpoint (and after a SIGKILL), the ``load`` kind for a dense teacher, and export of dense
students to ONNX checked in onnxruntime.

The fast tests work on the engine's parts (runners, ``Checkpointer``, the data iterator, the
``load`` kind on a checkpoint they write) with the zoo's dense models at width 2; the slow ones
run the configs of ``configs/segmentation`` and ``configs/detection``, shrunk by overrides,
through the command line.
"""
import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import kdjax
from kdjax import train
from kdjax import data, metrics, models, objectives, parallel
from kdjax import workdir as contract
from kdjax.data._dense_digits import DenseDigits
from kdjax.models import zoo
from kdjax.train import checkpoint as ckpt_lib
from kdjax.train import tasks
from tests import helpers

MODULES = {"segmentation": zoo.SegmentationUNet, "detection": zoo.PointDetector}
BATCH = 8  # One example per fake device.
STEPS = 4


def _objective(task):
  if task == "segmentation":
    return objectives.combine({"ce": objectives.cross_entropy(),
                               "pixel_kd": objectives.pixel_kd(temperature=2.0),
                               "cwd": (objectives.channel_wise_distillation(temperature=4.0),
                                       3.0)})
  return objectives.combine({"det": objectives.point_detection(),
                             "heatmap_kd": objectives.heatmap_kd()})


def _dataset(task):
  return DenseDigits(task, num_train=32, num_eval=4)


@functools.lru_cache(maxsize=None)
def _variables(task, width, seed):
  """Initial variables of the task's zoo model at ``width`` (initialised once per test session:
  initialisation compiles, and the tests need only a few distinct models)."""
  info = _dataset(task).info
  module = MODULES[task](num_classes=info.num_classes, width=width)
  return jax.jit(functools.partial(module.init, train=False))(
      jax.random.key(seed), jnp.zeros((1, *info.input_shape), jnp.float32))


def _model(task, width, seed, taps, bn_axis_name=None):
  info = _dataset(task).info
  module = MODULES[task](num_classes=info.num_classes, width=width, bn_axis_name=bn_axis_name)
  return models.from_linen(module, _variables(task, width, seed), taps=tuple(taps))


def _state(task, *, bn_axis_name=None):
  """A distillation state of a width-4 teacher and a width-2 student of the task's zoo model;
  ``bn_axis_name``: the pmap axis their BatchNorm layers average statistics over."""
  objective = _objective(task)
  teacher = _model(task, 4, 0, objective.needs.teacher, bn_axis_name)
  student = _model(task, 2, 1, objective.needs.student, bn_axis_name)
  example = next(data.make_train_iterator(_dataset(task), global_batch_size=BATCH, seed=0))
  return kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                   tx=optax.adamw(3e-3, weight_decay=1e-4),
                                   rng=jax.random.key(2), example_batch=example)


def _train(runner, state, batches, steps):
  placed = runner.put_state(state)
  losses = []
  for _ in range(steps):
    placed, step_metrics = runner.step(placed, next(batches))
    losses.append({k: float(v) for k, v in jax.device_get(step_metrics).items()})
  return runner.host_state(placed), losses


@pytest.fixture(scope="module", name="one_device")
def fixture_one_device():
  """``{task: (runner, state after STEPS, losses)}``: the reference, on one device, built lazily."""
  done = {}

  def get(task):
    if task not in done:
      runner = parallel.MeshRunner(parallel.make_mesh(devices=jax.devices()[:1]))
      batches = data.make_train_iterator(_dataset(task), global_batch_size=BATCH, seed=0)
      done[task] = (runner, *_train(runner, _state(task), batches, STEPS))
    return done[task]

  return get


# -- 1. The mesh and pmap runners ---------------------------------------------------------------

# Eight devices sum their shards' losses and gradients in another order than one device does,
# and pmap averages BatchNorm statistics with a collective: float32 rounding, relative 1e-6 per
# step, grows through 4 Adam steps (whose update divides by a small second moment early on).
# 1e-4 relative on the losses and the parameters is far above that and far below any real
# difference (a lost example changes the loss in the second digit).
RTOL, ATOL = 1e-4, 1e-6


@pytest.mark.parametrize("task", [
    "segmentation",
    pytest.param("detection", marks=pytest.mark.slow),  # Two more compiles of the detector.
])
def test_mesh_and_pmap_runners_match_one_device(one_device, task):
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  _, ref_state, ref = one_device(task)
  for runner, state in (
      (parallel.MeshRunner(parallel.make_mesh()), _state(task)),
      (parallel.PmapRunner(), _state(task, bn_axis_name=parallel.PMAP_AXIS))):
    batches = data.make_train_iterator(_dataset(task), global_batch_size=BATCH, seed=0)
    got_state, got = _train(runner, state, batches, STEPS)
    for step, (a, b) in enumerate(zip(got, ref)):
      assert set(a) == set(b) and {"loss", "agreement"} <= set(a)
      for key in b:
        np.testing.assert_allclose(a[key], b[key], rtol=RTOL, atol=ATOL,
                                   err_msg=f"{runner.mode} step {step + 1} {key}")
    chex.assert_trees_all_close(got_state.params, ref_state.params, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(got_state.student_state, ref_state.student_state, rtol=RTOL,
                                atol=ATOL)


# -- 2. Exact resume ----------------------------------------------------------------------------


@pytest.mark.parametrize("task", [
    "segmentation",
    pytest.param("detection", marks=pytest.mark.slow),  # The detector's compiles, again.
])
def test_a_dense_run_resumes_exactly_from_its_checkpoint(one_device, task, tmp_path):
  """Stopped after the checkpoint of step 2 (the process's memory lost), restored by the
  engine's ``Checkpointer`` with the data iterator's position: the same losses and state as
  the uninterrupted run, bit for bit."""
  runner, ref_state, ref = one_device(task)
  batches = data.make_train_iterator(_dataset(task), global_batch_size=BATCH, seed=0)
  state, first = _train(runner, _state(task), batches, 2)
  saver = ckpt_lib.Checkpointer(tmp_path / "checkpoints", keep=2)
  saver.save(2, state, {"iterator": batches.get_state()})
  saver.close()
  next(batches)  # Steps past the checkpoint are lost with the process.
  del state, batches

  restorer = ckpt_lib.Checkpointer(tmp_path / "checkpoints", keep=2)
  state, saved, step = restorer.restore_latest(_state(task))
  restorer.close()
  assert step == 2 and int(state.step) == 2
  batches = data.make_train_iterator(_dataset(task), global_batch_size=BATCH, seed=0)
  batches.set_state(saved["iterator"])
  state, rest = _train(runner, state, batches, STEPS - 2)
  assert first + rest == ref
  chex.assert_trees_all_equal(state.checkpoint_tree(), ref_state.checkpoint_tree())


# -- 3. The load kind -----------------------------------------------------------------------------


def _tiny_config(task, **overrides):
  """The task's config, shrunk: width 4 teacher, width 2 student, a few steps of batch 8."""
  config = _config(task)
  settings = {"batch_size": BATCH, "total_steps": STEPS, "teacher.total_steps": STEPS,
              "eval_every": 0, "checkpoint_every": 2, "log_every": 1, "progress_bar": False,
              "logging.tensorboard": False, "checked_steps": 0,
              "teacher.model_kwargs": {"width": 4}, "student.model_kwargs": {"width": 2}}
  return helpers.with_overrides(config, {**settings, **overrides})


def _config(task):
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(REPO, "configs", task, "digits.py")
  spec = importlib.util.spec_from_file_location(f"{task}_digits_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEADLINE = {"segmentation": ("miou", "accuracy"), "detection": ("map50", "map")}


@pytest.mark.parametrize("task", ["detection"])
def test_the_load_kind_evaluates_a_dense_teacher_checkpoint(one_device, task, tmp_path):
  """A detector saved by a run's ``Checkpointer`` and named by ``config.teacher.checkpoint`` is
  evaluated with its task's metric (COCO mAP of its decoded boxes), equal to evaluating the
  trained state directly. (A detector needs its ``box_logits`` head tapped and no class labels.)
  """
  _, trained, _ = one_device(task)
  # The student of the reference state becomes the teacher of another workdir: the config's
  # teacher section names its architecture.
  saver = ckpt_lib.Checkpointer(contract.checkpoint_dir(str(tmp_path / "a"), "teacher"), keep=1)
  saver.save(STEPS, trained, {})
  saver.close()
  config = _tiny_config(task, **{"teacher.checkpoint": str(tmp_path / "a" / "teacher"),
                                 "teacher.model_kwargs": {"width": 2}, "teacher_only": True})
  results = train.train_and_evaluate(config, str(tmp_path / "b"))
  assert list(results) == ["teacher"]
  entry = results["teacher"]
  assert entry["checkpoint"] == str(tmp_path / "a" / "teacher")

  runner = parallel.MeshRunner(parallel.make_mesh())
  want = tasks.TASKS[task].evaluate(
      runner, runner.put_state(trained),
      data.make_eval_batches(config.data.name, batch_size=config.data.eval_batch_size),
      _dataset(task).info.num_classes)
  assert want["count"] == entry["count"] == 300
  for key in HEADLINE[task]:
    assert entry[key] == pytest.approx(want[key], abs=1e-9), key


# -- 4. The command line: a killed run resumes; jit on 1 device, 8 devices and pmap agree; the
# load kind reads a teacher trained in another workdir; the students export to ONNX (slow) -----

CLI_SETTINGS = ("--config.batch_size=8", "--config.total_steps=6",
                "--config.teacher.total_steps=4", "--config.eval_every=0",
                "--config.checkpoint_every=2", "--config.log_every=1",
                "--config.compare_baseline=False", "--config.progress_bar=False",
                "--config.logging.tensorboard=False", "--config.checked_steps=0",
                '--config.teacher.model_kwargs={"width": 4}',
                '--config.student.model_kwargs={"width": 2}')
RUNS = ("teacher", "student_kd")


def _cli_args(task, workdir, *extra):
  return (f"--config={os.path.join(REPO, 'configs', task, 'digits.py')}", f"--workdir={workdir}",
          *CLI_SETTINGS, *extra)


def _entries(workdir):
  """The results entries without their wall times."""
  return {run: {k: v for k, v in entry.items() if k != "time_s"}
          for run, entry in train.read_results(str(workdir)).items() if run in RUNS}


def _losses(workdir, run):
  records = train.read_metrics(os.path.join(str(workdir), run, "metrics.jsonl"))
  return {r["step"]: {k: v for k, v in r.items() if not k.endswith("_per_s")}
          for r in records if not r.get("eval")}


@pytest.fixture(scope="module", name="reference")
def fixture_reference(tmp_path_factory):
  """``{task: workdir}``: the shrunk config of each task through the command line on 8 devices,
  uninterrupted, with the export run (ONNX) after ``student_kd``."""
  from tests.train.conftest import run_cli  # pylint: disable=g-import-not-at-top
  done = {}

  def get(task):
    if task not in done:
      workdir = tmp_path_factory.mktemp(f"reference_{task}")
      run_cli(*_cli_args(task, workdir, '--config.export.formats=("onnx",)'))
      done[task] = workdir
    return done[task]

  return get


@pytest.mark.slow  # Three short command-line pipelines per task (about a minute of CPU each).
@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_a_killed_dense_pipeline_resumes_to_the_same_results(reference, task, tmp_path):
  from tests.train.conftest import kill_when, run_cli  # pylint: disable=g-import-not-at-top
  want = reference(task)
  workdir = tmp_path / "killed"
  kill_when(os.path.join(contract.checkpoint_dir(str(workdir), "student_kd"), "2"),
            *_cli_args(task, workdir))
  assert "student_kd" not in train.read_results(str(workdir))  # Really cut short.
  run_cli(*_cli_args(task, workdir))
  assert _entries(workdir) == _entries(want)
  for run in RUNS:
    assert _losses(workdir, run) == _losses(want, run), run


@pytest.mark.slow  # A command-line pipeline on one device and one in-process under pmap, per task.
@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_one_device_eight_devices_and_pmap_give_the_same_dense_runs(reference, task, tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tests.train.conftest import cli_env  # pylint: disable=g-import-not-at-top
  want = reference(task)
  one = tmp_path / "one_device"
  done = subprocess.run([sys.executable, "-m", "kdjax.main", *_cli_args(task, one)],
                        env={**cli_env(), "JAX_NUM_CPU_DEVICES": "1"}, cwd=REPO,
                        capture_output=True, text=True, timeout=1500, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  pmap = tmp_path / "pmap"
  from tests.train.conftest import run_cli  # pylint: disable=g-import-not-at-top
  run_cli(*_cli_args(task, pmap, "--config.parallel=pmap"))
  ref_losses, ref_entries = {r: _losses(want, r) for r in RUNS}, _entries(want)
  for workdir in (one, pmap):
    entries = _entries(workdir)
    for run in RUNS:
      got = _losses(workdir, run)
      assert sorted(got) == sorted(ref_losses[run])
      for step, record in got.items():
        for key, value in record.items():
          if isinstance(value, float):
            np.testing.assert_allclose(value, ref_losses[run][step][key], rtol=RTOL, atol=ATOL,
                                       err_msg=f"{workdir.name} {run} step {step} {key}")
      # Metrics of argmax / ranked detections: a logit moved by 1e-6 can flip one pixel or swap
      # two detections' order, nothing more.
      for key in HEADLINE[task]:
        assert entries[run][key] == pytest.approx(ref_entries[run][key], abs=2e-3), (run, key)


@pytest.mark.slow  # The shared reference pipeline, then an evaluation-only pipeline.
@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_a_dense_teacher_trained_in_one_workdir_is_loaded_by_another(reference, task, tmp_path):
  want = reference(task)
  teacher_dir = os.path.join(str(want), "teacher")
  config = _tiny_config(task, **{"teacher.checkpoint": teacher_dir, "teacher_only": True})
  loaded = train.train_and_evaluate(config, str(tmp_path / "loaded"))["teacher"]
  trained = train.read_results(str(want))["teacher"]
  assert loaded["count"] == trained["count"] == 300
  for key in HEADLINE[task]:
    assert loaded[key] == pytest.approx(trained[key], abs=1e-9), key
  assert loaded["params"] == trained["params"]


def _onnx_outputs(path, images):
  import onnxruntime  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  names = [o.name for o in session.get_outputs()]
  return names, session.run(None, {session.get_inputs()[0].name: images})


@pytest.mark.slow  # The shared reference pipeline (its export run), then ``kdjax export``.
@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_dense_students_export_to_onnx_with_their_raw_heads(reference, task):
  pytest.importorskip("onnxruntime")
  pytest.importorskip("jax2onnx")
  from kdjax.train import export_command  # pylint: disable=g-import-not-at-top
  want = reference(task)
  results = train.read_results(str(want))
  (member,) = results["export"]["members"]  # The export run of the pipeline.
  assert member["run"] == "student_kd" and member["max_abs_diff"] <= 1e-4
  # ``kdjax export`` of the finished run writes the same artifact again.
  entry = export_command.export_workdir_run(str(want), "student_kd", formats=("onnx",))
  assert entry["step"] == 6 and entry["max_abs_diff"] <= 1e-4
  batches = list(data.make_eval_batches(f"{'seg' if task == 'segmentation' else 'det'}_digits",
                                        batch_size=96))
  images = np.concatenate([b["image"][b["mask"]] for b in batches])
  names, outs = _onnx_outputs(entry["onnx"], images)
  kd = results["student_kd"]
  if task == "segmentation":
    # Per-pixel logits; their argmax scores the artifact as the run was scored.
    assert names == entry["outputs"] == ["logits"]
    assert outs[0].shape == (300, 32, 32, 11)
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    confusion = np.zeros((11, 11), np.int64)
    np.add.at(confusion, (labels.reshape(-1), outs[0].argmax(-1).reshape(-1)), 1)
    assert entry["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum(), abs=1e-12)
    assert entry["accuracy"] == pytest.approx(kd["accuracy"], abs=1e-3)
    assert metrics.mean_iou(confusion)[0] == pytest.approx(kd["miou"], abs=1e-3)
  else:
    # The raw heads; the boxes are decoded outside the artifact, as the evaluation decodes them.
    assert names == entry["outputs"] == ["logits", "box_logits"]
    assert outs[0].shape == (300, 12, 12, 10) and outs[1].shape == (300, 12, 12, 4, 8)
    assert entry["accuracy"] is None
    boxes, scores, classes = zoo.decode_detections(outs[0], outs[1])
    gt_boxes = np.concatenate([b["boxes"][b["mask"]] for b in batches])
    gt_classes = np.concatenate([b["box_classes"][b["mask"]] for b in batches])
    got = metrics.coco_map(gt_boxes, gt_classes, np.asarray(boxes), np.asarray(scores),
                           np.asarray(classes))
    assert got["map"] == pytest.approx(kd["map"], abs=1e-3)
    assert got["map50"] == pytest.approx(kd["map50"], abs=1e-3)
