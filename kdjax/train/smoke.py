"""``kdjax --smoke``: any config shrunk to a few steps, to see it run end to end before a long run.

:func:`smoke_config` caps the steps of every run (``total_steps``, ``teacher.total_steps``, the
``steps`` of each ``config.runs`` declaration and of ``config.compress``) at ``steps`` and scales
everything measured in those steps by the same factor, so the shrunk config passes the same
checks as the full one: optimizer warm-ups and step boundaries, objective-term warm-ups (DKD),
``config.stages``, pruning schedules and the log / evaluation / checkpoint intervals. The data,
models and objective are left as they are, so a smoke run exercises the very program the full
run compiles (with ``--config.data.name=synthetic`` it needs no dataset either).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import ml_collections

from kdjax.train import config as config_lib

__all__ = ["SMOKE_STEPS", "smoke_config"]

SMOKE_STEPS = 4  # Enough for a logged step, an evaluation and a checkpoint mid-run.


def _int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _scaled(value: Any, factor: float, *, minimum: int = 0) -> Any:
  """``value`` steps of a run shrunk by ``factor`` (rounded down, so a warm-up stays shorter
  than its run); non-integers (a check will name them) and 0 ("off") are left alone."""
  if not _int(value) or value <= 0:
    return value
  return max(minimum, math.floor(value * factor))


def _shrink(total: Any, steps: int) -> tuple[Any, float]:
  """The shrunk step count of a run of ``total`` steps, and the factor its schedules take."""
  if not _int(total) or total <= 0:
    return total, 1.0
  shrunk = min(total, steps)
  return shrunk, shrunk / total


def _objective(objective: Any, factor: float) -> Any:
  if not isinstance(objective, Mapping):
    return objective
  return {name: ({**term, "warmup_steps": _scaled(term["warmup_steps"], factor)}
                 if isinstance(term, Mapping) and "warmup_steps" in term else term)
          for name, term in objective.items()}


def _optimizer(optimizer: dict[str, Any], factor: float) -> None:
  optimizer["warmup_steps"] = _scaled(optimizer.get("warmup_steps"), factor)
  bounds = optimizer.get("decay_steps")
  if isinstance(bounds, tuple) and all(_int(b) for b in bounds):
    optimizer["decay_steps"] = tuple(_scaled(b, factor, minimum=1) for b in bounds)


def _stages(stages: Any, total: int) -> Any:
  """Stages squeezed into ``total`` steps: one step each, the last (0: "until the end") kept."""
  if not isinstance(stages, tuple) or not stages or not _int(total):
    return stages
  out = []
  for i, stage in enumerate(stages):
    if not isinstance(stage, Mapping) or not _int(stage.get("steps")):
      return stages
    last = i == len(stages) - 1
    out.append({**stage, "steps": 0 if last and stage["steps"] == 0 else 1})
  return tuple(out) if len(out) <= total else stages


def smoke_config(config: Any, steps: int = SMOKE_STEPS) -> ml_collections.ConfigDict:
  """``config`` with every run cut to at most ``steps`` steps and its schedules scaled to fit.

  Args:
    config: a config file's ``ConfigDict`` (or a mapping of the keys it sets), before
      :func:`kdjax.train.config.resolve`.
    steps: the most steps any run trains (>= 1).

  Returns:
    A new ``ConfigDict`` (``config`` is not changed): ``total_steps``, ``teacher.total_steps``,
    ``compress.steps`` and each ``config.runs`` entry's ``steps`` at most ``steps``; each
    optimizer's ``warmup_steps`` and ``decay_steps``, the objective terms' ``warmup_steps`` (of
    ``config.objective`` and of each run's own ``objective``), ``config.stages``, the pruning
    schedule and ``log_every`` / ``eval_every`` / ``checkpoint_every`` scaled by the factor
    their run was shrunk by (``log_every`` at least 1, the evaluation and checkpoint intervals
    at least half the shrunk ``total_steps``).

  Example::

    config = smoke_config(get_config())           # what `kdjax --smoke` runs
    kdjax.train.train_and_evaluate(config, "/tmp/smoke")
  """
  if not _int(steps) or steps < 1:
    raise ValueError(f"smoke steps must be an integer >= 1, got {steps!r}")
  c = config_lib.plain(config_lib.resolve(config))  # Every key, references followed.
  student_total = c["total_steps"]
  c["total_steps"], factor = _shrink(student_total, steps)
  c["teacher"]["total_steps"], teacher_factor = _shrink(c["teacher"]["total_steps"], steps)
  _optimizer(c["optimizer"], factor)
  _optimizer(c["teacher"]["optimizer"], teacher_factor)
  c["objective"] = _objective(c["objective"], factor)
  c["stages"] = _stages(c["stages"], c["total_steps"])
  c["log_every"] = _scaled(c["log_every"], factor, minimum=1)
  for name in ("eval_every", "checkpoint_every"):  # At most one mid-run evaluation and save.
    c[name] = _scaled(c[name], factor, minimum=max(1, c["total_steps"] // 2))
  compress = c["compress"]
  run_steps = compress["steps"] or student_total
  compress_steps, compress_factor = _shrink(run_steps, steps)
  if compress["steps"]:
    compress["steps"] = compress_steps
  for name in ("prune_begin", "prune_end"):
    compress[name] = _scaled(compress[name], compress_factor)
  compress["prune_frequency"] = _scaled(compress["prune_frequency"], compress_factor, minimum=1)
  runs = []
  for run in c["runs"]:
    if isinstance(run, Mapping):
      run = dict(run)
      run_factor = factor
      if _int(run.get("steps")) and run["steps"] > 0:
        run["steps"], run_factor = _shrink(run["steps"], steps)
      if "objective" in run:
        run["objective"] = _objective(run["objective"], run_factor)
    runs.append(run)
  c["runs"] = tuple(runs)
  return ml_collections.ConfigDict(c)
