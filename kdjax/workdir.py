"""The workdir contract: file names, run directories and readers, importable without JAX.

```
WORKDIR/
  config.json                  the resolved config
  results.json                 {run: results entry}, in the order the runs ran
  <run>/checkpoints/<step>/    Orbax checkpoints of a run
  <run>/metrics.jsonl          one JSON object per record: {"step": int, "loss": float, ...}
  <run>/events.*               TensorBoard
  <run>/inputs.json            what the run started from: config, data fingerprint, teachers
  <run>/predictions.npz        the final model's predictions on the evaluation split, for
                               ``kdjax report``'s panels (:mod:`kdjax.train.predictions`)
  teacher_cache/<run>/<key>/   a teacher cache, keyed by its fingerprint (when
                               ``config.teacher_cache.dir`` is empty)
  export/                      exported models and their manifest.json (the ``export`` run)
```

Everything that reads or writes a workdir (the run layer, checkpoints, the metric writers,
``kdjax report``, ``kdjax export``) takes its names and readers from here, so a workdir copied
from another machine is read the same way everywhere. Only :func:`is_main` and :func:`sync`
touch JAX, and they import it when called.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

__all__ = [
    "CHECKPOINTS", "CONFIG_FILE", "EXPORT_DIR", "INPUTS_FILE", "LOWER_IS_BETTER", "METRICS",
    "METRICS_FILE", "PREDICTIONS_FILE", "RESULTS_FILE", "TEACHER_CACHE_DIR", "UnreadableFile", "checkpoint_dir",
    "distillation_gains", "headline_metric",
    "inputs_path", "is_main", "metrics_path", "predictions_path", "read_config", "read_json",
    "read_metrics", "read_predictions", "read_results", "result_rows", "run_dir", "sync", "weak_teachers", "write_json",
]

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
INPUTS_FILE = "inputs.json"
PREDICTIONS_FILE = "predictions.npz"
CHECKPOINTS = "checkpoints"
EXPORT_DIR = "export"
TEACHER_CACHE_DIR = "teacher_cache"

# The evaluation metrics a results entry may hold, in the order tables show them (a table shows
# those that at least one entry has).
METRICS = ("miou", "map50", "map", "accuracy", "top5", "macro_f1", "ece", "agreement", "perplexity",
           "bits_per_byte", "old_accuracy", "new_accuracy", "ptq_accuracy", "sparsity",
           "max_abs_diff")
# Metrics where lower is better: a gain in them is the baseline's value minus the run's.
LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "ece", "max_abs_diff")


class UnreadableFile(ValueError):
  """A workdir file exists but cannot be read or parsed; the message names the file."""


def run_dir(workdir: str | os.PathLike, run: str) -> str:
  return os.path.join(os.fspath(workdir), run)


def checkpoint_dir(workdir: str | os.PathLike, run: str) -> str:
  return os.path.join(os.fspath(workdir), run, CHECKPOINTS)


def metrics_path(workdir: str | os.PathLike, run: str) -> str:
  return os.path.join(os.fspath(workdir), run, METRICS_FILE)


def inputs_path(workdir: str | os.PathLike, run: str) -> str:
  """``WORKDIR/<run>/inputs.json``: the inputs a run started from (config, data, teachers)."""
  return os.path.join(os.fspath(workdir), run, INPUTS_FILE)


def predictions_path(workdir: str | os.PathLike, run: str) -> str:
  """``WORKDIR/<run>/predictions.npz``: the run's final predictions on the evaluation split."""
  return os.path.join(os.fspath(workdir), run, PREDICTIONS_FILE)


