r"""``kdjax report``: learning curves and a results table from finished workdirs.

  kdjax report WORKDIR [WORKDIR ...]
  python -m kdjax.report WORKDIR [WORKDIR ...]

Writes two files into the first ``WORKDIR``:

* ``report.png`` -- the learning curves of every run, one panel per metric: the training
  ``loss`` and the evaluation ``accuracy`` (and ``perplexity`` for language-model runs, the
  old-task accuracy for continual-learning runs) against the step;
* ``report.md`` -- the results table (``results.json``) and the figure.

Several workdirs of one config run with different seeds (``--config.seed=1``, ...) are
aggregated: the table gives mean ± standard deviation over the seeds (sample standard deviation,
``n - 1``) and the curves the mean with a ±1 standard deviation band. Workdirs whose configs
differ in more than the seed (and the runtime keys) are still reported, with a note listing the
differences.

Reads only the workdir contract (``results.json``, ``config.json``, ``<run>/metrics.jsonl``, see
docs/training.md), so it works on a workdir copied from another machine, without JAX.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

REPORT_PNG = "report.png"
REPORT_MD = "report.md"
PIPELINE_RUNS = ("teacher", "student", "student_kd")
TABLE_METRICS = ("accuracy", "top5", "macro_f1", "ece", "agreement", "perplexity",
                 "old_accuracy", "new_accuracy")
# Panels: (record kind, metric, title). Training records hold the loss; evaluation records
# (``"eval": true``) the evaluation metrics.
PANELS = (("train", "loss", "training loss (each run's own objective)"),
          ("eval", "accuracy", "evaluation accuracy"),
          ("eval", "perplexity", "evaluation perplexity"),
          ("eval", "old_accuracy", "old-task accuracy (LwF)"))
# Config keys that may differ between the seeds of one experiment.
_IGNORED_CONFIG_KEYS = ("seed", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                        "progress_bar", "parallel", "mesh", "shard_teacher", "shard_student",
                        "data.data_dir", "data.worker_count", "data.eval_batch_size", "checks")


class ReportError(Exception):
  """A workdir that cannot be reported; the message names the fix."""


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise ReportError(f"cannot read {path}: {e}") from e


def read_metrics(path: str) -> list[dict]:
  """The records of a ``metrics.jsonl``; a torn last line (a killed run) is skipped."""
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


def curves(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
  """``{(kind, metric): (steps, values)}`` from metrics records, the last record per step kept."""
  by_key: dict[tuple[str, str], dict[int, float]] = {}
  for record in records:
    if "step" not in record:
      continue
    kind = "eval" if record.get("eval") or record.get("split") == "eval" else "train"
    for metric, value in record.items():
      if metric in ("step", "eval", "split") or isinstance(value, bool):
        continue
      if isinstance(value, (int, float)) and math.isfinite(value):
        by_key.setdefault((kind, metric), {})[int(record["step"])] = float(value)
  return {key: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)]))
          for key, v in by_key.items()}


class Workdir:
  """One finished (or unfinished) workdir: its results, config and per-run curves."""

  def __init__(self, path: str):
    self.path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(self.path):
      raise ReportError(f"{path} is not a directory; pass workdirs of kdjax runs "
                        "(python -m kdjax.main ... --workdir=DIR)")
    self.results = _read_json(os.path.join(self.path, "results.json")) or {}
    self.config = _read_json(os.path.join(self.path, "config.json")) or {}
    runs = list(self.results)
    for name in sorted(os.listdir(self.path)):
      if name not in runs and os.path.isfile(os.path.join(self.path, name, "metrics.jsonl")):
        runs.append(name)  # A run without a results entry yet (unfinished): curves only.
    runs = run_order(self.config, runs)
    self.results = {run: self.results[run] for run in runs if run in self.results}
    if not runs:
      raise ReportError(f"{path} has no results.json and no <run>/metrics.jsonl; is it the "
                        "--workdir of a kdjax run?")
    self.runs = runs
    self.curves = {run: curves(read_metrics(os.path.join(self.path, run, "metrics.jsonl")))
                   for run in runs}


def run_order(config: Mapping[str, Any], runs: Sequence[str]) -> list[str]:
  """``runs`` in the order the config runs them: its declared ``runs``, else the standard
  pipeline (teacher, student, student_kd); runs it does not name keep their order, after."""
  declared = [d.get("name") for d in config.get("runs") or () if isinstance(d, Mapping)]
  order = declared or list(PIPELINE_RUNS)
  rank = {name: i for i, name in enumerate(order)}
  return sorted(runs, key=lambda r: (rank.get(r, len(rank)), list(runs).index(r)))


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(_flat(value, name + "."))
    else:
      out[name] = value
  return out


def config_differences(workdirs: Sequence[Workdir]) -> list[str]:
  """Config keys (other than the seed and runtime keys) whose values differ between workdirs."""
  flats = [_flat(w.config) for w in workdirs]
  keys = sorted(set().union(*flats))
  return [k for k in keys
          if k not in _IGNORED_CONFIG_KEYS and len({json.dumps(f.get(k), sort_keys=True)
                                                    for f in flats}) > 1]


def _rows(results: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
  rows = []
  for run, entry in results.items():
    rows.append((run, entry))
    for k, member in enumerate(entry.get("members", ()) or ()):
      if f"accuracy_{k}" in entry and isinstance(member, Mapping):
        rows.append((f"{run}[{k}]", {**member, "accuracy": entry[f"accuracy_{k}"]}))
  return rows


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
  """Mean and sample standard deviation (``None`` for a single value)."""
  arr = np.asarray(values, dtype=np.float64)
  return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def _fmt(values: Sequence[float], digits: int) -> str:
  if not values:
    return "-"
  mean, std = mean_std(values)
  return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def results_markdown(workdirs: Sequence[Workdir]) -> str:
  """The markdown results table: one row per run, mean ± std over the workdirs."""
  rows: dict[str, list[Mapping[str, Any]]] = {}
  for w in workdirs:
    for run, entry in _rows(w.results):
      rows.setdefault(run, []).append(entry)
  if not rows:
    return "_No results.json yet: the runs have not finished._\n"
  entries = [e for es in rows.values() for e in es]
  metrics = [m for m in TABLE_METRICS if any(isinstance(e.get(m), (int, float)) for e in entries)]
  header = ["run", "model", *metrics, "params", "time_s"]
  if len(workdirs) > 1:
    header.insert(2, "seeds")
  lines = ["| " + " | ".join(header) + " |",
           "| " + " | ".join(["---", "---"] + ["---:"] * (len(header) - 2)) + " |"]
  for run, es in rows.items():
    models = sorted({str(e.get("model", "")) for e in es} - {""})
    cells = [run, ", ".join(models) or "-"]
    if len(workdirs) > 1:
      cells.append(str(len(es)))
    for m in metrics:
      cells.append(_fmt([e[m] for e in es if isinstance(e.get(m), (int, float))], 4))
    params = sorted({int(e["params"]) for e in es if isinstance(e.get("params"), (int, float))})
    cells.append(", ".join(f"{p:,}" for p in params) or "-")
    cells.append(_fmt([e["time_s"] for e in es if isinstance(e.get("time_s"), (int, float))], 1))
    lines.append("| " + " | ".join(cells) + " |")
  gains = []
  for w in workdirs:
    s, kd = w.results.get("student"), w.results.get("student_kd")
    if s and kd:
      key = "perplexity" if "perplexity" in kd else "accuracy"
      if key in s and key in kd:
        gains.append((key, kd[key] - s[key]))
  if gains and len({k for k, _ in gains}) == 1:
    mean, std = mean_std([g for _, g in gains])
    spread = "" if std is None else f" ± {std:.4f} over {len(gains)} seeds"
    better = " (lower perplexity is better)" if gains[0][0] == "perplexity" else ""
    lines += ["", f"Distillation gain (student_kd − student {gains[0][0]}): "
                  f"{mean:+.4f}{spread}{better}."]
  return "\n".join(lines) + "\n"


def _mean_curve(series: Sequence[tuple[np.ndarray, np.ndarray]]):
  """Mean and std over the seeds, on the steps every seed logged."""
  steps = series[0][0]
  for s, _ in series[1:]:
    steps = np.intersect1d(steps, s)
  values = np.stack([v[np.searchsorted(s, steps)] for s, v in series])
  std = values.std(axis=0, ddof=1) if len(series) > 1 else None
  return steps, values.mean(axis=0), std


def plot(workdirs: Sequence[Workdir], path: str) -> list[str]:
  """Draws the learning curves into ``path`` (PNG); returns the panel titles drawn."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top,unused-import

  runs = []
  for w in workdirs:
    runs += [r for r in w.runs if r not in runs]
  panels = [(kind, metric, title) for kind, metric, title in PANELS
            if any((kind, metric) in w.curves.get(r, {}) for w in workdirs for r in runs)]
  if not panels:
    raise ReportError(f"no metrics.jsonl records with a loss or an evaluation metric under "
                      f"{workdirs[0].path}; the runs have not logged anything yet")
  colors = plt.get_cmap("tab10")
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
  for ax, (kind, metric, title) in zip(axes[0], panels):
    for i, run in enumerate(runs):
      series = [w.curves[run][(kind, metric)] for w in workdirs
                if run in w.curves and (kind, metric) in w.curves[run]
                and len(w.curves[run][(kind, metric)][0])]
      if not series:
        continue
      steps, mean, std = _mean_curve(series)
      if not len(steps):  # The seeds logged different steps: draw each one.
        for s, v in series:
          ax.plot(s, v, color=colors(i % 10), linewidth=1, alpha=0.6)
        continue
      marker = "o" if kind == "eval" else None
      label = run if len(series) == 1 else f"{run} (n={len(series)})"
      ax.plot(steps, mean, color=colors(i % 10), label=label, linewidth=1.6, marker=marker,
              markersize=3.5)
      if std is not None:
        ax.fill_between(steps, mean - std, mean + std, color=colors(i % 10), alpha=0.2,
                        linewidth=0)
    values = [v for line in ax.get_lines() for v in line.get_ydata()]
    if metric in ("loss", "perplexity") and values and min(values) > 0 and (
        max(values) / min(values) > 30):
      ax.set_yscale("log")
    ax.set_title(title)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
      ax.legend(fontsize=8, loc="best")
  name = os.path.basename(workdirs[0].path)
  suffix = f" ({len(workdirs)} workdirs)" if len(workdirs) > 1 else ""
  fig.suptitle(f"kdjax report: {name}{suffix}", fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return [title for _, _, title in panels]


def write_report(workdirs: Sequence[str]) -> tuple[str, str]:
  """Writes ``report.png`` and ``report.md`` into ``workdirs[0]``; returns their paths."""
  if not workdirs:
    raise ReportError("pass at least one workdir: kdjax report WORKDIR [WORKDIR ...]")
  loaded = [Workdir(w) for w in workdirs]
  png = os.path.join(loaded[0].path, REPORT_PNG)
  md = os.path.join(loaded[0].path, REPORT_MD)
  plot(loaded, png)
  lines = [f"# kdjax report: {os.path.basename(loaded[0].path)}", ""]
  if len(loaded) > 1:
    seeds = [str(_flat(w.config).get("seed", "?")) for w in loaded]
    lines += [f"{len(loaded)} workdirs (seeds {', '.join(seeds)}); values are mean ± sample "
              "standard deviation over them.", ""]
    lines += [f"- `{w.path}`" for w in loaded] + [""]
    differences = config_differences(loaded)
    if differences:
      lines += ["**Note:** the configs differ in more than the seed: "
                + ", ".join(f"`{k}`" for k in differences)
                + "; the rows mix different experiments.", ""]
  lines += [results_markdown(loaded), f"![learning curves]({REPORT_PNG})", "",
            "The training loss is each run's own objective (cross-entropy for a run trained on "
            "labels, the weighted distillation objective for a distilled one), so losses of "
            "different runs are not on one scale; compare runs by their evaluation metrics.", ""]
  with open(md, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return png, md


def main(argv: Sequence[str] | None = None) -> int:
  """``kdjax report WORKDIR [WORKDIR ...]``; returns the exit status."""
  parser = argparse.ArgumentParser(
      prog="kdjax report", description="Learning curves (report.png) and the results table "
      "(report.md) of kdjax workdirs, written into the first one. Several workdirs of one "
      "config with different seeds give mean ± std.")
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR")
  args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
  try:
    png, md = write_report(args.workdirs)
  except ReportError as e:
    print(f"kdjax: error: {e}", file=sys.stderr, flush=True)
    return 1
  except OSError as e:
    print(f"kdjax: error: cannot write the report into {args.workdirs[0]}: "
          f"{e.strerror or e}", file=sys.stderr, flush=True)
    return 1
  print(f"report: {png}\nreport: {md}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
