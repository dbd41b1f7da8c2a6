"""Cost of one ``several_students`` run of N students against N separate ``distill`` runs.

The setup is ``configs/strategies/several_students.py`` (digits; a ``cnn_small`` teacher of
width 32; students ``mlp_8``, ``mlp_64``, ``cnn_4``), the teacher trained once and loaded by
every variant. For N in ``--students`` it measures, in interleaved repetitions (the order of
the two variants alternates):

* step time: the steady-state training step (after warm-up, batches already loaded, each
  step's loss fetched as the training loop does): the several-students step against the sum of
  the N separate ``distill`` steps, in wall time and in CPU time of the process (all threads;
  on a shared, loaded machine the CPU time is the steadier of the two);
* total: ``kdjax.train.train_and_evaluate`` end to end (compilation, data, final evaluation,
  checkpoints) of the one run against the N runs, in fresh workdirs: wall time and CPU time
  of the process (all threads).

Each measurement prints one JSON line; the last lines give the medians and their ratio
(several / separate: below 1 is cheaper).

  python benchmarks/several_students.py                      # N = 2 and 3, 3 repetitions
  python benchmarks/several_students.py --students 3 --repeats 5 --steps 500
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import statistics
import tempfile
import time

import jax

from kdjax import train
from kdjax.train import pipeline
from kdjax.train.ledger import Workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "strategies", "several_students.py")


def _config():
  spec = importlib.util.spec_from_file_location("several_students_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _students(config):
  """The config's student declarations (dicts with name and model)."""
  return [dict(s) for s in dict(config.runs[1])["students"]]


def _variant(base, teacher_dir: str, n: int, several: bool, steps: int):
  """The config of one variant: the first ``n`` students in one run, or one run each (a
  ``distill`` run takes ``config.optimizer``: a student's own learning rate changes no cost)."""
  config = _config()
  config.total_steps = steps
  config.eval_every = 0
  config.checkpoint_every = steps
  config.progress_bar = False
  config.logging.tensorboard = False
  config.teacher.checkpoint = teacher_dir
  students = _students(base)[:n]
  teacher = {"name": "teacher", "kind": "load"}
  if several:
    config.runs = (teacher, {"name": "students", "kind": "several_students",
                             "teachers": ("teacher",), "students": tuple(students)})
  else:
    config.runs = (teacher, *({"name": s["name"], "kind": "distill", "model": s["model"],
                               "teachers": ("teacher",)} for s in students))
  return config


def _cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _train_teacher(root: str, steps: int) -> str:
  config = _config()
  config.teacher.total_steps = steps
  config.progress_bar = False
  config.logging.tensorboard = False
  config.runs = (config.runs[0],)
  workdir = os.path.join(root, "teacher_workdir")
  train.train_and_evaluate(config, workdir)
  return os.path.join(workdir, "teacher")


def step_ms(config, root: str, timed_steps: int, warmup: int = 3) -> tuple[float, float]:
  """(wall, CPU) milliseconds per batch of the config's training runs' steps, summed over its
  runs; the CPU time counts every thread of the process, and not the time spent waiting for a
  core on a shared machine."""
  config, data = pipeline.resolve(config)
  _, plans = pipeline.plan_all(config, data, Workdir(os.path.join(root, "unused")))
  total = total_cpu = 0.0
  for _, plan in plans:
    if not plan.total_steps:
      continue
    runner = plan.make_runner()
    state = runner.put_state(plan.init_state())
    iterator = plan.data.train_iterator(seed=plan.seed, batch_size=plan.batch_size)
    batches = [next(iterator) for _ in range(warmup + timed_steps)]
    iterator.close()
    for batch in batches[:warmup]:
      state, metrics = runner.step(state, batch)
    jax.block_until_ready(metrics["loss"])
    start, cpu = time.perf_counter(), time.process_time()
    for batch in batches[warmup:]:
      state, metrics = runner.step(state, batch)
      float(metrics["loss"])  # The loop reads each step's loss (NaN guard, logs).
    total += (time.perf_counter() - start) / timed_steps * 1e3
    total_cpu += (time.process_time() - cpu) / timed_steps * 1e3
  return total, total_cpu


def end_to_end(config, root: str) -> tuple[float, float]:
  """(wall s, CPU s) of ``train_and_evaluate`` in a fresh workdir."""
  workdir = tempfile.mkdtemp(dir=root)
  wall, cpu = time.perf_counter(), _cpu_s()
  train.train_and_evaluate(config, workdir)
  wall, cpu = time.perf_counter() - wall, _cpu_s() - cpu
  shutil.rmtree(workdir, ignore_errors=True)
  return wall, cpu


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--students", default="2,3", help="student counts N, comma-separated")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--steps", type=int, default=300, help="steps of each end-to-end run")
  parser.add_argument("--timed_steps", type=int, default=100, help="steps timed per step time")
  parser.add_argument("--teacher_steps", type=int, default=200)
  parser.add_argument("--dir", default="", help="scratch directory (default: a temporary one)")
  args = parser.parse_args()
  root = args.dir or tempfile.mkdtemp(prefix="kdjax_several_bench_")
  os.makedirs(root, exist_ok=True)
  print(json.dumps({"load_average": os.getloadavg(), "cpus": os.cpu_count(),
                    "devices": [str(d) for d in jax.devices()]}), flush=True)
  base = _config()
  teacher_dir = _train_teacher(root, args.teacher_steps)
  counts = [int(n) for n in args.students.split(",")]
  found: dict[tuple[int, str, str], list[float]] = {}
  for rep in range(args.repeats):
    for n in counts:
      order = (False, True) if rep % 2 == 0 else (True, False)
      for several in order:
        variant = "several" if several else "separate"
        config = _variant(base, teacher_dir, n, several, args.steps)
        ms, cpu_ms = step_ms(config, root, args.timed_steps)
        wall, cpu = end_to_end(config, root)
        values = {"step_ms": ms, "step_cpu_ms": cpu_ms, "total_s": wall, "total_cpu_s": cpu}
        for key, value in values.items():
          found.setdefault((n, variant, key), []).append(value)
        print(json.dumps({"rep": rep, "students": n, "variant": variant,
                          **{k: round(v, 3) for k, v in values.items()}}), flush=True)
  for n in counts:
    summary = {"students": n, "repeats": args.repeats, "steps": args.steps}
    for key in ("step_ms", "step_cpu_ms", "total_s", "total_cpu_s"):
      sep = statistics.median(found[(n, "separate", key)])
      sev = statistics.median(found[(n, "several", key)])
      summary.update({f"{key}_separate": round(sep, 3), f"{key}_several": round(sev, 3),
                      f"{key}_ratio": round(sev / sep, 3)})
    print(json.dumps({"median": summary}), flush=True)
  print(json.dumps({"load_average": os.getloadavg()}), flush=True)
  if not args.dir:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