def read_predictions(path: str | os.PathLike) -> dict[str, Any] | None:
  """The arrays of a ``predictions.npz`` (``{name: numpy array}``); ``None`` when there is none.

  Raises:
    UnreadableFile: the file exists but is not a readable ``.npz``.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  try:
    with np.load(os.fspath(path), allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except FileNotFoundError:
    return None
  except (OSError, ValueError, EOFError) as e:
    raise UnreadableFile(f"cannot read {os.fspath(path)}: {e}") from e


def read_json(path: str | os.PathLike) -> Any:
  """The JSON value in ``path``; ``None`` when the file does not exist.

  Raises:
    UnreadableFile: the file exists but is not readable JSON.
  """
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise UnreadableFile(f"cannot read {os.fspath(path)}: {e}") from e


def read_results(workdir: str | os.PathLike) -> dict[str, Any]:
  """``WORKDIR/results.json`` (``{run: entry}`` in run order); empty when there is none yet."""
  return read_json(os.path.join(os.fspath(workdir), RESULTS_FILE)) or {}


def read_config(workdir: str | os.PathLike) -> dict[str, Any]:
  """``WORKDIR/config.json`` as a plain dict; empty when there is none."""
  return read_json(os.path.join(os.fspath(workdir), CONFIG_FILE)) or {}


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The records of a ``metrics.jsonl`` in order; lines cut short by a kill are skipped."""
  records = []
  try:
    with open(path, encoding="utf-8") as f:
      for line in f:
        line = line.strip()
        if not line:
          continue
        try:
          records.append(json.loads(line))
        except ValueError:
          continue
  except FileNotFoundError:
    pass
  return records


def result_rows(results: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
  """``[(row name, entry)]``: each run, then one row per member of its entry (the models of a
  mutual run, ``run[k]``; the exported runs of an export, ``run[name]``)."""
  rows: list[tuple[str, Mapping[str, Any]]] = []
  for run, entry in results.items():
    rows.append((run, entry))
    for k, member in enumerate(entry.get("members", ()) or ()):
      if not isinstance(member, Mapping):
        continue
      label = member.get("run", k)
      rows.append((f"{run}[{label}]", {**member, "accuracy": entry.get(
          f"accuracy_{k}", member.get("accuracy"))}))
  return rows


def headline_metric(metrics: Mapping[str, Any]) -> str:
  """The metric a run is judged by, of those in ``metrics`` (an evaluation or a results entry).

  ``perplexity`` for language models, ``miou`` for segmentation, COCO ``map`` for detection,
  else ``accuracy``; lower is better for those in :data:`LOWER_IS_BETTER`. The distillation gain
  and the best checkpoint a run keeps (``kdjax.train.checkpoint``) follow it.
  """
  return next((k for k in ("perplexity", "miou", "map") if k in metrics), "accuracy")


def distillation_gains(results: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str,
                                                                                float]]:
  """``[(run, baseline, metric, gain)]`` for each run whose entry names its ``baseline``: the
  gain in perplexity for language models, mean IoU for segmentation, COCO mAP for detection,
  else in accuracy, positive when the distilled run is
  better (``baseline - run`` for perplexity, where lower is better)."""
  gains = []
  for run, entry in results.items():
    base = results.get(entry.get("baseline", ""))
    if base is None:
      continue
    key = headline_metric(entry)
    if key in entry and key in base:
      gain = base[key] - entry[key] if key in LOWER_IS_BETTER else entry[key] - base[key]
      gains.append((run, entry["baseline"], key, gain))
  return gains


def weak_teachers(results: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str, float,
                                                                          float]]:
  """``[(teacher, baseline, metric, teacher's value, baseline's value)]``: each loaded teacher
  (an entry with ``checkpoint``) that scores worse than a student trained alone (a run another
  entry names as its ``baseline``), in the teacher's :func:`headline_metric`."""
  weak = []
  baselines = {e["baseline"] for e in results.values() if e.get("baseline") in results}
  for teacher, entry in results.items():
    if "checkpoint" not in entry:
      continue
    key = headline_metric(entry)
    for base in sorted(baselines):
      t, b = entry.get(key), results[base].get(key)
      if t is not None and b is not None and ((t > b) if key in LOWER_IS_BETTER else (t < b)):
        weak.append((teacher, base, key, t, b))
  return weak


def is_main() -> bool:
  """Whether this is process 0, the one that writes files."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across processes (nothing with one process)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def write_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = True) -> None:
  """Atomic write by process 0: a kill leaves the old file or the new one, never half of one."""
  if not is_main():
    return
  path = os.fspath(path)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=sort_keys)
    f.write("\n")
  os.replace(tmp, path)
