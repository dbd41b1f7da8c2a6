r"""``kdjax report``: learning curves and a results table from finished workdirs.

  kdjax report WORKDIR [WORKDIR ...]
  python -m kdjax.report WORKDIR [WORKDIR ...]

Writes into ``WORKDIR`` (``--out=DIR``: into ``DIR``):

* ``report.png`` -- the learning curves of every run, one panel per metric: the training
  ``loss`` and the evaluation ``accuracy`` (and ``perplexity`` for language-model runs, the
  old-task accuracy for continual-learning runs) against the step;
* ``transfer.png`` -- what transferred, from each run's saved predictions
  (``<run>/predictions.npz``, :mod:`kdjax.report._panels`): for classification, per-class
  accuracy of the teacher, the student alone and the distilled student, their agreement with
  the teacher by class and a reliability diagram with each run's ECE; for segmentation and
  detection, the masks or boxes of the teacher, the student alone and the distilled student
  over a few validation examples, beside the ground truth;
* ``report.md`` -- the results table (``results.json``), the per-class accuracy table and the
  figures.

Several workdirs of one config run with different seeds (``--config.seed=1``, ...) are
aggregated: the table gives mean ± standard deviation over the seeds (sample standard deviation,
``n - 1``) and the curves the mean with a shaded band of ±1 standard deviation (the figure says
so). That report is ``seeds_report.png`` / ``seeds_report.md`` in the first workdir (or
``--out``), so it never replaces a workdir's own ``report.png``. Workdirs whose configs differ in
more than the seed (and the runtime keys) are still reported, with a note listing the
differences.

Reads only the workdir contract (:mod:`kdjax.workdir`: ``results.json``, ``config.json``,
``<run>/metrics.jsonl``, ``<run>/inputs.json``, ``<run>/predictions.npz``), so it works on a workdir copied from another machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from kdjax import workdir as contract
from kdjax.report._panels import ECE_BINS
from kdjax.report._panels import TRANSFER_PNG
from kdjax.report._panels import Panel
from kdjax.report._panels import agreement_by_class
from kdjax.report._panels import per_class_accuracy
from kdjax.report._panels import plot_transfer
from kdjax.report._panels import reliability
from kdjax.report._panels import roles
from kdjax.report._panels import transfer_table

__all__ = ["ECE_BINS", "PANELS", "Panel", "REPORT_MD", "REPORT_PNG", "ReportError",
           "SEEDS_REPORT_MD", "SEEDS_REPORT_PNG", "TRANSFER_PNG", "WorkdirView",
           "agreement_by_class", "config_differences", "curves", "load", "main", "mean_std",
           "per_class_accuracy", "plot", "plot_transfer", "reliability", "results_markdown",
           "roles", "run_order", "transfer_table", "write_report"]

REPORT_PNG = "report.png"
REPORT_MD = "report.md"
SEEDS_REPORT_PNG = "seeds_report.png"  # Several workdirs: beside, never over, their own reports.
SEEDS_REPORT_MD = "seeds_report.md"
# Panels: (record kind, metric, title). Training records hold the loss; evaluation records
# (``"eval": true``) the evaluation metrics.
PANELS = (("train", "loss", "training loss (each run's own objective)"),
          ("eval", "accuracy", "evaluation accuracy"),
          ("eval", "perplexity", "evaluation perplexity"),
          ("eval", "old_accuracy", "old-task accuracy (LwF)"))
# Config keys that may differ between the seeds of one experiment.
_IGNORED_CONFIG_KEYS = ("seed", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                        "progress_bar", "parallel", "mesh", "shard_teacher", "shard_student",
                        "data.data_dir", "data.worker_count", "data.eval_batch_size",
                        "checked_steps")


class ReportError(Exception):
  """A workdir that cannot be reported; the message names the fix."""


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


@dataclasses.dataclass
class WorkdirView:
  """A workdir as the report reads it: results (in run order), config and each run's curves."""

  path: str
  results: dict[str, Any]
  config: dict[str, Any]
  runs: list[str]
  curves: dict[str, dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]]
  inputs: dict[str, Any] = dataclasses.field(default_factory=dict)  # <run>/inputs.json


