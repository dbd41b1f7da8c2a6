"""Starting points that several config files share: the base config on the bundled digits, and
on the bundled text, the digit canvases or any dataset; the teacher's settings; the optimizers
they use; the CE + KD objective.

Config files are loaded by path, so they cannot import each other; what they share lives here
(as the CIFAR-100 protocol lives in :mod:`kdjax.configs.cifar100`).
"""
from __future__ import annotations

from typing import Any

import ml_collections

from kdjax.train import base_config

__all__ = ["adam", "adamw_cosine", "adamw_warmup", "ce_and_kd", "digit_canvases", "digits",
           "momentum_cosine", "on_dataset", "teacher", "text_lm"]


def on_dataset(name: str, *, eval_batch_size: int, batch_size: int, total_steps: int,
               log_every: int, eval_every: int,
               checkpoint_every: int) -> ml_collections.ConfigDict:
  """The base config on dataset ``name`` (``config.data.name``), with its batch sizes, its step
  count and the intervals (in steps) between logs, evaluations and checkpoints."""
  config = base_config()
  config.batch_size = batch_size
  config.total_steps = total_steps
  config.log_every = log_every
  config.eval_every = eval_every
  config.checkpoint_every = checkpoint_every
  config.data.name = name
  config.data.eval_batch_size = eval_batch_size
  return config


def digits(*, batch_size: int = 64, total_steps: int = 500, log_every: int = 50,
           eval_every: int = 100, checkpoint_every: int = 100) -> ml_collections.ConfigDict:
  """The base config on scikit-learn's bundled digits (offline): 1,438 training images 8x8x1,
  359 test images evaluated in one padded batch of 368 (divisible by up to 8 devices)."""
  return on_dataset("digits", eval_batch_size=368, batch_size=batch_size,
                    total_steps=total_steps, log_every=log_every, eval_every=eval_every,
                    checkpoint_every=checkpoint_every)


def text_lm(*, sequence_length: int = 64, eval_batch_size: int = 128, batch_size: int = 32,
            total_steps: int = 300, log_every: int = 25, eval_every: int = 150,
            checkpoint_every: int = 150) -> ml_collections.ConfigDict:
  """The base config for a language model on the bundled text (``text:stdlib``, offline: the
  Python standard library's own source, bytes as tokens, the last 10% for validation), cut into
  rows of ``sequence_length`` tokens."""
  config = on_dataset("text:stdlib", eval_batch_size=eval_batch_size, batch_size=batch_size,
                      total_steps=total_steps, log_every=log_every, eval_every=eval_every,
                      checkpoint_every=checkpoint_every)
  config.data.sequence_length = sequence_length
  return config


def digit_canvases(dataset: str, model: str) -> ml_collections.ConfigDict:
  """The base config for a dense task on the bundled digit canvases (``dataset``: ``seg_digits``
  or ``det_digits``, offline): a zoo ``model`` of width 16 as the teacher and of width 8 as the
  student, 400 steps of batch 32 for each, AdamW with a cosine decay from 3e-3."""
  config = on_dataset(dataset, eval_batch_size=96, batch_size=32, total_steps=400, log_every=50,
                      eval_every=200, checkpoint_every=200)
  config.seed = 0
  teacher(config, model, total_steps=400, model_kwargs={"width": 16})
  config.student.model = model
  config.student.model_kwargs = {"width": 8}
  adamw_cosine(config, learning_rate=3e-3, weight_decay=1e-4)
  return config


def teacher(config: ml_collections.ConfigDict, model: str, *, total_steps: int,
            learning_rate: float | None = None,
            model_kwargs: dict[str, Any] | None = None) -> None:
  """Sets ``config.teacher``: its zoo ``model`` (with ``model_kwargs`` when given), its own step
  count and, when given, its own ``learning_rate`` (otherwise it follows the student's)."""
  config.teacher.model = model
  if model_kwargs is not None:
    config.teacher.model_kwargs = model_kwargs
  config.teacher.total_steps = total_steps
  if learning_rate is not None:
    config.teacher.optimizer.learning_rate = learning_rate


def adam(config: ml_collections.ConfigDict, learning_rate: float = 3e-3) -> None:
  """Sets ``config.optimizer`` to Adam at a constant ``learning_rate`` without weight decay."""
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = learning_rate
  config.optimizer.weight_decay = 0.0
  config.optimizer.schedule = "constant"


def adamw_cosine(config: ml_collections.ConfigDict, learning_rate: float = 3e-3,
                 weight_decay: float = 1e-4) -> None:
  """Sets ``config.optimizer`` to AdamW with a cosine decay from ``learning_rate``."""
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = learning_rate
  config.optimizer.weight_decay = weight_decay
  config.optimizer.schedule = "cosine"


def momentum_cosine(config: ml_collections.ConfigDict, learning_rate: float = 0.05,
                    weight_decay: float = 1e-4) -> None:
  """Sets ``config.optimizer`` to SGD with momentum 0.9 and a cosine decay from
  ``learning_rate``."""
  config.optimizer.name = "momentum"
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = learning_rate
  config.optimizer.weight_decay = weight_decay
  config.optimizer.schedule = "cosine"


def adamw_warmup(optimizer: ml_collections.ConfigDict, *, warmup_steps: int) -> None:
  """Sets an optimizer section (``config.optimizer`` or ``config.teacher.optimizer``) to the
  small language models' AdamW: rate 3e-3 after ``warmup_steps`` of linear warmup,
  ``b2`` 0.98, weight decay 0.01."""
  optimizer.name = "adamw"
  optimizer.learning_rate = 3e-3
  optimizer.b2 = 0.98
  optimizer.weight_decay = 0.01
  optimizer.warmup_steps = warmup_steps


def ce_and_kd(ce_weight: float, kd_weight: float, *, temperature: float,
              label_key: str | None = None, **kd_options: Any) -> dict[str, dict[str, Any]]:
  """The objective ``ce_weight`` * cross-entropy + ``kd_weight`` * KD at ``temperature`` (terms
  ``ce`` and ``kd``); ``label_key`` names the labels' batch key when it is not ``label``, and
  ``kd_options`` go to the KD term (e.g. ``chunk_size``)."""
  ce = {"kind": "cross_entropy", "weight": ce_weight}
  if label_key is not None:
    ce["label_key"] = label_key
  return {"ce": ce,
          "kd": {"kind": "kd", "weight": kd_weight, "temperature": temperature, **kd_options}}
