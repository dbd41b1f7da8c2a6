"""Step time of the data-parallel distill step over 1, 2, 4, 8 devices, and FSDP memory.

On a CPU-only machine the devices are faked (``--xla_force_host_platform_device_count``), so the
step times show the overhead of partitioning rather than a speed-up: all fake devices share the
same cores. On a GPU/TPU host the same script measures the real devices. Prints JSON lines:

  {"bench": "step", "devices": n, "mode": "jit"|"pmap", "ms_per_step": ..., "examples_per_s": ...}
  {"bench": "fsdp", "fsdp": n, "teacher_bytes_total": ..., "teacher_bytes_per_device_max": ...}

  python benchmarks/scaling.py                 # fakes 8 CPU devices when there is no accelerator
  python benchmarks/scaling.py --teacher resnet32x4 --student resnet8x4 --batch_size 64
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

if "--no_fake_devices" not in sys.argv:
  os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import kdjax  # noqa: E402
from kdjax import models, objectives, parallel  # noqa: E402


def build_state(args, shape, classes):
  kw_t = {"hidden": (1024, 1024)} if args.teacher == "mlp" else {}
  kw_s = {"hidden": (128,)} if args.student == "mlp" else {}
  teacher = models.create(args.teacher, num_classes=classes, input_shape=shape,
                          rng=jax.random.key(0), **kw_t)
  student = models.create(args.student, num_classes=classes, input_shape=shape,
                          rng=jax.random.key(1), **kw_s)
  objective = objectives.combine({"ce": (objectives.cross_entropy(), 0.1),
                                  "kd": (objectives.kd(temperature=4.0), 0.9)})
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((args.batch_size, *shape)).astype(np.float32),
           "label": rng.integers(0, classes, args.batch_size).astype(np.int32)}
  state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                    tx=optax.sgd(0.05, momentum=0.9), rng=jax.random.key(2),
                                    example_batch=batch)
  return state, batch


def time_runner(runner, state, batch, steps):
  state = runner.put_state(state)
  for _ in range(2):  # compile, warm up
    state, m = runner.step(state, batch)
  jax.block_until_ready(m)
  start = time.perf_counter()
  for _ in range(steps):
    state, m = runner.step(state, batch)
  jax.block_until_ready(m)
  return (time.perf_counter() - start) / steps * 1e3


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--teacher", default="mlp")
  parser.add_argument("--student", default="mlp")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--classes", type=int, default=100)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--no_fake_devices", action="store_true")
  args = parser.parse_args()
  shape = (args.image_size, args.image_size, 3)
  state, batch = build_state(args, shape, args.classes)
  platform = jax.devices()[0].platform
  n_max = jax.device_count()
  for n in (1, 2, 4, 8):
    if n > n_max:
      break
    runner = parallel.MeshRunner(parallel.make_mesh(devices=jax.devices()[:n]))
    ms = time_runner(runner, state, batch, args.steps)
    print(json.dumps({"bench": "step", "platform": platform, "mode": "jit", "devices": n,
                      "pair": f"{args.teacher}->{args.student}", "batch_size": args.batch_size,
                      "ms_per_step": round(ms, 3),
                      "examples_per_s": round(args.batch_size / ms * 1e3, 1)}), flush=True)
  if n_max > 1:
    ms = time_runner(parallel.PmapRunner(), state, batch, args.steps)
    print(json.dumps({"bench": "step", "platform": platform, "mode": "pmap", "devices": n_max,
                      "pair": f"{args.teacher}->{args.student}", "batch_size": args.batch_size,
                      "ms_per_step": round(ms, 3),
                      "examples_per_s": round(args.batch_size / ms * 1e3, 1)}), flush=True)
  total = sum(x.nbytes for x in jax.tree.leaves(state.teacher_params))
  for f in (1, 2, 4, 8):
    if f > n_max:
      break
    runner = parallel.MeshRunner(parallel.make_mesh({"data": -1, "fsdp": f}), shard_teacher=f > 1)
    placed = runner.put_state(state)
    per_device = parallel.bytes_per_device(placed.teacher_params)
    ms = time_runner(runner, state, batch, args.steps)
    print(json.dumps({"bench": "fsdp", "platform": platform, "fsdp": f, "devices": n_max,
                      "teacher_bytes_total": total,
                      "teacher_bytes_per_device_max": max(per_device.values()),
                      "fraction": round(max(per_device.values()) / total, 4),
                      "ms_per_step": round(ms, 3)}), flush=True)


if __name__ == "__main__":
  main()
