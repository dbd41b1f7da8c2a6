"""What transferred: per-class and calibration panels, and prediction overlays, from a workdir.

Drawn from each run's ``<run>/predictions.npz`` (:mod:`kdjax.train.predictions`, read through
:func:`kdjax.workdir.read_predictions`) into ``transfer.png``:

* classification: per-class accuracy of the teacher, the student alone and the distilled
  student; their agreement with the teacher by class; a reliability diagram (accuracy against
  confidence in equal-width bins, with the expected calibration error of each run);
* segmentation: the first validation examples with their ground-truth masks and the teacher's,
  the student alone's and the distilled student's predicted masks over them;
* detection: the same examples with the ground-truth boxes and each run's detections (class and
  score; of detections overlapping by IoU > 0.5, whatever their classes, the best one).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np

from kdjax import workdir as contract
from kdjax.train import evaluation

TRANSFER_PNG = "transfer.png"
ECE_BINS = evaluation.ECE_BINS  # The bins of the evaluation's ``ece``.
SCORE_THRESHOLD = 0.3  # Detections drawn: score at least this.
MAX_BOXES = 10  # Detections drawn per image, at most.
OVERLAP = 0.5  # A detection overlapping a better one by more IoU than this is not drawn.
MAX_RUNS = 6  # Runs a panel compares, at most.
DPI = 100  # Figure and file alike, so a panel's box in the figure is its box in the PNG.
ROLE_LABELS = {"teacher": "teacher", "alone": "alone", "distilled": "distilled"}
PANEL_TITLES = {"per_class": "per-class accuracy",
                "agreement": "agreement with the teacher by class",
                "reliability": "reliability diagram"}


@dataclasses.dataclass(frozen=True)
class Panel:
  """A drawn panel: its title and its box in the PNG's pixels (``left, top, right, bottom``,
  rows counted from the top)."""

  title: str
  box: tuple[int, int, int, int]


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray,
                       num_classes: int) -> np.ndarray:
  """``[num_classes]``: the fraction of each class's examples predicted as that class (NaN for
  a class with no example)."""
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  total = np.bincount(labels, minlength=num_classes)[:num_classes].astype(np.float64)
  hit = np.bincount(labels[labels == predictions], minlength=num_classes)[:num_classes]
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, hit / np.maximum(total, 1), np.nan)


def agreement_by_class(labels: np.ndarray, predictions: np.ndarray, reference: np.ndarray,
                       num_classes: int) -> np.ndarray:
  """``[num_classes]``: per true class, the fraction of its examples where ``predictions``
  equals ``reference`` (the teacher's predictions), NaN for a class with no example."""
  return per_class_accuracy(labels, np.where(np.asarray(predictions) == np.asarray(reference),
                                             labels, -1), num_classes)


def reliability(confidence: np.ndarray, correct: np.ndarray,
                bins: int = ECE_BINS) -> dict[str, Any]:
  """Calibration of predictions in ``bins`` equal-width confidence bins over ``(0, 1]`` (bin
  ``b`` holds ``(b / bins, (b + 1) / bins]``, as the evaluation's ``ece``).

  Returns:
    ``{'count', 'accuracy', 'confidence'}`` per bin (``[bins]``, NaN in an empty bin) and
    ``'ece'``: ``sum_b n_b / N |accuracy_b - confidence_b|`` (Guo et al., 2017).
  """
  confidence = np.asarray(confidence, np.float64)
  correct = np.asarray(correct, np.float64)
  which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
  count = np.bincount(which, minlength=bins).astype(np.float64)
  hit = np.bincount(which, weights=correct, minlength=bins)
  conf = np.bincount(which, weights=confidence, minlength=bins)
  ece = evaluation.expected_calibration_error(count, hit, conf)
  with np.errstate(invalid="ignore", divide="ignore"):
    return {"count": count, "accuracy": np.where(count > 0, hit / np.maximum(count, 1), np.nan),
            "confidence": np.where(count > 0, conf / np.maximum(count, 1), np.nan), "ece": ece}


def roles(results: Mapping[str, Mapping[str, Any]], runs: Sequence[str],
          inputs: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, str]:
  """``{run: role}``: ``'distilled'`` (an entry naming its ``baseline``), ``'alone'`` (a
  baseline), ``'teacher'`` (a model a distilled run read, per its ``inputs.json``, or a run of
  the ``teacher`` section), ``'other'``; in the order teacher, alone, distilled, other."""
  inputs = inputs or {}
  out: dict[str, str] = {}
  for run in runs:
    entry = results.get(run, {})
    if entry.get("baseline") in runs:
      out[run] = "distilled"
      out.setdefault(entry["baseline"], "alone")
      for model in (inputs.get(run, {}).get("models") or {}):
        if model in runs and model != entry["baseline"]:
          out[model] = "teacher"
  for run in runs:
    if run not in out:
      section = results.get(run, {}).get("model_section")
      out[run] = "teacher" if (section == "teacher" or run == "teacher") else "other"
  rank = ("teacher", "alone", "distilled", "other")
  return {r: out[r] for r in sorted(runs, key=lambda r: (rank.index(out[r]), runs.index(r)))}


def load_predictions(path: str, runs: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
  """``{run: arrays}`` of the runs of workdir ``path`` that saved predictions."""
  out = {}
  for run in runs:
    arrays = contract.read_predictions(contract.predictions_path(path, run))
    if arrays is not None:
      out[run] = arrays
  return out


def _task(predictions: Mapping[str, Mapping[str, np.ndarray]]) -> str | None:
  tasks = [str(p["task"]) for p in predictions.values() if "task" in p]
  return tasks[0] if tasks else None


def _label(run: str, role: str) -> str:
  return run if role == "other" or run == ROLE_LABELS[role] else f"{run} ({ROLE_LABELS[role]})"


def _style(role: str, i: int) -> str:
  fixed = {"teacher": "0.35", "alone": "tab:blue", "distilled": "tab:orange"}
  return fixed.get(role) or ("tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                             "tab:olive")[i % 6]


def transfer_table(workdir: str, results: Mapping[str, Any], runs: Sequence[str],
                   inputs: Mapping[str, Any] | None = None) -> str:
  """Markdown: per-class accuracy of each classification run (teacher, alone, distilled) and its
  ECE from the saved predictions; '' when no run saved classification predictions."""
  preds = load_predictions(workdir, runs)
  preds = {r: p for r, p in preds.items() if str(p["task"]) == "classification"}
  if not preds:
    return ""
  shown = [r for r in roles(results, list(preds), inputs)][:MAX_RUNS]
  k = _num_classes(preds, shown)
  names = _class_names(results, shown, k)
  header = ["class", *shown]
  lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * len(shown)]
  accs = {r: per_class_accuracy(preds[r]["label"], preds[r]["prediction"], k) for r in shown}
  for c in range(k):
    cells = ["-" if np.isnan(accs[r][c]) else f"{accs[r][c]:.4f}" for r in shown]
    lines.append(f"| {names[c]} | " + " | ".join(cells) + " |")
  ece = [f"{reliability(preds[r]['confidence'], preds[r]['label'] == preds[r]['prediction'])['ece']:.4f}"
         for r in shown]
  lines.append("| ECE | " + " | ".join(ece) + " |")
  return "\n".join(lines) + "\n"


def _num_classes(preds, runs) -> int:
  """The classes the runs' predictions span (a class subset keeps the dataset's labels)."""
  return max(max(int(preds[r]["num_classes"]), int(preds[r]["label"].max(initial=-1)) + 1,
                 int(preds[r]["prediction"].max(initial=-1)) + 1) for r in runs)


def _class_names(results, runs, k):
  for r in runs:
    names = results.get(r, {}).get("class_names")
    if names and len(names) >= k:
      return [str(n) for n in names[:k]]
  return [str(c) for c in range(k)]


def plot_transfer(workdir: str, results: Mapping[str, Any], runs: Sequence[str], path: str,
                  inputs: Mapping[str, Any] | None = None) -> list[Panel]:
  """Draws the panels of what transferred into ``path`` (PNG) from the runs' saved predictions;
  returns the panels drawn (none, and no file, when no run saved predictions)."""
  preds = load_predictions(workdir, runs)
  task = _task(preds)
  if task is None:
    return []
  preds = {r: p for r, p in preds.items() if str(p["task"]) == task}
  order = roles(results, list(preds), inputs)
  shown = {r: order[r] for r in list(order)[:MAX_RUNS]}
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  name = os.path.basename(os.path.abspath(workdir))
  if task == "classification":
    fig, titled = _classification(plt, preds, shown, results)
  elif task == "segmentation":
    fig, titled = _overlays(plt, preds, shown, results, boxes=False)
  else:
    fig, titled = _overlays(plt, preds, shown, results, boxes=True)
  fig.suptitle(f"kdjax report: {name}: what transferred ({task})", fontsize=11)
  # A segmentation figure keeps room at the bottom for its class legend.
  fig.tight_layout(rect=(0, 0.06 if task == "segmentation" else 0, 1, 0.98))
  fig.savefig(path, dpi=DPI)
  _, height = fig.canvas.get_width_height()
  panels = []
  for ax, title in titled:
    box = ax.get_window_extent()
    panels.append(Panel(title, (int(box.x0), int(height - box.y1), int(box.x1),
                                int(height - box.y0))))
  plt.close(fig)
  return panels


def _bars(ax, values: Mapping[str, np.ndarray], styles: Mapping[str, tuple[str, str]], names):
  k = len(names)
  width = 0.8 / max(len(values), 1)
  for i, (run, v) in enumerate(values.items()):
    label, color = styles[run]
    ax.bar(np.arange(k) + (i - (len(values) - 1) / 2) * width, np.nan_to_num(v), width,
           label=label, color=color)
  ax.set_xticks(np.arange(k))
  ax.set_xticklabels(names, rotation=45 if max(map(len, names)) > 2 else 0, fontsize=8)
  ax.set_xlabel("class")
  low = min((np.nanmin(v) for v in values.values() if np.isfinite(v).any()), default=0.0)
  ax.set_ylim(max(0.0, min(low, 0.95) - 0.05), 1.01)
  ax.grid(True, axis="y", alpha=0.3)
  ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)


def _classification(plt, preds, shown, results):
  k = _num_classes(preds, shown)
  names = _class_names(results, list(shown), k)
  styles = {r: (_label(r, role), _style(role, i)) for i, (r, role) in enumerate(shown.items())}
  teachers = [r for r, role in shown.items() if role == "teacher"]
  teacher = teachers[0] if teachers else None
  students = [r for r in shown if r != teacher and teacher is not None
              and np.array_equal(preds[r]["label"], preds[teacher]["label"])]
  ncols = 3 if students else 2
  fig, axes = plt.subplots(1, ncols, figsize=(5.6 * ncols, 4.4), squeeze=False, dpi=DPI)
  axes = list(axes[0])
  titled = []
  ax = axes.pop(0)
  _bars(ax, {r: per_class_accuracy(preds[r]["label"], preds[r]["prediction"], k) for r in shown},
        styles, names)
  ax.set_title(PANEL_TITLES["per_class"])
  ax.set_ylabel("accuracy")
  titled.append((ax, PANEL_TITLES["per_class"]))
  if students:
    ax = axes.pop(0)
    _bars(ax, {r: agreement_by_class(preds[r]["label"], preds[r]["prediction"],
                                     preds[teacher]["prediction"], k) for r in students},
          styles, names)
    ax.set_title(PANEL_TITLES["agreement"] + ("" if teacher == "teacher" else f" ({teacher})"))
    ax.set_ylabel("predicted as the teacher predicts")
    titled.append((ax, PANEL_TITLES["agreement"]))
  ax = axes.pop(0)
  ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
  for r in shown:
    rel = reliability(preds[r]["confidence"], preds[r]["label"] == preds[r]["prediction"])
    label, color = styles[r]
    used = rel["count"] > 0
    ax.plot(rel["confidence"][used], rel["accuracy"][used], color=color, linewidth=1, alpha=0.7,
            label=f"{label}: ECE {rel['ece']:.4f}")
    # Marker area in proportion to the examples in the bin: a bin of a few examples is noisy.
    ax.scatter(rel["confidence"][used], rel["accuracy"][used], color=color, alpha=0.8,
               s=4 + 300 * rel["count"][used] / rel["count"].sum())
  ax.set_xlim(0, 1.03)
  ax.set_ylim(0, 1.03)
  ax.set_title(f"{PANEL_TITLES['reliability']} ({ECE_BINS} bins)")
  ax.set_xlabel("confidence (mean of the bin); marker area: examples in the bin")
  ax.set_ylabel("accuracy in the bin")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7, loc="upper left")
  titled.append((ax, PANEL_TITLES["reliability"]))
  return fig, titled


