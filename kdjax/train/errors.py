"""Errors a user can act on: each message says what went wrong and how to fix it.

``kdjax.main`` prints these (and :class:`kdjax.data.DataError`) as one line, without a
traceback, and exits with a non-zero status. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

from kdjax import _checked


class TrainError(Exception):
  """Base class of the training errors whose message names the fix."""


class ConfigError(TrainError, ValueError):
  """A config value kdjax cannot use: unknown key, bad value, inconsistent settings."""


class WorkdirError(TrainError):
  """The workdir cannot be used: not writable, or it holds runs of a different config."""


class CheckpointError(TrainError):
  """A checkpoint that should be there is missing, unreadable or of another model."""


class NonFiniteLossError(TrainError):
  """Training produced a NaN or infinite loss; the last good checkpoint is kept."""

  def __init__(self, message: str, *, run: str, step: int):
    super().__init__(message)
    self.run = run
    self.step = step


class Preempted(TrainError):
  """SIGTERM (preemption) or SIGINT arrived: a checkpoint was saved; rerun to resume.

  ``signum`` is the signal that stopped the run (``signal.SIGTERM`` or ``signal.SIGINT``).
  """

  def __init__(self, message: str, *, run: str, step: int, signum: int = 15):
    super().__init__(message)
    self.run = run
    self.step = step
    self.signum = signum


class CheckFailed(TrainError, _checked.CheckFailed):
  """A checked step (``kdjax.checked``) of a run found a value it cannot train on: labels out of
  range, non-finite inputs; the message names the run, the step and the fix."""

  def __init__(self, detail: str, *, run: str, step: int):
    _checked.CheckFailed.__init__(self, detail)
    self.args = (f"run '{run}', step {step}: {detail}",)
    self.run = run
    self.step = step

  def __str__(self) -> str:
    return self.args[0]
