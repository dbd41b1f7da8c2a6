"""Teacher cache against the online teacher: build time, student epoch time, accuracy.

Timing: resnet32x4 -> resnet8x4 (batch 64, CIFAR recipe: 4-pixel crop + flip, 0.1 CE + 0.9 KD at
T = 4, SGD momentum) on synthetic CIFAR-shaped data (or ``--data``). It builds the cache (all
logits as float16, ``--replay_epochs`` views per example), then times one student epoch with the
online teacher (``jax.jit(kdjax.distill_step)`` with the teacher in the state) and one with the
cache (no teacher in the state, the ``cached_kd`` term, the iterator wrapped by the cache),
alternating ``--repeats`` times in one process and keeping each side's fastest epoch. Compilation
runs before the timed epochs; the timed epochs include loading and augmenting the data.

Accuracy: the quickstart pair (cnn_small teacher trained on digits, mlp(8) student, 0.1 CE +
0.9 KD at T = 2, ``--digits_steps`` steps) distilled online and from the cache, same steps and
data order; test accuracy of both.

Every line printed is JSON; the last is
``{"pair", "online_epoch_s", "cached_epoch_s", "build_s", "speedup", "online_accuracy",
"cached_accuracy"}``.

  python benchmarks/teacher_cache.py                      # a few minutes on 2 quiet CPU cores
  python benchmarks/teacher_cache.py --num_train 1280 --repeats 3
  python benchmarks/teacher_cache.py --data tfds:cifar100 --num_train 0 --skip_accuracy
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import kdjax
from kdjax import data, models, objectives, teacher_cache

CIFAR_AUGMENT = {"crop_padding": 4, "flip": True}


def emit(record: dict) -> None:
  print(json.dumps(record), flush=True)


def kd_objective(temperature: float, cached: bool) -> objectives.Term:
  kd = (objectives.cached_kd(temperature=temperature) if cached else
        objectives.kd(temperature=temperature))
  return objectives.combine({"ce": (objectives.cross_entropy(), 0.1), "kd": (kd, 0.9)})


def make_state(student, teacher, objective, tx, batch):
  return kdjax.DistillState.create(student=student, teacher=teacher, objective=objective, tx=tx,
                                   rng=jax.random.key(0), example_batch=batch)


def time_epoch(step, state, it, steps):
  """``(state, wall seconds, process CPU seconds)`` of ``steps`` steps, data loading included.

  CPU seconds (all threads of this process) are printed too because wall time on a shared
  machine also measures the other processes.
  """
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    state, metrics = step(state, next(it))
  jax.block_until_ready(metrics["loss"])
  return state, time.perf_counter() - start, time.process_time() - cpu


def timing(args) -> dict:
  if args.data == "synthetic":
    dataset = data.SyntheticDataset((32, 32, 3), num_classes=100, num_train=args.num_train,
                                    num_eval=64, name="synthetic_cifar")
  else:
    dataset = data.get_dataset(args.data)
  info = dataset.info
  num_train = info.num_train if not args.num_train or args.data == "synthetic" else min(
      args.num_train, info.num_train)
  steps = num_train // args.batch_size
  shape, classes = info.input_shape, info.num_classes
  teacher = models.create("resnet32x4", num_classes=classes, input_shape=shape,
                          rng=jax.random.key(0))
  student = models.create("resnet8x4", num_classes=classes, input_shape=shape,
                          rng=jax.random.key(1))
  tx = optax.sgd(0.05, momentum=0.9)

  with tempfile.TemporaryDirectory() as directory:
    views = data.make_replay_views(dataset, seed=0, replay_epochs=args.replay_epochs,
                                   augment=CIFAR_AUGMENT)
    start = time.perf_counter()
    cache = teacher_cache.build_teacher_cache(directory, teacher, views, k=args.k or None,
                                              values_dtype="float16",
                                              batch_size=args.build_batch_size,
                                              teacher_config={"model": "resnet32x4"})
    build_s = time.perf_counter() - start  # includes compiling the teacher's forward
    emit({"phase": "build", "build_s": build_s, "views": num_train * args.replay_epochs
          if args.data == "synthetic" else info.num_train * args.replay_epochs,
          "k": cache.k, "values_dtype": str(cache.values.dtype)})

    online_it = data.make_train_iterator(dataset, global_batch_size=args.batch_size, seed=0,
                                         augment=CIFAR_AUGMENT)
    cached_it = cache.wrap(data.make_train_iterator(
        dataset, global_batch_size=args.batch_size, seed=0, augment=CIFAR_AUGMENT,
        replay_epochs=args.replay_epochs))
    step = jax.jit(kdjax.distill_step, donate_argnums=0)
    first_online, first_cached = next(online_it), next(cached_it)
    online = make_state(student, teacher, kd_objective(4.0, False), tx, first_online)
    cached = make_state(student, None, kd_objective(4.0, True), tx, first_cached)
    start = time.perf_counter()
    online, m = step(online, first_online)  # compile
    jax.block_until_ready(m["loss"])
    compile_online = time.perf_counter() - start
    start = time.perf_counter()
    cached, m = step(cached, first_cached)
    jax.block_until_ready(m["loss"])
    compile_cached = time.perf_counter() - start
    emit({"phase": "compile", "online_first_step_s": compile_online,
          "cached_first_step_s": compile_cached})
    online_times, cached_times, online_cpu, cached_cpu = [], [], [], []
    for r in range(args.repeats):
      online, t_online, c_online = time_epoch(step, online, online_it, steps)
      cached, t_cached, c_cached = time_epoch(step, cached, cached_it, steps)
      online_times.append(t_online)
      cached_times.append(t_cached)
      online_cpu.append(c_online)
      cached_cpu.append(c_cached)
      emit({"phase": "epoch", "repeat": r, "steps": steps, "batch_size": args.batch_size,
            "online_epoch_s": t_online, "cached_epoch_s": t_cached,
            "ratio": t_online / t_cached, "online_epoch_cpu_s": c_online,
            "cached_epoch_cpu_s": c_cached, "cpu_ratio": c_online / c_cached})
    online_it.close()
    cached_it.close()
  return {"online_epoch_s": min(online_times), "cached_epoch_s": min(cached_times),
          "build_s": build_s, "online_epoch_cpu_s": min(online_cpu),
          "cached_epoch_cpu_s": min(cached_cpu)}


def digits_accuracy(args) -> dict:
  """The quickstart pair distilled online and from the cache, at equal steps."""
  info = data.get_info("digits")
  shape, classes = info.input_shape, info.num_classes
  augment = {"crop_padding": 1} if args.digits_augment else None
  teacher = models.create("cnn_small", num_classes=classes, input_shape=shape,
                          rng=jax.random.key(0))
  student = models.create("mlp", num_classes=classes, input_shape=shape, rng=jax.random.key(1),
                          hidden=(8,))
  step = jax.jit(kdjax.distill_step, donate_argnums=0)

  # The teacher, trained as in configs/quickstart.py.
  it = data.make_train_iterator("digits", global_batch_size=64, seed=0, augment=augment)
  batch = next(it)
  state = make_state(teacher, None, objectives.cross_entropy(),
                     optax.sgd(optax.cosine_decay_schedule(0.05, args.teacher_steps), 0.9), batch)
  for _ in range(args.teacher_steps):
    state, _ = step(state, batch)
    batch = next(it)
  trained = models.Model(apply=teacher.apply, params=state.params["student"],
                         model_state=state.student_state, name="cnn_small")

  def accuracy(state) -> float:
    correct = total = 0
    for b in data.make_eval_batches("digits", batch_size=368):
      logits, _ = state.student_apply(state.params["student"], state.student_state, b["image"],
                                      train=False, rng=None)
      pred = np.asarray(jnp.argmax(logits.logits, -1))
      correct += int(((pred == b["label"]) & b["mask"]).sum())
      total += int(b["mask"].sum())
    return 100.0 * correct / total

  tx = optax.sgd(optax.cosine_decay_schedule(0.05, args.digits_steps), 0.9)
  results = {"teacher_accuracy": accuracy(state)}
  with tempfile.TemporaryDirectory() as directory:
    views = data.make_replay_views("digits", seed=0, replay_epochs=args.replay_epochs,
                                   augment=augment)
    cache = teacher_cache.build_teacher_cache(directory, trained, views, values_dtype="float16",
                                              teacher_config={"model": "cnn_small"})
    runs = {
        "online": (trained, kd_objective(2.0, False),
                   data.make_train_iterator("digits", global_batch_size=64, seed=0,
                                            augment=augment)),
        "cached": (None, kd_objective(2.0, True), cache.wrap(data.make_train_iterator(
            "digits", global_batch_size=64, seed=0, augment=augment,
            replay_epochs=args.replay_epochs))),
    }
    for name, (t, objective, stream) in runs.items():
      batch = next(stream)
      s = make_state(student, t, objective, tx, batch)
      for _ in range(args.digits_steps):
        s, _ = step(s, batch)
        batch = next(stream)
      stream.close()
      results[f"{name}_accuracy"] = accuracy(s)
  emit({"phase": "digits", "steps": args.digits_steps, "augment": augment, **results})
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default="synthetic",
                      help="'synthetic' (CIFAR-shaped) or any kdjax.data dataset name")
  parser.add_argument("--num_train", type=int, default=320,
                      help="synthetic: examples per epoch (0 with --data: the whole split)")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--build_batch_size", type=int, default=256)
  parser.add_argument("--replay_epochs", type=int, default=4)
  parser.add_argument("--k", type=int, default=0, help="top-k cached (0: all logits)")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--teacher_steps", type=int, default=400)
  parser.add_argument("--digits_steps", type=int, default=500)
  parser.add_argument("--digits_augment", action="store_true",
                      help="1-pixel crop on digits (then the replayed views differ from the "
                      "online run's fresh ones)")
  parser.add_argument("--skip_accuracy", action="store_true")
  args = parser.parse_args()
  emit({"devices": [str(d) for d in jax.devices()], "jax": jax.__version__})
  times = timing(args)
  acc = {"online_accuracy": None, "cached_accuracy": None}
  if not args.skip_accuracy:
    acc = digits_accuracy(args)
  emit({"pair": "resnet32x4->resnet8x4", "online_epoch_s": times["online_epoch_s"],
        "cached_epoch_s": times["cached_epoch_s"], "build_s": times["build_s"],
        "speedup": times["online_epoch_s"] / times["cached_epoch_s"],
        "online_accuracy": acc["online_accuracy"], "cached_accuracy": acc["cached_accuracy"],
        "speedup_cpu": times["online_epoch_cpu_s"] / times["cached_epoch_cpu_s"]})


if __name__ == "__main__":
  main()
