"""Distil a character-level Transformer language model, offline, on a CPU.

The text is a fixed list of modules from the Python standard library's own source (about 320 KB,
``config.data.name = 'text:stdlib'``; the exact text, and so the numbers, depend on the Python
version). Bytes are the tokens; the last 10% is the validation split. For each seed the script
runs ``configs/lm/distill.py`` with ``kdjax.train.train_and_evaluate``:

* ``teacher``: a ``transformer_lm`` (d_model 128, 3 layers) with next-token cross-entropy,
* ``student``: a student (d_model 64, 1 layer) alone, with the same loss,
* ``student_kd``: the same student distilled, ``(1 - alpha) CE + alpha token KD`` (T = 1),
  the teacher run inside the step,

and then, on ``kdjax.train.fit``, a run no config describes: ``student_top<k>``, the same
student distilled from a cached top-k teacher (``kdjax.lm.TeacherCache`` of the trained
teacher, k = 8; no teacher forward during training), with the initialisation, optimizer, data
order and evaluation of the config's students, so only the teacher signal differs. It prints
each run's validation perplexity.

  python examples/lm_distill.py --seeds 0 1
"""
from __future__ import annotations

import os
import time

import numpy as np

import kdjax
from kdjax import lm
from kdjax.train import kinds
from kdjax.train import pipeline
from kdjax.train import rundata

import _runs


def cached_topk_run(config, path: str, k: int) -> dict[str, float]:
  """The config's student distilled from a top-``k`` cache of the trained ``teacher`` run."""
  start = time.time()
  config, data = pipeline.resolve(config)
  ctx = kinds.Context(config=config, data=data, workdir=path,
                      decls={d.name: d for d in kinds.declarations(config)})
  cache = lm.TeacherCache.build(ctx.trained("teacher"), data.train["tokens"], k, batch_size=128)
  arrays = cache.attach(data.train)
  kd = config.objective["kd"]
  objective = kdjax.objectives.combine({
      "ce": (lm.token_cross_entropy_term(), config.objective["ce"]["weight"]),
      "kd": (cache.term(temperature=kd["temperature"]), kd["weight"])})
  tx, _, _ = kinds.base.optimizer_of(ctx, ctx.decls["student"], data)
  b = config.batch_size
  state = kdjax.DistillState.create(
      student=ctx.model("student"), teacher=None, objective=objective, tx=tx,
      rng=ctx.key("student", 1), example_batch={key: v[:b] for key, v in arrays.items()},
      input_key="tokens", label_key="targets")
  runner = ctx.runner()
  _, final = _runs.fit_distill(
      state, rundata.TokenIterator(arrays, seed=config.seed, batch_size=b),
      steps=config.total_steps, batch_size=b, run_dir=os.path.join(path, f"student_top{k}"),
      evaluate=lambda s: data.evaluate(runner, runner.put_state(s), num_classes=0))
  return {**final, "time_s": time.time() - start}


def main():
  args = _runs.parser(__doc__, seeds=[0], teacher_steps=600, steps=(300, "student steps"),
                      temperature=1.0, alpha=(0.5, "weight of the KD term"),
                      topk=(8, "0 skips the cached top-k run")).parse_args()
  start, cpu_start = time.time(), time.process_time()

  def override(config):
    config.teacher.total_steps = args.teacher_steps
    config.total_steps = args.steps
    config.objective["ce"]["weight"] = 1.0 - args.alpha
    config.objective["kd"]["weight"] = args.alpha
    config.objective["kd"]["temperature"] = args.temperature

  workdir = _runs.workdir(args, "lm")
  table = {}
  for seed, results in zip(args.seeds, _runs.run_config("lm/distill", args.seeds, workdir,
                                                         override)):
    if args.topk:
      config = _runs.get_config("lm/distill")
      config.seed = seed
      override(config)
      results[f"student_top{args.topk}"] = cached_topk_run(
          config, os.path.join(workdir, f"seed_{seed}"), args.topk)
    for name, entry in results.items():
      table.setdefault(name, []).append(entry["perplexity"])
      print(f"seed {seed}  {name:<14} validation perplexity {entry['perplexity']:7.3f}  "
            f"({entry['time_s']:5.1f} s)", flush=True)
  print("mean over seeds " + ", ".join(str(s) for s in args.seeds) + ":")
  for name, ppls in table.items():
    print(f"  {name:<14} {np.mean(ppls):7.3f}")
  better = all(kd < alone for kd, alone in zip(table["student_kd"], table["student"]))
  print(f"distilled student better than student alone on every seed: {better}")
  print(f"total wall time {time.time() - start:.1f} s, process CPU time "
        f"{time.process_time() - cpu_start:.1f} s on {os.cpu_count()} cores")


if __name__ == "__main__":
  main()
