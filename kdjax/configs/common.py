"""Starting points that several config files share: the base config on the bundled digits, and
a common optimizer setting.

Config files are loaded by path, so they cannot import each other; what they share lives here
(as the CIFAR-100 protocol lives in :mod:`kdjax.configs.cifar100`).
"""
from __future__ import annotations

import ml_collections

from kdjax.train import base_config

__all__ = ["adam", "digits"]


def digits(*, batch_size: int = 64, total_steps: int = 500, log_every: int = 50,
           eval_every: int = 100, checkpoint_every: int = 100) -> ml_collections.ConfigDict:
  """The base config on scikit-learn's bundled digits (offline): 1,438 training images 8x8x1,
  359 test images evaluated in one padded batch of 368 (divisible by up to 8 devices)."""
  config = base_config()
  config.batch_size = batch_size
  config.total_steps = total_steps
  config.log_every = log_every
  config.eval_every = eval_every
  config.checkpoint_every = checkpoint_every
  config.data.name = "digits"
  config.data.eval_batch_size = 368
  return config


def adam(config: ml_collections.ConfigDict, learning_rate: float = 3e-3) -> None:
  """Sets ``config.optimizer`` to Adam at a constant ``learning_rate`` without weight decay."""
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = learning_rate
  config.optimizer.weight_decay = 0.0
  config.optimizer.schedule = "constant"
