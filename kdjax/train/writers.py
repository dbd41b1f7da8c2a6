"""Metric writers: ``metrics.jsonl``, TensorBoard and Weights & Biases, behind one interface.

A writer takes records ``write(step, {name: value}, split)`` where ``split`` is ``'train'`` or
``'eval'`` (CLU's ``metric_writers`` shape). ``metrics.jsonl`` holds one JSON object per line:
training records ``{"step", "loss", ...}`` with full-precision floats (two runs compare
exactly) and evaluation records ``{"step", "split": "eval", "eval": true, "accuracy", ...}``.
A run resumed from step ``s`` first drops the records after ``s`` that the interrupted attempt
wrote, since it writes them again. Only process 0 writes (:func:`make_writer` returns a writer
that does nothing elsewhere).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np

from kdjax import workdir as contract


def plain(value: Any) -> Any:
  """A JSON-ready Python value; non-finite floats become the strings ``"nan"`` / ``"inf"``."""
  if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "__array__"):
    value = np.asarray(value)
    value = value.item() if value.ndim == 0 else value.tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def _truncate_after(path: str, step: int) -> None:
  """Drops records after ``step`` (at step 0: all of them) and lines cut short by a kill."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if step and record.get("step", 0) <= step:
      kept.append(json.dumps(record) + "\n")
  if len(kept) != len(lines):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, path)


class JsonlWriter:
  """``<run_dir>/metrics.jsonl``, resumed at ``start_step``."""

  def __init__(self, run_dir: str, *, start_step: int):
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, contract.METRICS_FILE)
    _truncate_after(path, start_step)
    self._file = open(path, "a")

  def write(self, step: int, record: Mapping[str, Any], split: str = "train") -> None:
    head = {"step": step} if split == "train" else {"step": step, "split": split, "eval": True}
    self._file.write(json.dumps({**head, **{k: plain(v) for k, v in record.items()}}) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class TensorBoardWriter:
  """TensorBoard event files in ``run_dir``; events after ``start_step`` of an interrupted
  attempt are purged.

  Events are written in the calling thread (tensorboardX's ``EventsWriter``), not by
  ``SummaryWriter``'s background thread: when that thread dies (a full disk), its bounded queue
  fills and the next ``add_scalar`` -- or the exit handler that closes it -- blocks forever.
  Here a failed write raises in the training loop, which stops the run with one message.
  """

  def __init__(self, run_dir: str, *, start_step: int):
    from tensorboardX import event_file_writer  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
    self._event_pb2 = event_pb2
    self._events = event_file_writer.EventsWriter(os.path.join(run_dir, "events"))
    if start_step:  # TensorBoard hides the records at and after a session start's step.
      self._events.write_event(event_pb2.Event(
          step=start_step, wall_time=time.time(),
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def write(self, step: int, record: Mapping[str, Any], split: str = "train") -> None:
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    now = time.time()
    for key, value in record.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self._events.write_event(self._event_pb2.Event(
            step=int(step), wall_time=now, summary=summary.scalar(f"{split}/{key}", value)))
    if split != "train":
      self._events.flush()

  def close(self) -> None:
    self._events.close()


class WandbWriter:
  """Weights & Biases: one W&B run per kdjax run, grouped by workdir.

  Without an API key (``WANDB_API_KEY`` or a ``wandb login``) it runs in offline mode and keeps
  the run under ``<workdir>/wandb`` for a later ``wandb sync``; no network is needed.
  """

  def __init__(self, run_dir: str, *, run: str, project: str, config: Mapping[str, Any],
               start_step: int):
    try:
      import wandb  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError("config.logging.wandb is set but the wandb package is not installed; "
                        "pip install -e '.[wandb]' (or set config.logging.wandb='')") from None
    workdir = os.path.dirname(os.path.abspath(run_dir))
    mode = "online" if _has_wandb_key() else "offline"
    self._run = wandb.init(project=project, name=run, group=os.path.basename(workdir),
                           dir=workdir, config=dict(config), mode=mode, reinit="create_new",
                           id=f"{os.path.basename(workdir)}-{run}", resume="allow")
    del start_step  # W&B resumes the run by its id; records go to their own steps.

  def write(self, step: int, record: Mapping[str, Any], split: str = "train") -> None:
    values = {f"{split}/{k}": v for k, v in record.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)}
    self._run.log(values, step=step)

  def close(self) -> None:
    self._run.finish()


def _has_wandb_key() -> bool:
  if os.environ.get("WANDB_API_KEY"):
    return True
  netrc = os.path.join(os.path.expanduser("~"), ".netrc")
  return os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read()


class MultiWriter:
  """Writes every record to each of ``writers``."""

  def __init__(self, writers: Sequence[Any]):
    self.writers = tuple(writers)

  def write(self, step: int, record: Mapping[str, Any], split: str = "train") -> None:
    for w in self.writers:
      w.write(step, record, split)

  def close(self) -> None:
    """Closes every writer, even when one fails (a full disk); then raises the first error."""
    error = None
    for w in self.writers:
      try:
        w.close()
      except Exception as e:  # pylint: disable=broad-except
        error = error or e
    if error is not None:
      raise error


def make_writer(run_dir: str, *, run: str, start_step: int, enabled: bool,
                tensorboard: bool = True, wandb_project: str = "",
                config: Mapping[str, Any] | None = None) -> MultiWriter:
  """The writers of one run: jsonl and TensorBoard, plus W&B when ``wandb_project`` is set."""
  if not enabled:
    return MultiWriter(())
  writers: list[Any] = [JsonlWriter(run_dir, start_step=start_step)]
  if tensorboard:
    writers.append(TensorBoardWriter(run_dir, start_step=start_step))
  if wandb_project:
    writers.append(WandbWriter(run_dir, run=run, project=wandb_project, config=config or {},
                               start_step=start_step))
  return MultiWriter(writers)
