"""A workdir as the pipeline keeps it: the config check, the results record, finished runs.

The names and readers of the workdir contract are :mod:`kdjax.workdir`'s; this module adds what
only a training pipeline does with them: refuse a workdir of another config, record each run's
results entry atomically (in run order) and tell whether a run has finished.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from typing import Any, Mapping

from kdjax import workdir as contract
from kdjax.train import config as config_lib
from kdjax.train.errors import WorkdirError


class Workdir:
  """One workdir: its config check, its results and its run directories."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.path.abspath(os.fspath(path))
    self.results: dict[str, Any] = {}

  def run_dir(self, run: str) -> str:
    return contract.run_dir(self.path, run)

  def checkpoint_dir(self, run: str) -> str:
    return contract.checkpoint_dir(self.path, run)

  def check_writable(self) -> None:
    try:
      os.makedirs(self.path, exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=self.path, prefix=".write-test-"):
        pass
    except OSError as e:
      raise WorkdirError(f"cannot write to --workdir={self.path} ({e.strerror or e}); choose a "
                         "directory you can write to") from None

  def _has_checkpoints(self) -> bool:
    for run in os.listdir(self.path):
      ckpt_dir = self.checkpoint_dir(run)
      if os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir)):
        return True
    return False

  def check_config(self, config: Any, *, reusable_runs: Mapping[str, str] | None = None) -> bool:
    """Refuses a workdir that holds runs of another config; returns whether config.json exists.

    ``reusable_runs``: ``{run: config key}`` of finished runs a new workdir can load instead of
    retraining (the teacher: ``teacher.checkpoint``); the refusal says how when only keys that
    do not concern them differ.
    """
    path = os.path.join(self.path, contract.CONFIG_FILE)
    if not os.path.exists(path):
      if self._has_checkpoints():
        raise WorkdirError(
            f"--workdir={self.path} holds checkpoints but no {contract.CONFIG_FILE}, so kdjax "
            "cannot tell which config they belong to; use a new --workdir (nothing was changed)")
      return False
    try:
      saved = contract.read_json(path)
    except contract.UnreadableFile as e:
      raise WorkdirError(f"{e}; use a new --workdir (nothing was changed)") from None
    differing = config_lib.differing_keys(saved, config)
    if not differing:
      return True
    flat_saved = config_lib.flatten(saved)
    flat_now = config_lib.flatten(json.loads(config_lib.to_json(config)))
    shown = ", ".join(f"{k}: {flat_saved.get(k)!r} -> {flat_now.get(k)!r}" for k in differing[:6])
    more = f" and {len(differing) - 6} more" if len(differing) > 6 else ""
    reuse = ""
    for run, key in (reusable_runs or {}).items():
      side = key.split(".")[0]
      finished = (os.path.isdir(self.checkpoint_dir(run)) and
                  run in contract.read_results(self.path))
      if finished and not any(k == side or k.startswith(side + ".") for k in differing):
        reuse = (f"; to keep its trained {run}, run the new config in a new --workdir with "
                 f"--config.{key}={self.run_dir(run)}")
    raise WorkdirError(
        f"--workdir={self.path} holds runs of a different config ({shown}{more}); use a new "
        "--workdir for this config, or run with the workdir's own config.json settings to "
        f"resume it (nothing was changed){reuse}")

  def write_config(self, config: Any) -> None:
    contract.write_json(os.path.join(self.path, contract.CONFIG_FILE),
                        json.loads(config_lib.to_json(config)))

  def load_results(self) -> None:
    self.results = contract.read_results(self.path)

  def record(self, run: str, entry: Mapping[str, Any]) -> None:
    """Adds ``run``'s entry to ``results.json`` (atomically) and waits for every process.

    The file is strict JSON: a metric that is NaN or infinite (the ECE of a model whose
    outputs are NaN) is written as ``null``, and the entry's ``note`` names those metrics.
    """
    entry, non_finite = _finite_or_null(dict(entry))
    if non_finite:
      entry["note"] = (f"not finite (NaN or inf), written as null: {', '.join(non_finite)}")
    self.results[run] = dict(sorted(entry.items()))
    contract.write_json(os.path.join(self.path, contract.RESULTS_FILE), self.results,
                        sort_keys=False)
    contract.sync(f"kdjax_results_{run}")

  def finished(self, run: str, total_steps: int) -> bool:
    """Whether ``run`` has its results entry and (when it trains) its final checkpoint."""
    if run not in self.results:
      return False
    final = os.path.join(self.checkpoint_dir(run), str(total_steps), "state")
    return total_steps == 0 or os.path.isdir(final)


def _finite_or_null(value: Any, path: str = "") -> tuple[Any, list[str]]:
  """``value`` with its non-finite floats replaced by ``None``, and where they were."""
  if isinstance(value, Mapping):
    out, bad = {}, []
    for k, v in value.items():
      out[k], found = _finite_or_null(v, f"{path}.{k}" if path else str(k))
      bad += found
    return out, bad
  if isinstance(value, (list, tuple)):
    out, bad = [], []
    for i, v in enumerate(value):
      item, found = _finite_or_null(v, f"{path}[{i}]")
      out.append(item)
      bad += found
    return out, bad
  if (isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and
      not math.isfinite(value)):
    return None, [path]
  return value, []
