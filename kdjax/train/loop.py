"""The training pipeline: teacher, baseline student, distilled student; resumable at any point.

``train_and_evaluate(config, workdir)`` runs, in order:

1. ``teacher``: trained with cross-entropy in ``WORKDIR/teacher`` (or loaded from
   ``config.teacher.checkpoint`` and only evaluated);
2. ``student``: the student trained with cross-entropy alone, when ``config.compare_baseline``;
3. ``student_kd``: the student distilled from the teacher with ``config.objective``.

Each run checkpoints itself and resumes on its own; a run whose final checkpoint and
``results.json`` entry exist is not run again. Everything the pipeline checks up front
(config, dataset, models, objective, devices, workdir, teacher checkpoint) fails before anything
is written.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import tempfile
import threading
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from jax.experimental import multihost_utils

from kdjax import data
from kdjax import models
from kdjax import parallel
from kdjax import step as step_lib
from kdjax.train import builders
from kdjax.train import checkpoint as ckpt_lib
from kdjax.train import config as config_lib
from kdjax.train import evaluation
from kdjax.train import logging as log_lib
from kdjax.train.errors import (CheckpointError, ConfigError, NonFiniteLossError, Preempted,
                                WorkdirError)

RUNS = ("teacher", "student", "student_kd")
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
# Unchecked losses are fetched from the device at least this often, to catch NaNs early.
_MAX_UNCHECKED_STEPS = 100


def _is_main() -> bool:
  return jax.process_index() == 0


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _write_json(path: str, obj: Any) -> None:
  """Atomic write (process 0): a kill leaves the old file or the new one, never half of one."""
  if not _is_main():
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def read_results(workdir: str) -> dict[str, Any]:
  """``WORKDIR/results.json`` as a dict (empty when there is none yet)."""
  path = os.path.join(workdir, RESULTS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


# Preemption -----------------------------------------------------------------------------------


class _PreemptionWatch:
  """Tells the loop when to save and stop because of a preemption notice (SIGTERM).

  One process: a SIGTERM handler sets a flag that the loop reads after every step. Several
  processes: JAX's preemption service (started by ``jax.distributed.initialize``) catches the
  signal and agrees on one step at which every process saves, so no handler is installed.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested


# Set-up checks --------------------------------------------------------------------------------


def _resolve(config: Any) -> tuple[ml_collections.ConfigDict, data.DatasetInfo]:
  config = config_lib.resolve(config)  # Unknown keys and bad values first, without any I/O.
  info = data.get_info(config.data.name, data_dir=config.data.data_dir or None)
  config = config_lib.resolve(config, num_classes=info.num_classes, eval_split=info.eval_split)
  for key in ("train_split", "eval_split"):
    split = config.data[key]
    if split not in info.splits:
      raise ConfigError(f"config.data.{key}={split!r} is not a split of dataset "
                        f"'{info.name}'; its splits are {list(info.splits)}")
  for side in ("teacher", "student"):
    builders.check_model_name(config[side].model, side)
  _distill_objective(config, info)
  return config, info


def _distill_objective(config: ml_collections.ConfigDict, info: data.DatasetInfo):
  return builders.make_objective(config.objective, num_train=info.num_train,
                                 stages=config.stages)


def _make_runner(config: ml_collections.ConfigDict):
  try:
    return parallel.make_runner(config.parallel, mesh_shape=dict(config.mesh),
                                shard_teacher=config.shard_teacher,
                                shard_student=config.shard_student)
  except ValueError as e:
    raise ConfigError(f"config.parallel / config.mesh: {e}") from None


def _bn_axis_name(config: ml_collections.ConfigDict) -> str | None:
  # Under pmap each device sees a slice of the batch: BatchNorm must average its statistics
  # over the mapped axis to normalise like the jit path, which sees the global batch.
  return parallel.PMAP_AXIS if config.parallel == "pmap" else None


def _check_devices(config: ml_collections.ConfigDict, num_devices: int) -> None:
  per_update = num_devices * config.accumulation_steps
  if config.batch_size % per_update:
    lower = config.batch_size - config.batch_size % per_update
    what = (f"{num_devices} devices" if config.accumulation_steps == 1 else
            f"{num_devices} devices x accumulation_steps={config.accumulation_steps}")
    raise ConfigError(
        f"config.batch_size={config.batch_size} (the global batch) does not split evenly over "
        f"{what}; set config.batch_size to a multiple of {per_update} (e.g. "
        f"{lower or per_update} or {lower + per_update})")
  if config.data.eval_batch_size % num_devices:
    raise ConfigError(
        f"config.data.eval_batch_size={config.data.eval_batch_size} is not divisible by the "
        f"{num_devices} devices; set it to a multiple of {num_devices}")