def load(path: str) -> WorkdirView:
  """Reads a finished (or unfinished) workdir by the contract (:mod:`kdjax.workdir`)."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise ReportError(f"{path} is not a directory; pass workdirs of kdjax runs "
                      "(python -m kdjax.main ... --workdir=DIR)")
  try:
    results, config = contract.read_results(path), contract.read_config(path)
  except contract.UnreadableFile as e:
    raise ReportError(str(e)) from e
  runs = list(results)
  for name in sorted(os.listdir(path)):
    if name not in runs and os.path.isfile(contract.metrics_path(path, name)):
      runs.append(name)  # A run without a results entry yet (unfinished): curves only.
  if not runs:
    raise ReportError(f"{path} has no {contract.RESULTS_FILE} and no "
                      f"<run>/{contract.METRICS_FILE}; is it the --workdir of a kdjax run?")
  runs = run_order(config, runs)
  inputs = {}
  for run in runs:
    try:
      inputs[run] = contract.read_json(contract.inputs_path(path, run)) or {}
    except contract.UnreadableFile:
      inputs[run] = {}  # Only names the teachers of the panels; the roles fall back.
  return WorkdirView(path=path, results={run: results[run] for run in runs if run in results},
                 config=config, runs=runs,
                 curves={run: curves(contract.read_metrics(contract.metrics_path(path, run)))
                         for run in runs}, inputs=inputs)


def run_order(config: Mapping[str, Any], runs: Sequence[str]) -> list[str]:
  """``runs`` in the order the config declares them (``config.runs``); without declarations
  (the standard pipeline) in the given order, which is ``results.json``'s: the order they ran."""
  declared = [d.get("name") for d in config.get("runs") or () if isinstance(d, Mapping)]
  rank = {name: i for i, name in enumerate(declared)}
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


def config_differences(workdirs: Sequence[WorkdirView]) -> list[str]:
  """Config keys (other than the seed and runtime keys) whose values differ between workdirs."""
  flats = [_flat(w.config) for w in workdirs]
  keys = sorted(set().union(*flats))
  return [k for k in keys
          if k not in _IGNORED_CONFIG_KEYS and len({json.dumps(f.get(k), sort_keys=True)
                                                    for f in flats}) > 1]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
  """Mean and sample standard deviation (``None`` for a single value)."""
  arr = np.asarray(values, dtype=np.float64)
  return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def _fmt(values: Sequence[float], digits: int) -> str:
  if not values:
    return "-"
  mean, std = mean_std(values)
  return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def results_markdown(workdirs: Sequence[WorkdirView]) -> str:
  """The markdown results table: one row per run, mean ± std over the workdirs."""
  rows: dict[str, list[Mapping[str, Any]]] = {}
  for w in workdirs:
    for run, entry in contract.result_rows(w.results):
      rows.setdefault(run, []).append(entry)
  if not rows:
    return "_No results.json yet: the runs have not finished._\n"
  entries = [e for es in rows.values() for e in es]
  metrics = [m for m in contract.METRICS
             if any(isinstance(e.get(m), (int, float)) for e in entries)]
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
  gains = [g for w in workdirs for g in contract.distillation_gains(w.results)]
  if gains and len({(run, base, key) for run, base, key, _ in gains}) == 1:
    run, base, key, _ = gains[0]
    mean, std = mean_std([g for *_, g in gains])
    spread = "" if std is None else f" ± {std:.4f} over {len(gains)} seeds"
    if key in contract.LOWER_IS_BETTER:
      what = f"{base} {key} − {run} {key}; lower {key} is better, so + means {run} is better"
    else:
      what = f"{run} − {base} {key}"
    lines += ["", f"Distillation gain ({what}): {mean:+.4f}{spread}."]
  weak = {(t, b, k) for w in workdirs for t, b, k, _, _ in contract.weak_teachers(w.results)}
  for teacher, base, key in sorted(weak):
    lines += ["", f"**Warning:** the loaded teacher `{teacher}` scores below `{base}` trained "
              f"alone ({key}); distilling from it is unlikely to help: check what its checkpoint "
              "was trained on (dataset, classes, normalisation)."]
  return "\n".join(lines) + "\n"


def _mean_curve(series: Sequence[tuple[np.ndarray, np.ndarray]]):
  """Mean and std over the seeds, on the steps every seed logged."""
  steps = series[0][0]
  for s, _ in series[1:]:
    steps = np.intersect1d(steps, s)
  values = np.stack([v[np.searchsorted(s, steps)] for s, v in series])
  std = values.std(axis=0, ddof=1) if len(series) > 1 else None
  return steps, values.mean(axis=0), std


