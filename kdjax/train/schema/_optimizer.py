"""``config.optimizer`` (and ``config.teacher.optimizer``): optimizers and their schedules.

:data:`OPTIMIZERS` and :data:`SCHEDULES` are the tables of names a config may use, each mapped
to the optax constructor it stands for; ``kdjax.train.builders`` composes them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from kdjax.train.schema._base import Section, check_choice, is_int, is_number, key, names
from kdjax.train.schema._base import require


def _decay_mask(params: Any) -> Any:
  # Weight decay on kernels only: biases and normalisation scales/offsets have ndim < 2.
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _adamw(opt: Any, lr: optax.Schedule) -> list[optax.GradientTransformation]:
  return [optax.adamw(lr, b1=float(opt.b1), b2=float(opt.b2), eps=float(opt.eps),
                      weight_decay=float(opt.weight_decay), mask=_decay_mask)]


def _sgd(momentum: bool, nesterov: bool) -> Callable[..., list[optax.GradientTransformation]]:
  def make(opt: Any, lr: optax.Schedule) -> list[optax.GradientTransformation]:
    parts = []
    if opt.weight_decay:  # L2 added to the gradient, as torch.optim.SGD does.
      parts.append(optax.add_decayed_weights(float(opt.weight_decay), mask=_decay_mask))
    parts.append(optax.sgd(lr, momentum=float(opt.momentum) if momentum else None,
                           nesterov=nesterov))
    return parts
  return make


# name -> (optimizer section, learning-rate schedule) -> optax transformations, chained in order.
OPTIMIZERS: dict[str, Callable[[Any, optax.Schedule], list[optax.GradientTransformation]]] = {
    "sgd": _sgd(momentum=False, nesterov=False),
    "momentum": _sgd(momentum=True, nesterov=False),
    "nesterov": _sgd(momentum=True, nesterov=True),
    "adamw": _adamw,
}


def _constant(opt: Any, lr: float, steps: int, warmup: int, per_epoch: float) -> optax.Schedule:
  del opt, steps, warmup, per_epoch
  return optax.constant_schedule(lr)


def _cosine(opt: Any, lr: float, steps: int, warmup: int, per_epoch: float) -> optax.Schedule:
  del per_epoch
  return optax.cosine_decay_schedule(lr, decay_steps=max(steps - warmup, 1),
                                     alpha=float(opt.min_learning_rate) / lr)


def _step(opt: Any, lr: float, steps: int, warmup: int, per_epoch: float) -> optax.Schedule:
  del steps
  if opt.decay_steps:
    bounds = [int(b) for b in opt.decay_steps]
  else:
    bounds = [int(round(e * per_epoch)) for e in opt.decay_epochs]
  scales: dict[int, float] = {}
  for b in bounds:  # Boundaries count from the start of training, warm-up included.
    b = max(b - warmup, 0)
    scales[b] = scales.get(b, 1.0) * float(opt.decay_factor)
  return optax.piecewise_constant_schedule(lr, scales)


# name -> (section, peak rate, total steps, warm-up steps, steps per epoch) -> the schedule after
# the warm-up.
SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
    "cosine": _cosine,
    "step": _step,
    "constant": _constant,
}


@dataclasses.dataclass(frozen=True)
class Optimizer(Section):
  """The students' optimizer; ``config.teacher.optimizer`` follows it key by key until set."""

  name: str = key("momentum", f"one of {names(OPTIMIZERS)}")
  learning_rate: float = key(0.1, "peak learning rate, reached after `warmup_steps`")
  momentum: float = key(0.9, "`sgd` with momentum, `nesterov`")
  b1: float = key(0.9, "`adamw`")
  b2: float = key(0.999, "`adamw`")
  eps: float = key(1e-8, "`adamw`")
  weight_decay: float = key(5e-4, "L2 added to the gradient for SGD, decoupled for AdamW; only "
                                  "on parameters with >= 2 dimensions (never biases or "
                                  "normalisation scales)")
  schedule: str = key("cosine", f"one of {names(SCHEDULES)}")
  warmup_steps: int = key(0, "linear warm-up from 0 to `learning_rate`")
  min_learning_rate: float = key(0.0, "`cosine`: the learning rate at the last step")
  decay_factor: float = key(0.1, "`step`: multiply the learning rate by this at each boundary")
  decay_steps: tuple = key((), "`step`: boundaries in steps ...")
  decay_epochs: tuple = key((), "... or in epochs of the training split (converted with "
                                "`batch_size`)")
  grad_clip_norm: float = key(0.0, "clip the global gradient norm to this (0: off)")

  def check(self, path: str, root: Any) -> None:
    total_steps = root.teacher.total_steps if path.startswith("teacher.") else root.total_steps
    check_choice(self.name, f"{path}.name", OPTIMIZERS, "an optimizer")
    check_choice(self.schedule, f"{path}.schedule", SCHEDULES, "a schedule")
    require(is_number(self.learning_rate) and self.learning_rate > 0,
            f"config.{path}.learning_rate must be a positive number, got {self.learning_rate!r}")
    for name in ("momentum", "b1", "b2"):
      v = getattr(self, name)
      require(is_number(v) and 0 <= v < 1, f"config.{path}.{name} must be in [0, 1), got {v!r}")
    for name in ("eps", "weight_decay", "min_learning_rate", "grad_clip_norm"):
      v = getattr(self, name)
      require(is_number(v) and v >= 0, f"config.{path}.{name} must be a number >= 0, got {v!r}")
    require(is_int(self.warmup_steps) and 0 <= self.warmup_steps < total_steps,
            f"config.{path}.warmup_steps must be an integer in [0, {total_steps}) (the run's "
            f"steps), got {self.warmup_steps!r}")
    require(is_number(self.decay_factor) and 0 < self.decay_factor <= 1,
            f"config.{path}.decay_factor must be in (0, 1], got {self.decay_factor!r}")
    for name in ("decay_steps", "decay_epochs"):
      bounds = getattr(self, name)
      require(isinstance(bounds, tuple) and all(is_number(b) and b > 0 for b in bounds)
              and list(bounds) == sorted(bounds),
              f"config.{path}.{name} must be an increasing tuple of positive numbers, got "
              f"{bounds!r}")
    if self.schedule == "step":
      require(bool(self.decay_steps) != bool(self.decay_epochs),
              f"config.{path}.schedule='step' needs its boundaries in exactly one of "
              f"config.{path}.decay_steps (steps) or config.{path}.decay_epochs (epochs)")
