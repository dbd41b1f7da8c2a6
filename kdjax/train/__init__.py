"""The training loop as a library: ``train_and_evaluate(config, workdir) -> results``.

Builds models, data, optimizer and objective from an ``ml_collections`` config, trains the
teacher, the baseline student and the distilled student, evaluates them, checkpoints with Orbax
(resuming automatically and exactly) and logs to ``metrics.jsonl``, TensorBoard and a progress
bar. See ``docs/training.md`` for the config and workdir contracts.
"""
from kdjax.train.checkpoint import Checkpointer
from kdjax.train.checkpoint import find_checkpoint
from kdjax.train.checkpoint import load_model_variables
from kdjax.train.config import RUNTIME_KEYS
from kdjax.train.config import base_config
from kdjax.train.config import resolve
from kdjax.train.errors import CheckpointError
from kdjax.train.errors import ConfigError
from kdjax.train.errors import NonFiniteLossError
from kdjax.train.errors import Preempted
from kdjax.train.errors import TrainError
from kdjax.train.errors import WorkdirError
from kdjax.train.evaluation import finalize
from kdjax.train.evaluation import make_reduce_fn
from kdjax.train.logging import read_metrics
from kdjax.train.logging import results_table
from kdjax.train.loop import RUNS
from kdjax.train.loop import read_results
from kdjax.train.loop import train_and_evaluate