def _check_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-test-"):
      pass
  except OSError as e:
    raise WorkdirError(f"cannot write to --workdir={workdir} ({e.strerror or e}); choose a "
                       "directory you can write to") from None


def _has_checkpoints(workdir: str) -> bool:
  for run in os.listdir(workdir):
    ckpt_dir = os.path.join(workdir, run, "checkpoints")
    if os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir)):
      return True
  return False


def _check_workdir_config(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Compares ``config`` with the workdir's config.json; returns whether the file exists."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    if _has_checkpoints(workdir):
      raise WorkdirError(
          f"--workdir={workdir} holds checkpoints but no {CONFIG_FILE}, so kdjax cannot tell "
          "which config they belong to; use a new --workdir (nothing was changed)")
    return False
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise WorkdirError(f"cannot read {path} ({e}); use a new --workdir (nothing was "
                       "changed)") from None
  differing = config_lib.differing_keys(saved, config)
  if differing:
    flat_saved = config_lib.flatten(saved)
    flat_now = config_lib.flatten(json.loads(config_lib.to_json(config)))
    shown = ", ".join(f"{k}: {flat_saved.get(k)!r} -> {flat_now.get(k)!r}" for k in differing[:6])
    more = f" and {len(differing) - 6} more" if len(differing) > 6 else ""
    raise WorkdirError(
        f"--workdir={workdir} holds runs of a different config ({shown}{more}); use a new "
        "--workdir for this config, or run with the workdir's own config.json settings to "
        "resume it (nothing was changed)")
  return True


# Building a run -------------------------------------------------------------------------------


@dataclasses.dataclass
class _Context:
  config: ml_collections.ConfigDict
  info: data.DatasetInfo
  workdir: str
  preemption: _PreemptionWatch
  results: dict[str, Any]

  def key(self, purpose: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(self.config.seed), purpose)


# fold_in tags: the baseline and the distilled student share their initialisation and step keys,
# so the comparison isolates the objective.
_TEACHER_INIT, _TEACHER_STEPS, _STUDENT_INIT, _STUDENT_STEPS = 1, 2, 3, 4


def _example_batch(config, info) -> dict[str, jax.ShapeDtypeStruct]:
  b = config.batch_size
  batch = {"image": jax.ShapeDtypeStruct((b, *info.input_shape), jnp.float32),
           "label": jax.ShapeDtypeStruct((b,), jnp.int32),
           "index": jax.ShapeDtypeStruct((b,), jnp.int32)}
  augment = config.data.augment
  if augment.mixup_alpha > 0 or augment.cutmix_alpha > 0:
    batch["label_mix"] = jax.ShapeDtypeStruct((b,), jnp.int32)
    batch["mix_lambda"] = jax.ShapeDtypeStruct((b,), jnp.float32)
  return batch


def _create_state(ctx: _Context, *, student: models.Model, teacher: models.Model | None,
                  objective, tx, rng) -> step_lib.DistillState:
  try:
    return step_lib.DistillState.create(
        student=student, teacher=teacher, objective=objective, tx=tx, rng=rng,
        example_batch=_example_batch(ctx.config, ctx.info),
        accumulation_steps=ctx.config.accumulation_steps)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _data_kwargs(ctx: _Context) -> dict[str, Any]:
  d = ctx.config.data
  return dict(process_index=jax.process_index(), process_count=jax.process_count(),
              data_dir=d.data_dir or None, standardize=d.standardize)


def _eval_batches(ctx: _Context):
  return data.make_eval_batches(ctx.config.data.name, batch_size=ctx.config.data.eval_batch_size,
                                split=ctx.config.data.eval_split, **_data_kwargs(ctx))


def _attach_teacher(state: step_lib.DistillState, teacher: models.Model):
  return state.replace(teacher_params=teacher.params, teacher_state=teacher.model_state,
                       teacher_apply=teacher.apply)


_all_finite = jax.jit(lambda tree: jnp.all(jnp.stack(
    [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] or [jnp.array(True)])))


@dataclasses.dataclass
class _RunSpec:
  name: str
  model_config: Any
  side: str
  optimizer: Any
  total_steps: int
  objective: Any  # a Term
  init_key: jax.Array
  step_key: jax.Array
  taps: tuple[str, ...] = ()
  teacher: models.Model | None = None  # distilled from (inside the state)
  agreement_teacher: models.Model | None = None  # only compared with at evaluation


def _run_dir(ctx: _Context, name: str) -> str:
  return os.path.join(ctx.workdir, name)


def _finished(ctx: _Context, name: str, total_steps: int) -> bool:
  if name not in ctx.results:
    return False
  step_dir = os.path.join(_run_dir(ctx, name), "checkpoints", str(total_steps))
  return os.path.isdir(os.path.join(step_dir, "state"))


def _nonfinite_error(ctx, spec, step, what, checkpointer) -> NonFiniteLossError:
  checkpointer.wait()
  steps = checkpointer.all_steps()
  if steps:
    kept = (f"the last good checkpoint, step {steps[-1]}, is kept in "
            f"{os.path.join(_run_dir(ctx, spec.name), 'checkpoints', str(steps[-1]))}")
  else:
    kept = "no checkpoint had been saved yet"
  key = "optimizer" if spec.name != "teacher" else "teacher.optimizer"
  return NonFiniteLossError(
      f"run '{spec.name}': {what} at step {step}; training stopped and {kept}. "
      f"Lower config.{key}.learning_rate (now {spec.optimizer.learning_rate}), add a warm-up "
      f"(config.{key}.warmup_steps) or gradient clipping (config.{key}.grad_clip_norm), and "
      "run it in a new --workdir", run=spec.name, step=step)


def _train(ctx: _Context, spec: _RunSpec) -> dict[str, Any]:
  """Trains (or resumes, or only evaluates the final checkpoint of) one run."""
  config = ctx.config
  run_dir = _run_dir(ctx, spec.name)
  steps_per_epoch = ctx.info.num_train / config.batch_size
  student = builders.make_model(spec.model_config, side=spec.side,
                                input_shape=ctx.info.input_shape, rng=spec.init_key,
                                taps=spec.taps, bn_axis_name=_bn_axis_name(config))
  tx, schedule = builders.make_optimizer(spec.optimizer, total_steps=spec.total_steps,
                                         steps_per_epoch=steps_per_epoch)
  state = _create_state(ctx, student=student, teacher=spec.teacher, objective=spec.objective,
                        tx=tx, rng=spec.step_key)
  runner = _make_runner(config)
  placed = runner.put_state(state)
  del state
  checkpointer = ckpt_lib.Checkpointer(os.path.join(run_dir, "checkpoints"),
                                       keep=config.keep_checkpoints)
  try:
    restored = checkpointer.restore_latest(runner.host_state(placed))
  except BaseException:
    checkpointer.close()
    raise
  data_state: dict[str, Any] = {}
  if restored is not None:
    host, data_state, start = restored
    placed = runner.put_state(host)
    del host
    logging.info("run '%s': resuming from the checkpoint at step %d", spec.name, start)
  else:
    start = 0
  step = int(jax.device_get(runner.host_state(placed).step))
  if step != start and restored is not None:
    raise CheckpointError(f"checkpoint {start} of run '{spec.name}' holds step {step}; use a new "
                          "--workdir")
  if step > spec.total_steps:
    raise WorkdirError(f"run '{spec.name}' is already at step {step}, past its "
                       f"{spec.total_steps} steps; use a new --workdir")

  eval_runner = _make_runner(config) if spec.agreement_teacher is not None else None

  def eval_placed():
    if eval_runner is None:
      return runner, placed
    host = _attach_teacher(runner.host_state(placed), spec.agreement_teacher)
    return eval_runner, eval_runner.put_state(host)

  reduce_fn = evaluation.make_reduce_fn(spec.model_config.num_classes)
  eval_batches = _eval_batches(ctx)

  def evaluate():
    r, s = eval_placed()
    return evaluation.evaluate(r, s, eval_batches, reduce_fn)

  train_iter = data.make_train_iterator(
      config.data.name, global_batch_size=config.batch_size, seed=config.seed,
      augment=config.data.augment, worker_count=config.data.worker_count,
      split=config.data.train_split, **_data_kwargs(ctx))
  if data_state.get("iterator") is not None:
    train_iter.set_state(data_state["iterator"])
  elapsed_before = float(data_state.get("elapsed_s", 0.0))
  logger = log_lib.RunLogger(run_dir, run=spec.name, total_steps=spec.total_steps,
                             start_step=step, examples_per_step=config.batch_size,
                             enabled=_is_main(), progress_bar=config.progress_bar)
  started = time.perf_counter()

  def bookkeeping():
    return {"iterator": train_iter.get_state(),
            "elapsed_s": elapsed_before + time.perf_counter() - started}

  def check_finite(pending):
    if not pending:
      return
    values = jax.device_get([m["loss"] for _, m in pending])
    for (s, _), v in zip(pending, values):
      if not math.isfinite(float(v)):
        raise _nonfinite_error(ctx, spec, s, f"the loss became {float(v)}", checkpointer)

  def save(at_step, metrics=None):
    if not bool(_all_finite(placed.params)):
      raise _nonfinite_error(ctx, spec, at_step, "the parameters became NaN or infinite",
                             checkpointer)
    checkpointer.save(at_step, runner.host_state(placed), bookkeeping(), metrics)

  try:
    pending: list[tuple[int, Mapping[str, jax.Array]]] = []
    while step < spec.total_steps:
      batch = next(train_iter)
      placed, metrics = runner.step(placed, batch)
      step += 1
      pending.append((step, metrics))
      last = step == spec.total_steps
      log_now = step % config.log_every == 0 or last
      eval_now = bool(config.eval_every) and step % config.eval_every == 0 and not last
      save_now = (step % config.checkpoint_every == 0 or eval_now) and not last
      preempted = ctx.preemption.reached(step)
      if log_now or save_now or preempted or last or len(pending) >= _MAX_UNCHECKED_STEPS:
        check_finite(pending)
        pending = []
      if log_now:
        host_metrics = jax.device_get(metrics)
        logger.log_train(step, host_metrics, learning_rate=float(schedule(step - 1)))
      logger.advance(step)
      eval_metrics = None
      if eval_now:
        eval_metrics = evaluate()
        logger.log_eval(step, eval_metrics)
      if save_now or (preempted and not last):
        save(step, None if eval_metrics is None else {"accuracy": eval_metrics["accuracy"]})
      if eval_now or save_now:
        logger.reset_clock()
      if preempted and not last:
        checkpointer.wait()
        raise Preempted(
            f"run '{spec.name}' was preempted (SIGTERM) at step {step}; a checkpoint was saved "
            "in " + os.path.join(run_dir, "checkpoints", str(step)) +
            "; run the same command again to resume", run=spec.name, step=step)

    final = evaluate()
    logger.log_eval(step, final)
    save(step, {"accuracy": final["accuracy"]})
    checkpointer.wait()
    elapsed = bookkeeping()["elapsed_s"]
  finally:
    train_iter.close()
    logger.close()
    checkpointer.close()
  entry = {**final, "params": models.param_count(student.params), "time_s": elapsed,
           "steps": spec.total_steps, "model": spec.model_config.model}
  return entry


def _record(ctx: _Context, name: str, entry: Mapping[str, Any]) -> None:
  ctx.results[name] = dict(entry)
  _write_json(os.path.join(ctx.workdir, RESULTS_FILE), ctx.results)
  _sync(f"kdjax_results_{name}")


def _run(ctx: _Context, spec: _RunSpec) -> None:
  if _finished(ctx, spec.name, spec.total_steps):
    logging.info("run '%s' finished earlier; skipping it (results.json has its entry)", spec.name)
    return
  _record(ctx, spec.name, _train(ctx, spec))


# Teacher --------------------------------------------------------------------------------------


def _teacher_model(ctx: _Context, taps=()) -> models.Model:
  return builders.make_model(ctx.config.teacher, side="teacher", input_shape=ctx.info.input_shape,
                             rng=ctx.key(_TEACHER_INIT), taps=taps)


def _load_teacher(ctx: _Context, path: str, taps) -> models.Model:
  model = _teacher_model(ctx, taps)
  params, model_state = ckpt_lib.load_model_variables(path, model.params, model.model_state)
  return dataclasses.replace(model, params=params, model_state=model_state)


def _evaluate_loaded_teacher(ctx: _Context, teacher: models.Model, path: str) -> dict[str, Any]:
  state = _create_state(ctx, student=teacher, teacher=None,
                        objective=builders.supervised_objective(), tx=optax.identity(),
                        rng=ctx.key(_TEACHER_STEPS))
  runner = _make_runner(ctx.config)
  metrics = evaluation.evaluate(runner, runner.put_state(state), _eval_batches(ctx),
                                evaluation.make_reduce_fn(ctx.config.teacher.num_classes))
  return {**metrics, "params": models.param_count(teacher.params), "time_s": 0.0,
          "model": ctx.config.teacher.model, "checkpoint": str(path)}


# Entry point ----------------------------------------------------------------------------------


def train_and_evaluate(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs the pipeline described by ``config`` in ``workdir`` and returns ``results.json``.

  Args:
    config: an ``ml_collections.ConfigDict`` (see :func:`kdjax.train.config.base_config` for
      the keys; missing keys take their defaults).
    workdir: where checkpoints, logs and results go; an existing workdir of the same config is
      resumed, one of a different config is refused.

  Returns:
    ``{"teacher": {...}, "student": {...}, "student_kd": {...}}``: per run, the final evaluation
    (``accuracy``, ``top5``, ``macro_f1``, ``ece``, ``agreement`` with the teacher for the
    students), ``params`` and ``time_s``.

  Raises:
    ConfigError, WorkdirError, CheckpointError, kdjax.data.DataError: a problem the message
      explains, found before anything was written where possible.
    NonFiniteLossError: the loss became NaN/inf; the last good checkpoint is kept.
    Preempted: SIGTERM arrived; a checkpoint was saved and running again resumes.
  """
  workdir = os.path.abspath(os.fspath(workdir))
  config, info = _resolve(config)
  num_devices = _make_runner(config).num_devices
  _check_devices(config, num_devices)
  student_taps, teacher_taps = builders.objective_taps(config.objective)
  ctx = _Context(config=config, info=info, workdir=workdir, preemption=_PreemptionWatch(),
                 results={})
  teacher_cache: dict[str, models.Model] = {}
  if config.teacher.checkpoint:  # Read it now: a bad path fails before anything is written.
    teacher_cache["model"] = _load_teacher(ctx, config.teacher.checkpoint, teacher_taps)
  _check_writable(workdir)
  has_config = _check_workdir_config(workdir, config)
  if not has_config:
    _write_json(os.path.join(workdir, CONFIG_FILE), json.loads(config_lib.to_json(config)))
  _sync("kdjax_workdir_ready")
  ctx.results = read_results(workdir)

  with ctx.preemption:
    student_steps = _STUDENT_INIT, _STUDENT_STEPS

    def teacher(taps=teacher_taps) -> models.Model:
      if "model" not in teacher_cache:
        if config.teacher.checkpoint:
          path = config.teacher.checkpoint
        else:
          path = os.path.join(workdir, "teacher", "checkpoints", str(config.teacher.total_steps))
        teacher_cache["model"] = _load_teacher(ctx, path, taps)
      return teacher_cache["model"]

    if config.teacher.checkpoint:
      if "teacher" not in ctx.results:
        _record(ctx, "teacher", _evaluate_loaded_teacher(ctx, teacher(), config.teacher.checkpoint))
    else:
      _run(ctx, _RunSpec(
          name="teacher", model_config=config.teacher, side="teacher",
          optimizer=config.teacher.optimizer, total_steps=config.teacher.total_steps,
          objective=builders.supervised_objective(), init_key=ctx.key(_TEACHER_INIT),
          step_key=ctx.key(_TEACHER_STEPS)))

    if config.teacher_only:
      return dict(ctx.results)

    if config.compare_baseline and not _finished(ctx, "student", config.total_steps):
      _run(ctx, _RunSpec(
          name="student", model_config=config.student, side="student",
          optimizer=config.optimizer, total_steps=config.total_steps,
          objective=builders.supervised_objective(), init_key=ctx.key(student_steps[0]),
          step_key=ctx.key(student_steps[1]), agreement_teacher=teacher()))

    if not _finished(ctx, "student_kd", config.total_steps):
      _run(ctx, _RunSpec(
          name="student_kd", model_config=config.student, side="student",
          optimizer=config.optimizer, total_steps=config.total_steps,
          objective=_distill_objective(config, info), init_key=ctx.key(student_steps[0]),
          step_key=ctx.key(student_steps[1]), taps=student_taps, teacher=teacher()))
  return dict(ctx.results)