def plot(workdirs: Sequence[WorkdirView], path: str) -> list[str]:
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
      # Evaluation points, and a curve of one or two points, get markers: a line needs two.
      marker = "o" if kind == "eval" or len(steps) <= 2 else None
      label = run if len(series) == 1 else f"{run} (n={len(series)}, ±1 std)"
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
  if len(workdirs) > 1:
    suffix += "; lines: mean over the workdirs, bands: ±1 standard deviation"
  fig.suptitle(f"kdjax report: {name}{suffix}", fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return [title for _, _, title in panels]


def write_report(workdirs: Sequence[str], out: str | None = None) -> tuple[str, str]:
  """Writes the report of ``workdirs``; returns the paths of its figure and markdown.

  Into ``out`` (default: the first workdir): ``report.png`` / ``report.md`` for one workdir,
  ``seeds_report.png`` / ``seeds_report.md`` for several. For one workdir whose runs saved
  their predictions, also ``transfer.png`` (:func:`plot_transfer`), linked from the markdown.
  """
  if not workdirs:
    raise ReportError("pass at least one workdir: kdjax report WORKDIR [WORKDIR ...]")
  loaded = [load(w) for w in workdirs]
  out = os.path.abspath(out) if out else loaded[0].path
  os.makedirs(out, exist_ok=True)
  png_name, md_name = ((REPORT_PNG, REPORT_MD) if len(loaded) == 1
                       else (SEEDS_REPORT_PNG, SEEDS_REPORT_MD))
  png, md = os.path.join(out, png_name), os.path.join(out, md_name)
  plot(loaded, png)
  lines = [f"# kdjax report: {os.path.basename(loaded[0].path)}", ""]
  if len(loaded) > 1:
    seeds = [str(_flat(w.config).get("seed", "?")) for w in loaded]
    lines += [f"{len(loaded)} workdirs (seeds {', '.join(seeds)}); values are mean ± sample "
              "standard deviation over them; in the figure, lines are the mean and the shaded "
              "bands ±1 standard deviation.", ""]
    lines += [f"- `{w.path}`" for w in loaded] + [""]
    differences = config_differences(loaded)
    if differences:
      lines += ["**Note:** the configs differ in more than the seed: "
                + ", ".join(f"`{k}`" for k in differences)
                + "; the rows mix different experiments.", ""]
  lines += [results_markdown(loaded), f"![learning curves]({png_name})", "",
            "The training loss is each run's own objective (cross-entropy for a run trained on "
            "labels, the weighted distillation objective for a distilled one), so losses of "
            "different runs are not on one scale; compare runs by their evaluation metrics.", ""]
  if len(loaded) == 1:
    lines += _transfer_section(loaded[0], out)
  with open(md, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return png, md


def _transfer_section(view: WorkdirView, out: str) -> list[str]:
  """Draws ``transfer.png`` and returns its markdown ([] when no run saved predictions)."""
  try:
    panels = plot_transfer(view.path, view.results, view.runs, os.path.join(out, TRANSFER_PNG),
                           view.inputs)
    table = transfer_table(view.path, view.results, view.runs, view.inputs)
  except contract.UnreadableFile as e:
    raise ReportError(f"{e}; rerun the run, or delete the file to report without its panels") \
        from e
  if not panels:
    return []
  lines = ["## What transferred", ""]
  if table:
    lines += ["Per-class accuracy on the evaluation split, and each run's expected calibration "
              f"error ({ECE_BINS} equal-width confidence bins), from `<run>/"
              f"{contract.PREDICTIONS_FILE}`:", "", table]
  return lines + [f"![what transferred]({TRANSFER_PNG})", ""]


def main(argv: Sequence[str] | None = None) -> int:
  """``kdjax report WORKDIR [WORKDIR ...]``; returns the exit status."""
  parser = argparse.ArgumentParser(
      prog="kdjax report", description="Learning curves (report.png) and the results table "
      "(report.md) of kdjax workdirs, written into the first one. Several workdirs of one "
      "config with different seeds give mean ± std.")
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR")
  parser.add_argument("--out", default=None, help="directory to write the report into "
                      "(default: the first WORKDIR)")
  args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
  try:
    png, md = write_report(args.workdirs, args.out)
  except ReportError as e:
    print(f"kdjax: error: {e}", file=sys.stderr, flush=True)
    return 1
  except OSError as e:
    print(f"kdjax: error: cannot write the report into {args.workdirs[0]}: "
          f"{e.strerror or e}", file=sys.stderr, flush=True)
    return 1
  transfer = os.path.join(os.path.dirname(png), TRANSFER_PNG)
  with open(md, encoding="utf-8") as f:
    drawn = f"]({TRANSFER_PNG})" in f.read()
  print(f"report: {png}\n" + (f"report: {transfer}\n" if drawn else "") + f"report: {md}",
        flush=True)
  return 0

