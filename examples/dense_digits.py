r"""Distillation for dense prediction on digit canvases: segmentation (mIoU) and detection (mAP).

For each task this trains a teacher, the student alone and the distilled student with a short
loop around ``kdjax.distill_step`` on the offline ``seg_digits`` / ``det_digits`` datasets, and
prints the test metrics (mean IoU; COCO mAP and mAP@0.5 from pycocotools):

  python examples/dense_digits.py --task seg --seeds 0
  python examples/dense_digits.py --task det --seeds 0
  python examples/dense_digits.py --task both --seeds 0 1 2 --out /tmp/dense.json

``--summarize`` instead reads the ``results.json`` of ``python -m kdjax.main`` workdirs, one per
seed, and prints every run's metrics per seed and their mean +- std (std over seeds, ``ddof=0``):

  python examples/dense_digits.py --summarize /tmp/seg_s0 /tmp/seg_s1 /tmp/seg_s2

Segmentation: ``unet_small`` teacher, ``unet_tiny`` student; the distilled student adds
pixel-wise KD and channel-wise distillation of the logits to its cross-entropy (pair-wise
similarity distillation of the bottleneck, ``--weight pairwise=1``, is off by default); 1200
steps, as in ``configs/segmentation/digits.py`` (at 400 the width-8 student cannot yet tell the
digits apart, and distillation does not help it there).
Detection: ``point_detector_small`` teacher, ``point_detector_tiny`` student; the distilled student
adds teacher-confidence-weighted heatmap KD to its own detection loss (localization distillation
``--weight ld=0.25`` and fine-grained feature imitation ``--weight imitation=0.1`` are off by
default: on seed 0 each lowered the student's mAP); 400 steps. Every model sees the same data
order for a seed. ``--temperature TERM=T`` changes a term's temperature. ``--teacher-dir`` keeps
each trained teacher, so runs that change only the distillation settings (``--no-baseline``)
train the students alone.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

import kdjax
from kdjax import data, metrics, models, objectives
from kdjax.models import zoo

TASKS = {
    "seg": dict(dataset="seg_digits", teacher="unet_small", student="unet_tiny", steps=1200,
                batch=32, lr=3e-3),
    "det": dict(dataset="det_digits", teacher="point_detector_small",
                student="point_detector_tiny", steps=400, batch=32, lr=3e-3),
}


def build(name: str, num_classes: int, input_shape, seed: int, taps=()):
  module = zoo.DENSE_MODELS[name](num_classes=num_classes)
  x = jnp.zeros((1, *input_shape), jnp.float32)
  variables = jax.jit(lambda k, x: module.init(k, x, train=False))(jax.random.key(seed), x)
  return module, models.from_linen(module, variables, taps=taps, name=name)


# Weights of the distillation terms added to the distilled student's own loss (``--weight``).
WEIGHTS = {"pixel_kd": 1.0, "cwd": 3.0, "pairwise": 0.0,
           "heatmap_kd": 1.0, "ld": 0.0, "imitation": 0.0}


# Each task's own loss, and the distillation terms that may be added to it (name -> task, term).
OWN_TERMS = {"seg": {"ce": objectives.cross_entropy()},
             "det": {"det": objectives.point_detection()}}
# Temperatures of the distillation terms that have one (``--temperature``).
TEMPERATURES = {"pixel_kd": 1.0, "cwd": 4.0, "heatmap_kd": 1.0, "ld": 10.0}


def kd_terms():
  """The distillation terms (name -> task, term), at the current :data:`TEMPERATURES`."""
  t = TEMPERATURES
  return {
      "pixel_kd": ("seg", objectives.pixel_kd(temperature=t["pixel_kd"])),
      "cwd": ("seg", objectives.channel_wise_distillation(temperature=t["cwd"])),
      "pairwise": ("seg", objectives.pairwise_similarity_distillation(
          student="stage2", teacher="stage2", nodes=(4, 4))),
      "heatmap_kd": ("det", objectives.heatmap_kd(temperature=t["heatmap_kd"])),
      "ld": ("det", objectives.localization_distillation(temperature=t["ld"])),
      "imitation": ("det", objectives.feature_imitation(
          student="pre_logits", teacher="pre_logits", anchor_sizes=(8.0, 16.0))),
  }


def objective(task: str, distill: bool):
  terms = dict(OWN_TERMS[task])
  if distill:
    terms.update({k: (term, WEIGHTS[k]) for k, (term_task, term) in kd_terms().items()
                  if term_task == task and WEIGHTS[k] > 0})
  return objectives.combine(terms)


def batches(train: dict[str, np.ndarray], batch_size: int, steps: int, seed: int):
  rng = np.random.default_rng(seed)
  n = len(train["image"])
  order = np.empty(0, np.int64)
  for _ in range(steps):
    if len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(n)])
    rows, order = order[:batch_size], order[batch_size:]
    yield {k: v[rows] for k, v in train.items()}


def train(task: str, module, student: models.Model, teacher: models.Model | None,
          distill: bool, train_data, cfg, seed: int):
  example = {k: v[:cfg["batch"]] for k, v in train_data.items()}
  tx = optax.adamw(optax.cosine_decay_schedule(cfg["lr"], cfg["steps"]), weight_decay=1e-4)
  state = kdjax.DistillState.create(student=student, teacher=teacher if distill else None,
                                    objective=objective(task, distill), tx=tx,
                                    rng=jax.random.key(seed), example_batch=example)
  step = jax.jit(kdjax.distill_step, donate_argnums=0)
  last, first_step = {}, None
  for i, batch in enumerate(batches(train_data, cfg["batch"], cfg["steps"], seed)):
    state, last = step(state, batch)
    if i == 0:
      jax.block_until_ready(last)
      first_step = time.time()
  jax.block_until_ready(last)
  per_step = (time.time() - first_step) / max(cfg["steps"] - 1, 1)
  return state, {**{k: float(v) for k, v in last.items()}, "ms_per_step": 1e3 * per_step}


def evaluate_seg(module, state, test, num_classes: int) -> dict[str, float]:
  @jax.jit
  def confusion(x, y):
    logits = module.apply({"params": state.params["student"], **state.student_state}, x,
                          train=False)
    return metrics.confusion_matrix(jnp.argmax(logits, -1), y, num_classes, ignore_label=None)

  total = sum(np.asarray(confusion(test["image"][i:i + 100], test["label"][i:i + 100]))
              for i in range(0, len(test["image"]), 100))
  miou, _ = metrics.mean_iou(total)
  return {"miou": miou, "pixel_accuracy": float(np.trace(total) / total.sum())}


def evaluate_det(module, state, test) -> dict[str, float]:
  @jax.jit
  def detect(x):
    logits, inter = module.apply({"params": state.params["student"], **state.student_state}, x,
                                 train=False, mutable=["intermediates"])
    box_logits = inter["intermediates"]["box_logits"][0]
    return zoo.decode_detections(logits, box_logits, max_detections=20)

  outs = [detect(test["image"][i:i + 100]) for i in range(0, len(test["image"]), 100)]
  boxes, scores, classes = (np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(3))
  return metrics.coco_map(test["boxes"], test["box_classes"], boxes, scores, classes)


def run_task(task: str, seed: int, baseline: bool = True,
             teacher_dir: str | None = None) -> dict[str, dict[str, float]]:
  cfg = TASKS[task]
  dataset = data.get_dataset(cfg["dataset"])
  info = dataset.info
  train_data = dataset.source("train").arrays()
  test = dataset.source("test").arrays()
  if task == "seg":
    teacher_taps, student_taps = ("stage2",), ("stage2",)
    evaluate = lambda module, state: evaluate_seg(module, state, test, info.num_classes)
  else:
    teacher_taps, student_taps = ("box_logits", "pre_logits"), ("box_logits", "pre_logits")
    evaluate = lambda module, state: evaluate_det(module, state, test)
  results = {}
  t_module, teacher = build(cfg["teacher"], info.num_classes, info.input_shape, seed,
                            ("box_logits",) if task == "det" else ())
  cache = (os.path.join(teacher_dir, f"{task}_seed{seed}_steps{cfg['steps']}")
           if teacher_dir else None)
  if cache and os.path.exists(cache + ".msgpack"):
    # The teacher of an earlier run with the same task, seed and steps (training is
    # deterministic, so this is the teacher this run would train).
    with open(cache + ".msgpack", "rb") as f:
      variables = serialization.msgpack_restore(f.read())
    with open(cache + ".json") as f:
      results["teacher"] = json.load(f)
  else:
    start = time.time()
    t_state, last = train(task, t_module, teacher, None, False, train_data, cfg, seed)
    results["teacher"] = {**evaluate(t_module, t_state), "seconds": time.time() - start,
                          "final_loss": last["loss"], "ms_per_step": last["ms_per_step"],
                          "params": models.param_count(t_state.params["student"])}
    variables = {"params": t_state.params["student"], **t_state.student_state}
    if cache:
      os.makedirs(teacher_dir, exist_ok=True)
      with open(cache + ".msgpack", "wb") as f:
        f.write(serialization.msgpack_serialize(jax.device_get(variables)))
      with open(cache + ".json", "w") as f:
        json.dump(results["teacher"], f)
  print(task, "teacher", results["teacher"], flush=True)
  frozen = models.from_linen(t_module, variables, taps=teacher_taps, name=cfg["teacher"])
  for run, distill in (("student", False), ("student_kd", True)):
    if not distill and not baseline:
      continue
    s_module, student = build(cfg["student"], info.num_classes, info.input_shape, seed + 1,
                              student_taps if distill else
                              (("box_logits",) if task == "det" else ()))
    start = time.time()
    s_state, last = train(task, s_module, student, frozen, distill, train_data, cfg, seed)
    results[run] = {**evaluate(s_module, s_state), "seconds": time.time() - start,
                    "final_loss": last["loss"], "ms_per_step": last["ms_per_step"],
                    "params": models.param_count(s_state.params["student"])}
    print(task, run, results[run], flush=True)
  return results


def summarize(workdirs: list[str]) -> None:
  """Prints each run's metrics per workdir (one seed each) and their mean +- std over the
  workdirs, from the ``results.json`` that ``python -m kdjax.main`` writes there."""
  results = []
  for workdir in workdirs:
    with open(os.path.join(workdir, "results.json")) as f:
      results.append(json.load(f))
  runs = [run for run in results[0] if all(run in r for r in results)]
  keys = [k for k in ("miou", "map50", "map", "accuracy") if k in results[0][runs[0]]]
  if "miou" in keys:
    keys.remove("accuracy")  # Pixel accuracy, mostly background: mean IoU is the number.
  for run in runs:
    cells = []
    for key in keys:
      values = [r[run][key] for r in results]
      cells.append(f"{key} {np.mean(values):.4f} +- {np.std(values):.4f} "
                   f"[{', '.join(f'{v:.4f}' for v in values)}]")
    seconds = [r[run]["time_s"] for r in results]
    print(f"{run:11s} " + "  ".join(cells) +
          f"  time_s [{', '.join(f'{v:.0f}' for v in seconds)}]")
  if "student" in runs and "student_kd" in runs:
    for key in keys:
      gains = [r["student_kd"][key] - r["student"][key] for r in results]
      print(f"gain {key}: {np.mean(gains):+.4f} +- {np.std(gains):.4f} "
            f"[{', '.join(f'{g:+.4f}' for g in gains)}]")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--summarize", nargs="+", metavar="WORKDIR", default=None,
                      help="only print mean +- std over these kdjax.main workdirs (one per seed)")
  parser.add_argument("--task", choices=("seg", "det", "both"), default="both")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--steps", type=int, default=None, help="override the steps of every run")
  parser.add_argument("--weight", action="append", default=[], metavar="TERM=W",
                      help=f"weight of a distillation term (0 drops it); defaults: {WEIGHTS}")
  parser.add_argument("--temperature", action="append", default=[], metavar="TERM=T",
                      help=f"temperature of a distillation term; defaults: {TEMPERATURES}")
  parser.add_argument("--no-baseline", action="store_true",
                      help="skip the student alone (when only the distillation weights change)")
  parser.add_argument("--teacher-dir", default=None,
                      help="keep trained teachers here and reuse them (same task, seed, steps)")
  parser.add_argument("--out", default=None, help="write the results as JSON here")
  args = parser.parse_args()
  if args.summarize:
    summarize(args.summarize)
    return
  for item in args.weight:
    name, _, value = item.partition("=")
    if name not in WEIGHTS:
      parser.error(f"--weight {item}: unknown term {name!r}; terms: {sorted(WEIGHTS)}")
    WEIGHTS[name] = float(value)
  for item in args.temperature:
    name, _, value = item.partition("=")
    if name not in TEMPERATURES:
      parser.error(f"--temperature {item}: unknown term {name!r}; terms with a temperature: "
                   f"{sorted(TEMPERATURES)}")
    TEMPERATURES[name] = float(value)
  if args.steps:
    for cfg in TASKS.values():
      cfg["steps"] = args.steps
  tasks = ("seg", "det") if args.task == "both" else (args.task,)
  results = {task: {seed: run_task(task, seed, not args.no_baseline, args.teacher_dir)
                    for seed in args.seeds} for task in tasks}
  for task in tasks:
    keys = ("miou",) if task == "seg" else ("map50", "map")
    for run in ("teacher", "student", "student_kd"):
      if run not in results[task][args.seeds[0]]:
        continue
      cells = []
      for key in keys:
        values = [results[task][s][run][key] for s in args.seeds]
        cells.append(f"{key} {np.mean(values):.4f}" + (f" +- {np.std(values):.4f}"
                                                       if len(values) > 1 else ""))
      seconds = np.mean([results[task][s][run]["seconds"] for s in args.seeds])
      print(f"{task:4s} {run:11s} " + "  ".join(cells) + f"  ({seconds:.0f} s)")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
