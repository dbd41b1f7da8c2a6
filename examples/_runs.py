"""What the examples share: a config of ``configs/`` run once per seed, and ``fit`` with logs.

Both ways train on kdjax's one engine:

* :func:`run_config` runs ``configs/<name>.py`` once per seed with
  ``kdjax.train.train_and_evaluate``, each seed in its own workdir ``WORKDIR/seed_<s>``
  (checkpoints, ``metrics.jsonl``, TensorBoard, ``results.json``; the same command on the same
  workdir resumes), and returns each seed's results.
* :func:`fit_distill` trains a ``kdjax.DistillState`` that no config describes with
  ``kdjax.train.fit`` and its actions (NaN guard, ``metrics.jsonl``, evaluation).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax

import kdjax
from kdjax.train import actions

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs")


def parser(doc: str, *, seeds: Sequence[int], **flags: Any) -> argparse.ArgumentParser:
  """A command line with ``--seeds``, ``--workdir`` and ``--<flag>`` per keyword.

  Args:
    doc: the script's docstring; its first line describes the command.
    seeds: the default of ``--seeds``.
    **flags: ``name=default`` or ``name=(default, help)``; the flag's type is its default's.
  """
  p = argparse.ArgumentParser(description=doc.splitlines()[0])
  p.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
  p.add_argument("--workdir", default="",
                 help="where every run writes metrics.jsonl (default: a new temporary "
                      "directory); config runs also keep checkpoints there, and the same "
                      "command on the same workdir resumes them")
  for name, value in flags.items():
    default, help_text = value if isinstance(value, tuple) else (value, None)
    p.add_argument(f"--{name}", type=type(default), default=default, help=help_text)
  return p


def workdir(args: argparse.Namespace, name: str) -> str:
  """``--workdir``, or a new temporary directory named after the example; printed."""
  path = args.workdir or tempfile.mkdtemp(prefix=f"kdjax_{name}_")
  print(f"workdir: {path}", flush=True)
  return path


def get_config(name: str) -> Any:
  """``get_config()`` of ``configs/<name>.py``."""
  path = os.path.join(CONFIGS, name + ".py")
  spec = importlib.util.spec_from_file_location(f"config_{name.replace('/', '_')}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def run_config(name: str, seeds: Sequence[int], path: str,
               override: Callable[[Any], None] | None = None) -> list[dict[str, Any]]:
  """``configs/<name>.py`` (changed by ``override``) per seed; returns each ``results.json``."""
  results = []
  for seed in seeds:
    config = get_config(name)
    config.seed = seed
    if override is not None:
      override(config)
    results.append(kdjax.train.train_and_evaluate(config, os.path.join(path, f"seed_{seed}")))
  return results


def fit_distill(state: kdjax.DistillState, batches: Iterator[Mapping[str, Any]], *, steps: int,
                batch_size: int, run_dir: str,
                evaluate: Callable[[kdjax.DistillState], Mapping[str, float]],
                log_every: int = 50) -> tuple[kdjax.DistillState, dict[str, float]]:
  """Trains ``state`` with ``kdjax.distill_step`` for ``steps`` on ``kdjax.train.fit``.

  Logs to ``run_dir/metrics.jsonl`` every ``log_every`` steps, evaluates at the last step and
  returns the final state and that evaluation.
  """
  run = os.path.basename(run_dir)
  writer = kdjax.train.make_writer(run_dir, run=run, start_step=0, enabled=True,
                                   tensorboard=False)
  final: dict[str, float] = {}

  def evaluate_last(s):
    final.update(evaluate(s))
    return final

  def nonfinite(step, what):
    return FloatingPointError(f"run '{run}': {what} at step {step}")

  try:
    state = kdjax.train.fit(state, jax.jit(kdjax.distill_step), batches, total_steps=steps,
                            actions=[actions.NanGuard(nonfinite),
                                     actions.LogMetrics(writer, every=log_every,
                                                        examples_per_step=batch_size),
                                     actions.Evaluate(evaluate_last, writer, every=0)])
  finally:
    writer.close()
  return state, final
