"""``train_and_evaluate(config, workdir)``: resolve, plan every run, lock, execute each.

The pipeline resolves the config, reads the dataset, builds every run's plan (its kind's
``plan``, :mod:`kdjax.train.kinds`) and traces its initial state with ``jax.eval_shape``
(models, objective, optimizer, batch keys: every mistake a config can hold) and estimates the
disk space of a checkpoint -- all before anything is written. Then it locks the workdir, checks
that it holds runs of this config (or none), and executes each plan in order on the one engine
(:func:`kdjax.train.execute.execute`), recording each finished run in ``results.json``. A run
whose results entry (and final checkpoint, when it trains) exist is not run again, so the same
command resumes a pipeline wherever it stopped.
"""
from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import numpy as np

from kdjax import data as data_lib
from kdjax import workdir as contract
from kdjax.train import config as config_lib
from kdjax.train import execute as execute_lib
from kdjax.train import inputs
from kdjax.train import kinds
from kdjax.train import lock
from kdjax.train import rundata
from kdjax.train.actions import PreemptionWatch
from kdjax.train.errors import ConfigError, TrainError, WorkdirError
from kdjax.train.ledger import Workdir


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


# Orbax's files around a checkpoint's arrays (metadata, manifests, file-system blocks); a
# checkpoint of a 1,210-parameter MLP takes about 110 KB on disk.
CHECKPOINT_OVERHEAD_BYTES = 128 * 1024


def _megabytes(nbytes: float) -> str:
  return f"{nbytes / 1e6:.2f} MB" if nbytes < 1e7 else f"{nbytes / 1e6:.0f} MB"


def _check_space(workdir: str, nbytes: int) -> None:
  """The rule: the workdir's disk must hold two checkpoints of the largest run, since a run
  keeps its last checkpoint until the next one is complete (``nbytes``: the largest run's
  checkpointed arrays, to which Orbax's files are added)."""
  probe = workdir
  while not os.path.exists(probe):
    probe = os.path.dirname(probe) or "."
  free = shutil.disk_usage(probe).free
  each = nbytes + CHECKPOINT_OVERHEAD_BYTES
  if free < 2 * each:
    raise WorkdirError(
        f"no space left on device for --workdir={workdir}: a run keeps its last checkpoint "
        f"while it writes the next, so the disk must hold two checkpoints of the largest run, "
        f"{_megabytes(2 * each)} ({_megabytes(each)} each, Orbax's files included), and "
        f"{_megabytes(free)} are free; free space or choose another --workdir (nothing was "
        "written)")


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


def plan_all(config: Any, run_data: Any, workdir: Workdir) -> tuple[kinds.Context, list]:
  """Every run's plan (built once), each initial state traced shape-only: errors before any
  work. Returns the context (switched to real models) and ``[(declaration, plan)]``."""
  decls = kinds.declarations(config)
  ctx = kinds.Context(config=config, data=run_data, workdir=workdir.path,
                      decls={d.name: d for d in decls}, abstract=True)
  _check_devices(config, ctx.runner().num_devices)
  largest, plans = 0, []
  for decl in decls:  # Models read from outside the workdir are read now, outside the traces.
    if decl.external:
      ctx.trained(decl.name)
  for decl in decls:
    plan = kinds.KINDS[decl.kind].plan(ctx, decl)
    if plan.init_state is not None:
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


def _settings(config: Any) -> execute_lib.Settings:
  checked = config.checked_steps if config.get("checks", True) else 0
  return execute_lib.Settings(
      log_every=config.log_every, eval_every=config.eval_every,
      checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints,
      progress_bar=config.progress_bar, tensorboard=config.logging.tensorboard,
      wandb_project=config.logging.wandb, config=config_lib.flatten(config.to_dict()),
      checked_steps=int(checked or 0))


def train_and_evaluate(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs the runs ``config`` declares in ``workdir`` and returns ``results.json``.

  Args:
    config: an ``ml_collections.ConfigDict`` (see :func:`kdjax.train.config.base_config` for
      the keys; missing keys take their defaults). ``config.runs`` declares the runs
      (:mod:`kdjax.train.kinds`); empty, the standard teacher / student / student_kd pipeline.
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
  with lock.WorkdirLock(work.path, is_main=contract.is_main()):
    reusable = {d.name: d.reuse_key() for d in ctx.decls.values() if d.reuse_key()}
    if not work.check_config(config, reusable_runs=reusable):
      work.write_config(config)
    contract.sync("kdjax_workdir_ready")
    work.load_results()
    settings = _settings(config)
    with PreemptionWatch() as watch:
      for decl, plan in plans:
        if not work.finished(decl.name, plan.total_steps):
          if plan.total_steps:  # Refuses a resume whose teacher, data or config changed.
            inputs.check_or_record(work.path, ctx, decl)
          work.record(decl.name, execute_lib.execute(plan, work, settings, watch))
  return dict(work.results)
