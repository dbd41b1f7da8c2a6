"""The run layer: one training engine, runs declared in the config.

* :func:`fit` -- one loop for any pure step ``(state, batch) -> (state, metrics)`` with the
  periodic work as actions (:mod:`kdjax.train.actions`: checkpoint, evaluate, log, NaN guard,
  preemption, progress).
* :func:`train_and_evaluate` -- every run ``config.runs`` declares (the standard
  teacher / student / student_kd pipeline by default; mutual learning, multi-teacher, LwF,
  born-again chains and LM distillation from the configs in ``configs/``), each on :func:`fit`
  with Orbax checkpoints, exact resume, ``metrics.jsonl``, TensorBoard and W&B. The run kinds
  are :mod:`kdjax.train.kinds`, one module each.

See ``docs/training.md`` for the config keys and the workdir contract.
"""
from kdjax.train import actions
from kdjax.train import kinds
from kdjax.train.checkpoint import Checkpointer
from kdjax.train.checkpoint import find_checkpoint
from kdjax.train.checkpoint import load_model_variables
from kdjax.train.config import RUNTIME_KEYS
from kdjax.train.config import base_config
from kdjax.train.config import resolve
from kdjax.train.errors import CheckFailed
from kdjax.train.errors import CheckpointError
from kdjax.train.errors import ConfigError
from kdjax.train.errors import NonFiniteLossError
from kdjax.train.errors import Preempted
from kdjax.train.errors import TrainError
from kdjax.train.errors import WorkdirError
from kdjax.train.evaluation import finalize
from kdjax.train.evaluation import make_reduce_fn
from kdjax.train.kinds import KINDS as RUN_KINDS
from kdjax.train.loop import Loop
from kdjax.train.loop import fit
from kdjax.train.pipeline import train_and_evaluate
from kdjax.train.table import results_table
from kdjax.train.writers import make_writer
from kdjax.workdir import read_metrics
from kdjax.workdir import read_results

__all__ = [
    "CheckFailed", "CheckpointError", "Checkpointer", "ConfigError", "Loop", "NonFiniteLossError",
    "Preempted", "RUNTIME_KEYS", "RUN_KINDS", "TrainError", "WorkdirError", "actions",
    "base_config", "finalize", "find_checkpoint", "fit", "kinds", "load_model_variables",
    "make_reduce_fn", "make_writer", "read_metrics", "read_results", "resolve", "results_table",
    "train_and_evaluate",
]
