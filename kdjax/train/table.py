"""The comparison table printed at the end of a pipeline, from ``results.json``."""
from __future__ import annotations

from typing import Any, Mapping

_METRICS = ("accuracy", "top5", "macro_f1", "ece", "agreement", "perplexity", "old_accuracy",
            "new_accuracy", "ptq_accuracy", "sparsity", "export_accuracy", "export_max_abs_diff")


def results_table(results: Mapping[str, Mapping[str, Any]]) -> str:
  """A plain-text table of the runs: their metrics, parameter counts and times.

  Columns appear when at least one run has them (``perplexity`` for language models,
  ``old_accuracy`` / ``new_accuracy`` for continual learning); a mutual-learning run adds one
  row per member.
  """
  rows_in: list[tuple[str, Mapping[str, Any]]] = []
  for run, entry in results.items():
    rows_in.append((run, entry))
    for k, member in enumerate(entry.get("members", ())):
      if f"accuracy_{k}" in entry:
        rows_in.append((f"  {run}[{k}]", {**member, "accuracy": entry[f"accuracy_{k}"]}))
  metrics = [m for m in _METRICS if any(m in e for _, e in rows_in)]
  sizes = [k for k in ("nonzero", "size_bytes") if any(k in e for _, e in rows_in)]
  columns = ("run", "model", *metrics, "params", *sizes, "time_s")
  rows = []
  for run, entry in rows_in:
    row = [run, str(entry.get("model", ""))]
    for key in metrics:
      value = entry.get(key)
      row.append("-" if value is None else f"{value:.2e}" if "diff" in key else f"{value:.4f}")
    for key in ("params", *sizes):
      row.append(f"{entry[key]:,}" if key in entry else "-")
    row.append(f"{entry['time_s']:.1f}" if "time_s" in entry else "-")
    rows.append(row)
  widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
            for i, c in enumerate(columns)]
  line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths)))
  out = [line(columns), line(["-" * w for w in widths])]
  out += [line(r) for r in rows]
  if "student" in results and "student_kd" in results:
    key = "perplexity" if "perplexity" in results["student_kd"] else "accuracy"
    gain = results["student_kd"][key] - results["student"][key]
    out.append(f"distillation gain (student_kd - student {key}): {gain:+.4f}")
  return "\n".join(out)
