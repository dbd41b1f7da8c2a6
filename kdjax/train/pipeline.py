"""``train_and_evaluate(config, workdir)``: every declared run, checked first, then trained.

The pipeline resolves the config, reads the dataset, builds every run's plan and traces its
initial state with ``jax.eval_shape`` (models, objective, optimizer, batch keys: every mistake a
config can hold) and estimates the disk space of a checkpoint -- all before anything is written.
Then it locks the workdir, checks that it holds runs of this config (or none), and runs each
declaration in order on the one engine (:func:`kdjax.train.execute.execute`), recording each
finished run in ``results.json``. A run whose final checkpoint and results entry exist is not
run again, so the same command resumes a pipeline wherever it stopped.
"""
from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import numpy as np

from kdjax import data as data_lib
from kdjax import strategies  # noqa: F401  (registers the strategies' term kinds)
from kdjax.train import config as config_lib
from kdjax.train import execute as execute_lib
from kdjax.train import rundata
from kdjax.train import runs as runs_lib
from kdjax.train import compress_runs
from kdjax.train import lock
from kdjax.train import strategy_runs  # noqa: F401  (registers the mutual and lwf kinds)
from kdjax.train.actions import PreemptionWatch
from kdjax.train.errors import ConfigError, TrainError, WorkdirError
from kdjax.train.workdir import Workdir, is_main, sync


def _check_devices(config: Any, num_devices: int) -> None:
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


def _nbytes(tree: Any) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
             if hasattr(x, "shape") and x.dtype != jax.dtypes.float0 and
             not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))


def _check_space(workdir: str, nbytes: int) -> None:
  """One checkpoint of the largest run must fit on the workdir's disk (twice: a save in flight)."""
  probe = workdir
  while not os.path.exists(probe):
    probe = os.path.dirname(probe) or "."
  free = shutil.disk_usage(probe).free
  if free < 2 * nbytes:
    raise WorkdirError(f"no space left on device for --workdir={workdir}: a checkpoint needs "
                       f"about {nbytes / 1e6:.1f} MB and {free / 1e6:.1f} MB are free; free "
                       "space or choose another --workdir (nothing was written)")


def resolve(config: Any) -> tuple[Any, Any]:
  """The resolved config and its run data (dataset read once, class counts filled in)."""
  config = config_lib.resolve(config)
  run_data = rundata.make(config)
  info = getattr(run_data, "info", None)
  if info is not None:
    for key in ("train_split", "eval_split"):
      split = config.data[key] or info.eval_split
      if split not in info.splits:
        raise ConfigError(f"config.data.{key}={split!r} is not a split of dataset "
                          f"'{info.name}'; its splits are {list(info.splits)}")
  config = config_lib.with_dataset(config, num_classes=run_data.shapes.num_classes,
                                   eval_split=info.eval_split if info is not None else "valid")
  run_data.config = config  # Reads its split names and batch sizes from the resolved config.
  return config, run_data


def plan_all(config: Any, run_data: Any, workdir: Workdir) -> tuple[runs_lib.Context, list]:
  """Every run's plan (built once), each initial state traced shape-only: errors before any
  work. Returns the context (switched to real models) and ``[(declaration, plan)]``."""
  decls = runs_lib.declarations(config)
  ctx = runs_lib.Context(config=config, data=run_data, checkpoint_dir=workdir.checkpoint_dir,
                         decls={d["name"]: d for d in decls}, abstract=True,
                         workdir=workdir.path)
  _check_devices(config, ctx.runner().num_devices)
  largest, plans = 0, []
  for decl in decls:  # Trained teachers to load are read now, outside the shape-only traces.
    if decl["kind"] == "load":
      ctx.trained(decl["name"])
  for decl in decls:
    plan = runs_lib.KINDS[decl["kind"]][0](ctx, decl)
    try:
      tree = jax.eval_shape(lambda plan=plan: plan.init_state().checkpoint_tree())
    except (TrainError, data_lib.DataError) as e:
      # Raised inside the trace: JAX appends a note on its filtered frames; keep one line.
      raise type(e)(str(e).split("\n--------------------\n")[0]) from None
    largest = max(largest, _nbytes(tree))
    plans.append((decl, plan))
  _check_space(workdir.path, largest)
  ctx.abstract = False
  return ctx, plans


