"""Small models and batches shared by the tests (tiny shapes: compile time is the cost)."""
from __future__ import annotations

import contextlib
import signal
import socket

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import kdjax
from kdjax import models


class TapMLP(nn.Module):
  """A two-stage MLP whose stages can be tapped; optional BatchNorm."""

  hidden: int = 16
  num_classes: int = 5
  batch_norm: bool = False
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.hidden, name="stage1")(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       axis_name=self.bn_axis_name if train else None, name="bn")(x)
    x = nn.relu(x)
    x = nn.relu(nn.Dense(self.hidden, name="stage2")(x))
    self.sow("intermediates", "pre_logits", x)
    return nn.Dense(self.num_classes, name="head")(x)


def tap_mlp(seed=0, *, hidden=16, num_classes=5, batch_norm=False, in_dim=6, taps=(),
            bn_axis_name=None):
  module = TapMLP(hidden=hidden, num_classes=num_classes, batch_norm=batch_norm,
                  bn_axis_name=bn_axis_name)
  variables = module.init(jax.random.key(seed), jnp.zeros((2, in_dim), jnp.float32))
  return models.from_linen(module, variables, taps=taps)


def distill(student, teacher, objective, batch, *, tx, steps, metric="loss", seed=0):
  """``steps`` jitted :func:`kdjax.distill_step` calls on one ``batch`` from a fresh
  :class:`kdjax.DistillState`: the final state and ``metrics[metric]`` after each step."""
  state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective, tx=tx,
                                    rng=jax.random.key(seed), example_batch=batch)
  step = jax.jit(kdjax.distill_step)
  history = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    history.append(float(metrics[metric]))
  return state, history


def batch(n=8, in_dim=6, num_classes=5, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.standard_normal((n, in_dim)).astype(np.float32),
          "label": rng.integers(0, num_classes, n).astype(np.int32),
          "index": np.arange(n, dtype=np.int32)}


def normal_sampler(seed):
  """``normal(*shape, scale=1.0)``: float32 standard-normal draws times ``scale``, all from one
  generator seeded ``seed`` (so a module's arrays are fixed by their order of drawing)."""
  rng = np.random.default_rng(seed)

  def normal(*shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)

  return normal


def with_overrides(config, overrides):
  """``config`` (a nested ``ConfigDict``) with each dotted-key override set in place, e.g.
  ``{'optimizer.name': 'sgd'}`` sets ``config.optimizer.name``; returns ``config``."""
  for key, value in overrides.items():
    *parents, last = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[last] = value
  return config


@contextlib.contextmanager
def no_network(monkeypatch, seconds=60):
  """Inside, every connection attempt and host name lookup fails at once and is recorded in the
  list it yields; a call that hangs is cut after ``seconds``."""
  attempts = []

  def refuse(sock, address, *args, **kwargs):
    attempts.append(address)
    raise OSError(f"kdjax test: network access to {address} attempted")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket.socket, "connect_ex", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: refuse(None, host))

  def timeout(*_):
    raise TimeoutError(f"a call hung for {seconds} s")

  previous = signal.signal(signal.SIGALRM, timeout)
  signal.alarm(seconds)
  try:
    yield attempts
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
