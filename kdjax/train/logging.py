"""Run logs: ``metrics.jsonl``, TensorBoard events and a progress bar, written by process 0.

``metrics.jsonl`` holds one JSON object per line: training records ``{"step", "loss", ...}``
every ``log_every`` steps, with the step's own metrics as full-precision floats (so two runs can
be compared exactly), and evaluation records ``{"step", "split": "eval", "eval": true,
"accuracy", ...}``. When a run resumes from a checkpoint at step ``s``, records after ``s`` (from
the attempt that was interrupted) are dropped first, because the resumed run writes them again.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import numpy as np

METRICS_FILE = "metrics.jsonl"


def _plain(value: Any) -> Any:
  if isinstance(value, (np.generic, np.ndarray)):
    value = value.item() if np.ndim(value) == 0 else value.tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Infinity; "nan" / "inf" keep the line parseable.
  return value


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The records of a ``metrics.jsonl`` file, in order."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class RunLogger:
  """Writes one run's logs; on processes other than 0 every method does nothing.

  Args:
    run_dir: ``WORKDIR/<run>``.
    run: the run's name (``teacher``, ``student``, ``student_kd``), shown on the progress bar.
    total_steps: the run's last step.
    start_step: the step the run starts (or resumes) from.
    examples_per_step: the global batch size, for the examples/s figure.
    enabled: write anything at all (``jax.process_index() == 0``).
    progress_bar: show a tqdm bar on stderr.
  """

  def __init__(self, run_dir: str, *, run: str, total_steps: int, start_step: int,
               examples_per_step: int, enabled: bool, progress_bar: bool = True):
    self.enabled = enabled
    self.run = run
    self.examples_per_step = examples_per_step
    self._last_time = time.perf_counter()
    self._last_step = start_step
    self._file = None
    self._writer = None
    self._bar = None
    if not enabled:
      return
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, METRICS_FILE)
    _truncate_after(path, start_step)
    self._file = open(path, "a")
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    # purge_step makes TensorBoard drop events after start_step from an interrupted attempt.
    self._writer = SummaryWriter(logdir=run_dir, purge_step=start_step if start_step else None,
                                 flush_secs=10)
    if progress_bar:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total_steps, initial=start_step, desc=run, unit="step",
                       dynamic_ncols=True, mininterval=0.5, file=sys.stderr, leave=True)

  def _write(self, record: Mapping[str, Any]) -> None:
    self._file.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")
    self._file.flush()

  def log_train(self, step: int, metrics: Mapping[str, Any], **extra: Any) -> dict[str, float]:
    """Logs step ``step``'s metrics (host floats) plus throughput; returns the throughput."""
    now = time.perf_counter()
    steps = step - self._last_step
    elapsed = max(now - self._last_time, 1e-9)
    speed = {"steps_per_s": steps / elapsed, "examples_per_s": steps * self.examples_per_step /
             elapsed}
    self._last_time, self._last_step = now, step
    if not self.enabled:
      return speed
    record = {"step": step, **{k: float(v) for k, v in metrics.items()}, **speed, **extra}
    self._write(record)
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)):
        self._writer.add_scalar(f"train/{key}", value, step)
    if self._bar is not None:
      self._bar.set_postfix(loss=f"{float(metrics['loss']):.4f}",
                            steps_s=f"{speed['steps_per_s']:.1f}",
                            ex_s=f"{speed['examples_per_s']:.0f}", refresh=False)
    return speed

  def advance(self, step: int) -> None:
    """Moves the progress bar to ``step``."""
    if self._bar is not None and step > self._bar.n:
      self._bar.update(step - self._bar.n)

  def log_eval(self, step: int, metrics: Mapping[str, Any], split: str = "eval") -> None:
    if not self.enabled:
      return
    self._write({"step": step, "split": split, "eval": True, **metrics})
    for key, value in metrics.items():
      if isinstance(value, (int, float)):
        self._writer.add_scalar(f"{split}/{key}", value, step)
    self._writer.flush()

  def reset_clock(self) -> None:
    """Excludes the time since the last call (evaluation, checkpointing) from the throughput."""
    self._last_time = time.perf_counter()

  def close(self) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.close()
    self._writer.close()
    self._file.close()


def _truncate_after(path: str, step: int) -> None:
  """Drops records after ``step`` (and, at step 0, all records): they will be written again."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # A line cut short by a kill.
      continue
    if step and record.get("step", 0) <= step:
      kept.append(json.dumps(record) + "\n")
  if len(kept) != len(lines):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, path)


def results_table(results: Mapping[str, Mapping[str, Any]]) -> str:
  """A plain-text comparison of the runs in ``results.json``: accuracy, agreement, size, time."""
  columns = ("run", "model", "accuracy", "top5", "macro_f1", "ece", "agreement", "params",
             "time_s")
  rows = []
  for run, entry in results.items():
    row = [run, str(entry.get("model", ""))]
    for key in ("accuracy", "top5", "macro_f1", "ece", "agreement"):
      value = entry.get(key)
      row.append("-" if value is None else f"{value:.4f}")
    row.append(f"{entry['params']:,}" if "params" in entry else "-")
    row.append(f"{entry['time_s']:.1f}" if "time_s" in entry else "-")
    rows.append(row)
  widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
            for i, c in enumerate(columns)]
  line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths)))
  out = [line(columns), line(["-" * w for w in widths])]
  out += [line(r) for r in rows]
  if "student" in results and "student_kd" in results:
    gain = results["student_kd"]["accuracy"] - results["student"]["accuracy"]
    out.append(f"distillation gain (student_kd - student accuracy): {gain:+.4f}")
  return "\n".join(out)
