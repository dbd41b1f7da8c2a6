"""The workdir contract: ``config.json``, ``results.json`` and one directory per run.

```
WORKDIR/
  config.json            the resolved config; a different config in a used workdir is refused
  results.json           {run: final evaluation}, written atomically after each run
  <run>/checkpoints/     Orbax checkpoints of the run
  <run>/metrics.jsonl    training and evaluation records
```
Only process 0 writes files here; every process takes part in checkpointing.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping

import jax
from jax.experimental import multihost_utils

from kdjax.train import config as config_lib
from kdjax.train.errors import WorkdirError

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"


def is_main() -> bool:
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across processes (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def write_json(path: str, obj: Any) -> None:
  """Atomic write by process 0: a kill leaves the old file or the new one, never half of one."""
  if not is_main():
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def read_results(workdir: str | os.PathLike) -> dict[str, Any]:
  """``WORKDIR/results.json`` as a dict (empty when there is none yet)."""
  path = os.path.join(workdir, RESULTS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


class Workdir:
  """One workdir: its config check, its results and its run directories."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.path.abspath(os.fspath(path))
    self.results: dict[str, Any] = {}

  def run_dir(self, run: str) -> str:
    return os.path.join(self.path, run)

  def checkpoint_dir(self, run: str) -> str:
    return os.path.join(self.path, run, "checkpoints")

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
    path = os.path.join(self.path, CONFIG_FILE)
    if not os.path.exists(path):
      if self._has_checkpoints():
        raise WorkdirError(
            f"--workdir={self.path} holds checkpoints but no {CONFIG_FILE}, so kdjax cannot tell "
            "which config they belong to; use a new --workdir (nothing was changed)")
      return False
    try:
      with open(path) as f:
        saved = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise WorkdirError(f"cannot read {path} ({e}); use a new --workdir (nothing was "
                         "changed)") from None
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
      finished = os.path.isdir(self.checkpoint_dir(run)) and run in read_results(self.path)
      if finished and not any(k == side or k.startswith(side + ".") for k in differing):
        reuse = (f"; to keep its trained {run}, run the new config in a new --workdir with "
                 f"--config.{key}={self.run_dir(run)}")
    raise WorkdirError(
        f"--workdir={self.path} holds runs of a different config ({shown}{more}); use a new "
        "--workdir for this config, or run with the workdir's own config.json settings to "
        f"resume it (nothing was changed){reuse}")

  def write_config(self, config: Any) -> None:
    write_json(os.path.join(self.path, CONFIG_FILE), json.loads(config_lib.to_json(config)))

  def load_results(self) -> None:
    self.results = read_results(self.path)

  def record(self, run: str, entry: Mapping[str, Any]) -> None:
    """Adds ``run``'s entry to ``results.json`` (atomically) and waits for every process."""
    self.results[run] = dict(entry)
    write_json(os.path.join(self.path, RESULTS_FILE), self.results)
    sync(f"kdjax_results_{run}")

  def finished(self, run: str, total_steps: int) -> bool:
    """Whether ``run`` has its results entry and its final checkpoint."""
    if run not in self.results:
      return False
    return os.path.isdir(os.path.join(self.checkpoint_dir(run), str(total_steps), "state"))