def _display(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.float64)
  lo, hi = image.min(), image.max()
  image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
  return image[..., 0] if image.shape[-1] == 1 else image


def _class_colors(plt, k: int, background: bool = False) -> np.ndarray:
  """``[k, 4]`` RGBA per class: tab10 (gold for its grey) for up to 10 classes besides the
  background (class 0, left clear), else tab20 (whose neighbouring colours are alike)."""
  import matplotlib.colors  # pylint: disable=g-import-not-at-top
  shift = int(background)
  index = np.arange(k) - shift
  if k - shift <= 10:
    colors = plt.get_cmap("tab10")(np.arange(10))
    colors[7] = matplotlib.colors.to_rgba("gold")  # tab10's grey vanishes on grey images.
    return colors[index % 10]
  return plt.get_cmap("tab20")(index % 20)


def _mask_rgba(plt, mask: np.ndarray, k: int, background: bool) -> np.ndarray:
  colors = _class_colors(plt, k, background)
  rgba = colors[np.clip(mask, 0, k - 1)].copy()
  rgba[..., 3] = 0.55
  if background:
    rgba[mask == 0, 3] = 0.0  # Class 0 (background) left clear.
  return rgba


def _overlays(plt, preds, shown, results, *, boxes: bool):
  runs = list(shown)
  first = preds[runs[0]]
  n = min(len(p["image"]) for p in preds.values())
  k = max(int(preds[r]["num_classes"]) for r in runs)
  names = _class_names(results, runs, k)
  columns = [("ground truth", None)] + [(_label(r, shown[r]), r) for r in runs]
  fig, axes = plt.subplots(n, len(columns), figsize=(2.9 * len(columns), 2.9 * n + 0.6),
                           squeeze=False, dpi=DPI)
  titled = []
  for row in range(n):
    image = _display(first["image"][row])
    for col, (title, run) in enumerate(columns):
      ax = axes[row][col]
      ax.imshow(image, cmap="gray", interpolation="nearest")
      source = first if run is None else preds[run]
      if boxes:
        _draw_boxes(ax, plt, source, row, k, names, truth=run is None)
        if run is not None:
          ax.set_xlabel(f"score >= {SCORE_THRESHOLD}, best class per object", fontsize=7)
      else:
        mask = source["label" if run is None else "prediction"][row]
        ax.imshow(_mask_rgba(plt, mask, k, background=names[0] == "background"),
                  interpolation="nearest")
        if run is not None:
          truth = first["label"][row]
          text = f"pixel accuracy {np.mean(mask == truth):.3f}"
          if names[0] == "background" and np.any(truth != 0):  # Mostly background: also without.
            text += f" ({np.mean((mask == truth)[truth != 0]):.3f} off background)"
          ax.set_xlabel(text, fontsize=7)
      ax.set_xticks([])
      ax.set_yticks([])
      panel = f"{title} #{row}"
      if row == 0:
        ax.set_title(title, fontsize=8)
      titled.append((ax, panel))
  if not boxes:
    from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top
    colors = _class_colors(plt, k, names[0] == "background")
    handles = [Patch(color=colors[c], label=names[c]) for c in range(k)
               if not (c == 0 and names[0] == "background")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=7,
               title="classes", title_fontsize=7)
  return fig, titled


