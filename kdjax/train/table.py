"""The comparison table printed at the end of a pipeline, from ``results.json``."""
from __future__ import annotations

from typing import Any, Mapping

from kdjax import workdir as contract

__all__ = ["results_table", "summary_lines"]


def results_table(results: Mapping[str, Mapping[str, Any]]) -> str:
  """A plain-text table of the runs: their metrics, parameter counts and times.

  Columns appear when at least one row has them (``perplexity`` for language models,
  ``old_accuracy`` / ``new_accuracy`` for continual learning); members (of a mutual run, of an
  export) add one row each.
  """
  rows_in = [(name if name in results else f"  {name}", entry)
             for name, entry in contract.result_rows(results)]
  metrics = [m for m in contract.METRICS if any(m in e for _, e in rows_in)]
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
  out += summary_lines(results)
  return "\n".join(out)


def summary_lines(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """The lines under the table: each distillation gain, signed so that + is an improvement
  (lower perplexity is better), and a warning for each loaded teacher that scores below the
  student trained alone."""
  out = []
  for run, baseline, key, gain in contract.distillation_gains(results):
    if key in contract.LOWER_IS_BETTER:
      verdict = "better" if gain > 0 else "worse" if gain < 0 else "no change"
      out.append(f"distillation gain ({run} vs {baseline}, {key}, lower is better): "
                 f"{gain:+.4f} ({verdict})")
    else:
      out.append(f"distillation gain ({run} - {baseline} {key}): {gain:+.4f}")
  for teacher, baseline, key, t, b in contract.weak_teachers(results):
    out += [f"warning: the loaded teacher '{teacher}' ({key} {t:.4f}) scores below "
            f"'{baseline}' trained alone ({b:.4f}):",
            f"  distilling from it is unlikely to help; check what "
            f"{results[teacher]['checkpoint']} was trained on (dataset, classes, normalisation)"]
  return out
