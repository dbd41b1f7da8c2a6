"""The comparison table printed at the end of a pipeline, from ``results.json``."""
from __future__ import annotations

from typing import Any, Mapping

from kdjax import export as export_lib
from kdjax import workdir as contract

__all__ = ["WIDTH", "results_table", "summary_lines"]


WIDTH = 100  # Columns of a terminal the table fits in; wider tables are split.
# Columns of compression and export runs: a second table when everything does not fit in one.
# The exported artifact's onnxruntime latency (ms) per batch size: ``latency_b1_ms``, ...
_LATENCY = tuple(export_lib.latency_key(b) for b in export_lib.LATENCY_BATCHES)
_DEPLOY = ("ptq_accuracy", "sparsity", "max_abs_diff", "nonzero", "size_bytes", *_LATENCY)
_ARTIFACT = ("max_abs_diff", "size_bytes", *_LATENCY)  # An exported artifact's columns.


def results_table(results: Mapping[str, Mapping[str, Any]], width: int = WIDTH) -> str:
  """A plain-text table of the runs: their metrics, parameter counts and times.

  Columns appear when at least one row has them (``perplexity`` and ``bits_per_byte`` for
  language models, ``old_accuracy`` / ``new_accuracy`` for continual learning); members (of a
  mutual run, of an export) add one row each. A table wider than ``width`` characters is split: the evaluation
  metrics, parameters and time first, then the compression and export columns (accuracy,
  sparsity, post-training quantization accuracy, artifact differences, sizes and onnxruntime
  latencies at batch 1 and 32 in milliseconds) of the rows that have them, each part repeating
  the run column.
  """
  rows_in = [(name if name in results else f"  {name}", entry)
             for name, entry in contract.result_rows(results)]
  metrics = [m for m in contract.METRICS if any(m in e for _, e in rows_in)]
  sizes = [k for k in ("nonzero", "size_bytes") if any(k in e for _, e in rows_in)]
  columns = {"run": [r for r, _ in rows_in],
             "model": [str(e.get("model", "")) for _, e in rows_in]}
  for key in metrics:
    columns[key] = ["-" if e.get(key) is None else
                    f"{e[key]:.2e}" if "diff" in key else f"{e[key]:.4f}" for _, e in rows_in]
  for key in ("params", *sizes):
    columns[key] = [f"{e[key]:,}" if key in e else "-" for _, e in rows_in]
  for key in (k for k in _LATENCY if any(k in e for _, e in rows_in)):
    columns[key] = [f"{e[key]:.3f}" if key in e else "-" for _, e in rows_in]
  columns["time_s"] = [f"{e['time_s']:.1f}" if "time_s" in e else "-" for _, e in rows_in]
  parts = [list(columns)]
  if _width(columns, parts[0]) > width:
    # The deployment parts repeat the accuracy: an artifact's beside its size and latency.
    lead = ["run", *(c for c in columns if c == "accuracy")]
    deploy = [*lead, *(c for c in columns if c in _DEPLOY)]
    parts = [[c for c in columns if c not in _DEPLOY], deploy]
    if _width(columns, deploy) > width:  # Compression, then the artifacts.
      parts[1:] = [[*lead, *(c for c in deploy if c in _DEPLOY and c not in _ARTIFACT)],
                   [*lead, *(c for c in deploy if c in _ARTIFACT)]]
  out = []
  for i, names in enumerate(p for p in parts if any(c in _DEPLOY for c in p) or p is parts[0]):
    shown = [r for r in range(len(rows_in))
             if i == 0 or any(columns[c][r] != "-" for c in names if c in _DEPLOY)]
    out += [""] * bool(out) + _render(columns, names, shown)
  out += summary_lines(results)
  return "\n".join(out)


def _width(columns: Mapping[str, list[str]], names: list[str]) -> int:
  return sum(max(len(n), *map(len, columns[n])) if columns[n] else len(n)
             for n in names) + 2 * (len(names) - 1)


def _render(columns: Mapping[str, list[str]], names: list[str], rows: list[int]) -> list[str]:
  widths = [max(len(n), *(len(columns[n][r]) for r in rows)) if rows else len(n) for n in names]
  line = lambda cells: "  ".join(c.ljust(w) if n in ("run", "model") else c.rjust(w)
                                 for n, c, w in zip(names, cells, widths)).rstrip()
  return ([line(names), line(["-" * w for w in widths])] +
          [line([columns[n][r] for n in names]) for r in rows])


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