def _lock(workdir: Workdir):
  return lock.WorkdirLock(workdir.path, is_main=is_main())


def train_and_evaluate(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs the runs ``config`` declares in ``workdir`` and returns ``results.json``.

  Args:
    config: an ``ml_collections.ConfigDict`` (see :func:`kdjax.train.config.base_config` for
      the keys; missing keys take their defaults). ``config.runs`` declares the runs
      (:mod:`kdjax.train.runs`); empty, the standard teacher / student / student_kd pipeline.
    workdir: where checkpoints, logs and results go; an existing workdir of the same config is
      resumed, one of a different config is refused.

  Returns:
    ``{run: entry}``: per run its final evaluation (``accuracy``, ``top5``, ``macro_f1``,
    ``ece``, ``agreement`` with the teacher for distilled students; ``perplexity`` for
    language models), ``params`` and ``time_s``.

  Raises:
    ConfigError, WorkdirError, CheckpointError, kdjax.data.DataError: a problem the message
      explains, found before anything was written where possible.
    NonFiniteLossError: the loss became NaN/inf; the last good checkpoint is kept.
    Preempted: SIGTERM or SIGINT arrived; a checkpoint was saved and running again resumes.
  """
  work = Workdir(workdir)
  config, run_data = resolve(config)
  ctx, plans = plan_all(config, run_data, work)
  work.check_writable()
  with _lock(work):
    reusable = {"teacher": "teacher.checkpoint"} if "teacher" in ctx.decls else {}
    if not work.check_config(config, reusable_runs=reusable):
      work.write_config(config)
    sync("kdjax_workdir_ready")
    work.load_results()
    settings = execute_lib.Settings(
        log_every=config.log_every, eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints,
        progress_bar=config.progress_bar, tensorboard=config.logging.tensorboard,
        wandb_project=config.logging.wandb, config=config_lib.flatten(config.to_dict()))
    names = getattr(getattr(run_data, "info", None), "class_names", None)
    class_names = {"class_names": list(names)} if names else {}
    with PreemptionWatch() as watch:
      for decl, plan in plans:
        name = decl["name"]
        if plan.total_steps == 0:  # Loaded, not trained: evaluate it once.
          if name not in work.results:
            runner = plan.make_runner()
            state = plan.init_state()
            entry = {**plan.evaluate(runner, runner.put_state(state)), **plan.summary(state),
                     "time_s": 0.0}
            work.record(name, entry)
          continue
        if work.finished(name, plan.total_steps):
          continue
        if config.checks and config.checked_steps:
          plan.step_fn = _checked_first(config.checked_steps)
        entry, _ = execute_lib.execute(plan, work, settings, watch)
        work.record(name, {**entry, **class_names})
    for run, exported in compress_runs.export_all(config, work.path, work.results).items():
      work.record(run, {**work.results[run], "export_accuracy": exported["accuracy"],
                        "export_max_abs_diff": exported["max_abs_diff"],
                        "size_bytes": exported["size_bytes"]})
  return dict(work.results)


def _checked_first(n: int):
  """The run's first ``n`` steps through ``kdjax.checked`` (value checks), then the plain step."""
  def make(runner):
    from kdjax import checked  # pylint: disable=g-import-not-at-top  (kdjax imports kdjax.train)
    checked_runner = None
    count = {"steps": 0}

    def step(state, batch):
      nonlocal checked_runner
      if count["steps"] >= n:
        return runner.step(state, batch)
      count["steps"] += 1
      if checked_runner is None:
        checked_runner = runner.with_step_fn(checked(runner.step_fn))
      return checked_runner.step(state, batch)
    return step
  return make
