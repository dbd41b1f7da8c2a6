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

__all__ = ["adam", "adamw_cosine", "adamw_warmup", "ce_and_kd", "decoder_kwargs",
           "digit_canvases", "digits", "momentum_cosine", "on_dataset", "teacher", "text_lm",
           "text_decoders", "text_lm_kd", "transformer_lm_kwargs"]


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


def transformer_lm_kwargs(d_model: int, n_layers: int, *,
                          max_len: int = 64) -> dict[str, Any]:
  """The ``model_kwargs`` of the zoo's ``transformer_lm`` on the bundled text: width
  ``d_model``, ``n_layers`` blocks of 4 heads, positions up to ``max_len``, no dropout."""
  return {"d_model": d_model, "n_layers": n_layers, "n_heads": 4, "max_len": max_len,
          "dropout_rate": 0.0}


def decoder_kwargs(hidden: int, layers: int) -> dict[str, Any]:
  """The ``model_kwargs`` of a small zoo ``decoder`` (Llama-style): width ``hidden``, an MLP of
  ``2 * hidden``, ``layers`` blocks of 4 query heads of ``hidden // 4`` sharing 2 key/value
  heads, RoPE base 10000 and RMSNorm epsilon 1e-5."""
  return {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_layers": layers,
          "num_heads": 4, "num_kv_heads": 2, "head_dim": hidden // 4, "rope_theta": 10000.0,
          "rms_norm_eps": 1e-5}


def text_decoders(sequence_length: int) -> ml_collections.ConfigDict:
  """The bundled text in rows of ``sequence_length`` tokens with two zoo decoders
  (:func:`decoder_kwargs`): a teacher of 2 layers, hidden 128 (800 steps) and a student of 1
  layer, hidden 48 (300 steps), both on :func:`adamw_warmup` with 20 warmup steps; logs every
  10 steps, evaluates 256 rows at a time every 300, checkpoints every 150, no checked steps.
  The objective and ``config.runs`` are the caller's."""
  config = text_lm(sequence_length=sequence_length, eval_batch_size=256, total_steps=300,
                   log_every=10, eval_every=300, checkpoint_every=150)
  config.checked_steps = 0
  config.teacher.model = "decoder"
  config.teacher.model_kwargs = decoder_kwargs(128, 2)
  config.teacher.total_steps = 800
  config.student.model = "decoder"
  config.student.model_kwargs = decoder_kwargs(48, 1)
  for opt in (config.optimizer, config.teacher.optimizer):
    adamw_warmup(opt, warmup_steps=20)
  return config


def text_lm_kd() -> ml_collections.ConfigDict:
  """Token-level KD on the bundled text (rows of 64 tokens): a ``transformer_lm`` teacher of 3
  layers, d_model 128 (600 steps, 60 warmup steps) and student of 1 layer, d_model 64 (300
  steps, 30 warmup steps), both on :func:`adamw_warmup`; the objective 0.5 CE + 0.5 KD at
  T = 1. ``config.runs`` stays the base config's (a caller may set its own)."""
  config = text_lm(sequence_length=64, total_steps=300)
  config.teacher.model = "transformer_lm"
  config.teacher.model_kwargs = transformer_lm_kwargs(128, 3)
  config.teacher.total_steps = 600
  config.student.model = "transformer_lm"
  config.student.model_kwargs = transformer_lm_kwargs(64, 1)
  adamw_warmup(config.optimizer, warmup_steps=30)
  config.teacher.optimizer.warmup_steps = 60
  config.objective = ce_and_kd(0.5, 0.5, temperature=1.0, label_key="targets")
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