def _iou(a, b) -> float:
  """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
  return float(w * h / union) if union > 0 else 0.0


def _draw_boxes(ax, plt, source, row, k, names, *, truth: bool):
  from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top
  colors = _class_colors(plt, k)
  if truth:
    items = [(b, int(c), None) for b, c in zip(source["gt_boxes"][row], source["gt_classes"][row])
             if c >= 0]
  else:
    order = np.argsort(-source["scores"][row], kind="stable")
    items = []
    for i in order:  # Greedy, across classes: one label per object, its best class.
      box, score, c = source["boxes"][row][i], float(source["scores"][row][i]), \
          int(source["classes"][row][i])
      if score >= SCORE_THRESHOLD and c >= 0 and all(_iou(box, b) <= OVERLAP for b, _, _ in items):
        items.append((box, c, score))
    items = items[:MAX_BOXES][::-1]  # The best drawn last, on top.
  for box, c, score in items:
    x0, y0, x1, y1 = (float(v) for v in box)
    color = colors[c % len(colors)]
    # Pixel edges: a box from x0 to x1 covers pixels x0 .. x1 - 1, drawn at their borders.
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                           linewidth=1.5))
    text = names[c] if score is None else f"{names[c]} {score:.2f}"
    ax.text(x0 - 0.5, y0 - 1.0, text, color="white", fontsize=6, va="bottom",
            bbox={"facecolor": color, "alpha": 0.8, "pad": 0.5, "linewidth": 0})
