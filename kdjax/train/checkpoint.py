"""Checkpoints with Orbax: async saves, latest-N plus best retention, exact resume.

A checkpoint of a run is ``<run>/checkpoints/<step>/`` with two items (and Orbax's
``metrics``: the metric the best checkpoint is chosen by, ``{}`` when none was evaluated):

- ``state``: the state's own checkpoint tree (``state.checkpoint_tree()``: every trained field
  of a :class:`kdjax.DistillState` or a strategy's state, never the teacher), saved with
  ``StandardSave`` and restored with ``StandardRestore`` into an abstract target built from a
  freshly created state (so arrays come back with the target's shardings).
- ``data``: JSON: the data iterator's position and the run's bookkeeping (elapsed time).

Retention: the ``keep`` latest checkpoints plus the one with the best evaluation in the run's
headline metric (:func:`kdjax.workdir.headline_metric`: ``accuracy``, ``miou``, ``map``, or
``perplexity``, where lower is better), also across a resume (Orbax preservation policies). A
checkpoint that cannot be read falls back to the one before it with a warning; the unreadable
one is moved aside (``corrupt-<step>-<time>``), never deleted.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from kdjax import workdir as contract
from kdjax.train.errors import CheckpointError

_POLICIES = ocp.checkpoint_managers
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


def best_score(metrics: Mapping[str, float]) -> float:
  """The score of a checkpoint that recorded ``{name: value}``; the highest is the best kept.

  ``value``, or ``-value`` for a metric where lower is better
  (:data:`kdjax.workdir.LOWER_IS_BETTER`: ``perplexity``, ``bits_per_byte``...); ``-inf`` for
  a checkpoint saved without an evaluation (``{}``), never the best while one has a metric.
  """
  if not metrics:
    return -math.inf
  (name, value), = metrics.items()
  return -float(value) if name in contract.LOWER_IS_BETTER else float(value)


def abstract(tree: Any) -> Any:
  """Shapes, dtypes and shardings of ``tree``: a restore target that allocates nothing."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
  """The checkpoints of one run.

  Args:
    directory: ``<run>/checkpoints``.
    keep: how many of the latest checkpoints to keep (the best by the metric :meth:`save`
      records is kept as well).
    async_save: write in a background thread while training continues.
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int, async_save: bool = True):
    self.directory = epath.Path(directory)
    if self.directory.is_dir():
      for p in self.directory.iterdir():
        if _TMP_SUFFIX in p.name:
          # Orbax writes into a temporary directory and renames it when complete; one left
          # behind is a save that was interrupted. Orbax removes it below.
          logging.warning("removing %s: an incomplete checkpoint (its save was interrupted); "
                          "the run resumes from the last complete one", p)
    policy = _POLICIES.AnyPreservationPolicy([
        _POLICIES.LatestN(n=keep),
        _POLICIES.BestN(get_metric_fn=best_score, reverse=False, n=1,
                        keep_checkpoints_without_metrics=False),
    ])
    # ``best_fn`` makes Orbax write each checkpoint's metrics beside it, so a resumed run still
    # knows which checkpoint is the best (the policy above decides what is kept).
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, best_fn=best_score, best_mode="max",
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data: Mapping[str, Any],
           metrics: Mapping[str, float] | None = None) -> None:
    """Starts saving ``state`` (host-global; any state with ``checkpoint_tree()``) at ``step``.

    ``metrics``: ``{name: value}``, the one metric the best checkpoint is chosen by (the run's
    headline metric, :func:`best_score`); ``None``: this checkpoint is kept only while it is
    among the latest.
    """
    if metrics is not None and (len(metrics) != 1 or
                                not all(math.isfinite(float(v)) for v in metrics.values())):
      raise ValueError("a checkpoint records one finite metric for the best checkpoint, "
                       f"{{name: value}}; got {dict(metrics)}")
    if step in self.manager.all_steps():
      return
    self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state.checkpoint_tree()),
                                data=ocp.args.JsonSave(dict(data))),
        metrics=dict(metrics or {}), force=True)

  def wait(self) -> None:
    """Blocks until the saves in flight are on disk."""
    self.manager.wait_until_finished()

  def close(self, *, failing: bool = False) -> None:
    """Waits for the saves in flight and stops Orbax's threads.

    ``failing``: the run is already ending with an error (a full disk, say); a save that
    failed as well is not raised again, so the error the run reports is the first one.
    """
    try:
      self.manager.close()
    except Exception as e:  # pylint: disable=broad-except  # Orbax/tensorstore raise many kinds.
      if not failing:
        raise
      logging.warning("closing the checkpoints in %s: %s", self.directory, _one_line(e))

  def restore(self, step: int, state: Any) -> tuple[Any, dict[str, Any]]:
    """The state at ``step``, restored into the shapes and shardings of ``state``."""
    restored = self.manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract(state.checkpoint_tree())),
            data=ocp.args.JsonRestore()))
    return state.from_checkpoint_tree(restored["state"]), dict(restored["data"] or {})

  def restore_data(self, step: int) -> dict[str, Any]:
    """The JSON saved beside the state at ``step`` (data position, bookkeeping) alone."""
    restored = self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
    return dict(restored["data"] or {})

  def restore_latest(self, state: Any) -> tuple[Any, dict[str, Any], int] | None:
    """Restores the newest readable checkpoint into ``state``'s shapes; ``None`` if there is none.

    A checkpoint that fails to restore while an older one restores is unreadable (a damaged or
    half-copied directory): it is moved aside with a warning and the older one is used. When no
    checkpoint restores, nothing is moved and a :class:`CheckpointError` says why.
    """
    steps = self.all_steps()
    failures: list[tuple[int, Exception]] = []
    for step in reversed(steps):
      try:
        restored, data = self.restore(step, state)
      except Exception as e:  # pylint: disable=broad-except  # Orbax/tensorstore raise many kinds.
        failures.append((step, e))
        continue
      for bad_step, error in failures:
        self._quarantine(bad_step, error, fallback=step)
      if failures:
        self.manager.reload()
      return restored, data, step
    if failures:
      details = "; ".join(f"step {s}: {_one_line(e)}" for s, e in failures)
      raise CheckpointError(
          f"none of the checkpoints in {self.directory} can be restored ({details}). They were "
          "written by a different model/optimizer or are damaged; use a new --workdir (nothing "
          "was changed in this one)")
    return None

  def _quarantine(self, step: int, error: Exception, *, fallback: int) -> None:
    source = self.directory / str(step)
    target = self.directory / f"corrupt-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    logging.warning("checkpoint %s cannot be read (%s: %s); moved it to %s and resuming from "
                    "step %d", source, type(error).__name__, _one_line(error, 300), target,
                    fallback)
    if contract.is_main():
      source.rename(target)
    contract.sync(f"kdjax_quarantine_{step}")


def _one_line(error: Exception, limit: int = 300) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:limit]}"


def _step_dirs(path: epath.Path) -> list[epath.Path]:
  steps = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit() and
           ((p / "state").exists())]
  return sorted(steps, key=lambda p: int(p.name))


def find_checkpoint(path: str | os.PathLike) -> epath.Path:
  """The checkpoint step directory that ``path`` names.

  ``path`` may be a step directory (``.../checkpoints/<step>``), a checkpoints directory (its
  latest step) or a run directory holding ``checkpoints/`` (e.g. ``WORKDIR/teacher``).
  """
  p = epath.Path(path)
  if not p.exists():
    raise CheckpointError(
        f"config.teacher.checkpoint={str(path)!r} does not exist; point it at a kdjax teacher "
        "run (WORKDIR/teacher), its checkpoints directory or one step directory, or set it to "
        "'' to train the teacher")
  if (p / contract.CHECKPOINTS).is_dir():
    p = p / contract.CHECKPOINTS
  if (p / "state").is_dir():
    return p
  steps = _step_dirs(p) if p.is_dir() else []
  if not steps:
    raise CheckpointError(
        f"config.teacher.checkpoint={str(path)!r} holds no kdjax checkpoint (expected "
        "<run>/checkpoints/<step>/state); point it at a teacher run directory, its checkpoints "
        "directory or one step directory")
  return steps[-1]


def load_model_variables(path: str | os.PathLike, params: Any, model_state: Any,
                         *, what: str = "config.teacher.checkpoint",
                         fix: str = "") -> tuple[Any, Any]:
  """Reads a trained model's variables (``params['student']``, ``student_state``) from a checkpoint.

  Only those two entries are read (optimizer state and the rest stay on disk). ``params`` and
  ``model_state`` are the freshly initialised variables of the model the checkpoint should
  hold; their shapes and dtypes are the target (``what`` names the checkpoint in messages,
  ``fix`` replaces their advice for a damaged one). A path that is not a kdjax run or checkpoint
  (a Flax ``.msgpack`` file, an Orbax checkpoint of a plain variables tree written elsewhere)
  is read by :func:`kdjax.models.load_variables`.
  """
  p = epath.Path(path)
  if p.exists() and not ((p / contract.CHECKPOINTS).is_dir() or (p / "state").is_dir() or
                         (p.is_dir() and _step_dirs(p))):
    from kdjax import models  # pylint: disable=g-import-not-at-top
    try:
      return models.load_variables(os.fspath(path), params=params, model_state=model_state)
    except ValueError as e:
      raise CheckpointError(f"{what}: {e}") from None
  step_dir = find_checkpoint(path)
  try:
    saved = ocp.StandardCheckpointHandler().metadata(step_dir / "state").tree
    saved = {"params": saved["params"]["student"], "model_state": saved.get("student_state", {})}
  except Exception as e:  # pylint: disable=broad-except  # Orbax/tensorstore raise many kinds.
    raise CheckpointError(
        f"{what}: cannot read the checkpoint in {step_dir} ({_one_line(e)}); " +
        (fix or "point it at a complete kdjax checkpoint (a run's checkpoints/<step> "
         "directory)")) from None
  mismatch = _first_mismatch(saved, {"params": params, "model_state": model_state})
  if mismatch:
    raise CheckpointError(
        f"{what}: the model in {step_dir} does not match config.teacher.model ({mismatch}); set "
        "config.teacher.model, model_kwargs and num_classes to the architecture the checkpoint "
        "was trained with")
  target = {"params": {"student": abstract(params)}, "student_state": abstract(model_state)}
  try:
    restored = ocp.PyTreeCheckpointer().restore(
        step_dir / "state",
        args=ocp.args.PyTreeRestore(item=target,
                                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                    partial_restore=True))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f"{what}: cannot read the model in {step_dir} ({_one_line(e)}); the checkpoint is "
        "damaged; " + (fix or "point it at another step or retrain the teacher")) from None
  return restored["params"]["student"], restored["student_state"]


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): (tuple(x.shape), str(x.dtype)) for path, x in flat}


def _first_mismatch(saved: Any, wanted: Any) -> str:
  saved, wanted = _shapes(saved), _shapes(wanted)
  for key in sorted(set(saved) | set(wanted)):
    if key not in saved:
      return f"it has no {key}"
    if key not in wanted:
      return f"it has {key}, which the configured model does not"
    if saved[key] != wanted[key]:
      return f"{key} is {saved[key][0]} {saved[key][1]} there but {wanted[key][0]} {wanted[key][1]} here"
  return ""
