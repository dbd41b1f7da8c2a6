"""``on_policy``: on-policy distillation of a language model (GKD) from one teacher run.

Each step, with probability ``lmbda`` the continuations of the batch's prompts (the first
``prompt_length`` tokens of each row) are sampled from the current student with its
key-value-cache decoder, with probability ``seq_kd_prob`` from the teacher, and otherwise taken
from the data; the teacher scores the sequences inside the same step and the loss is the
generalized JSD (``beta``) over the continuation tokens (:func:`kdjax.lm.on_policy_step`,
:func:`kdjax.lm.generalized_jsd_term`). The draws come from the state's key, so a resumed run
is exact. Text data only (``config.data.name = 'text:...'``); the student (and, with
``seq_kd_prob > 0``, the teacher) must be a decoder (``model = 'decoder'``).

``max_new_tokens = 0`` continues each row to its end (``sequence_length + 1 - prompt_length``);
``top_k = 0``, ``top_p = 0`` and ``eos_id = -1`` switch those settings off. Sampling uses
``temperature``; the divergence compares the models at temperature 1 (GKD, TRL).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax

from kdjax import lm
from kdjax import objectives
from kdjax.train.errors import ConfigError
from kdjax.train.execute import RunPlan
from kdjax.train.kinds import base
from kdjax.train.kinds import distill


@dataclasses.dataclass(frozen=True)
class OnPolicy(base.Run):
  teachers: tuple[str, ...] = ()
  lmbda: float = 0.5
  beta: float = 0.5
  temperature: float = 1.0
  prompt_length: int = 1
  max_new_tokens: int = 0
  seq_kd_prob: float = 0.0
  top_k: int = 0
  top_p: float = 0.0
  eos_id: int = -1

  reads: ClassVar[tuple[str, ...]] = ("init_from", "teachers")


def settings(decl: OnPolicy, sequence_length: int) -> lm.OnPolicyConfig:
  """The run's :class:`kdjax.lm.OnPolicyConfig` for rows of ``sequence_length`` tokens."""
  where = f"run '{decl.name}' (kind 'on_policy')"
  new = decl.max_new_tokens or sequence_length + 1 - decl.prompt_length
  if decl.prompt_length + new - 1 > sequence_length or new < 1:
    raise ConfigError(f"{where}: prompt_length={decl.prompt_length} and max_new_tokens={new} "
                      f"do not fit rows of config.data.sequence_length={sequence_length} "
                      "tokens; keep prompt_length + max_new_tokens <= sequence_length + 1")
  try:
    return lm.OnPolicyConfig(
        prompt_length=decl.prompt_length, max_new_tokens=new, lmbda=decl.lmbda,
        seq_kd_prob=decl.seq_kd_prob, temperature=decl.temperature,
        top_k=decl.top_k or None, top_p=decl.top_p or None,
        eos_id=None if decl.eos_id < 0 else decl.eos_id)
  except ValueError as e:
    raise ConfigError(f"{where}: {e}") from None


def plan(ctx: base.Context, decl: OnPolicy) -> RunPlan:
  where = f"run '{decl.name}' (kind 'on_policy')"
  if len(decl.teachers) != 1:
    raise ConfigError(f"{where} needs teachers=(one earlier run's name,), got {decl.teachers}")
  data = ctx.data_for(decl.classes)
  if data.shapes.input_key != "tokens":
    raise ConfigError(f"{where} distils language models; set config.data.name to a text "
                      f"dataset ('text:stdlib'), not {ctx.config.data.name!r}")
  config = settings(decl, int(data.shapes.input_shape[0]))
  try:
    term = lm.generalized_jsd_term(decl.beta)
  except ValueError as e:
    raise ConfigError(f"{where}: beta={decl.beta!r}: {e}") from None

  def make_objective():
    return objectives.combine({"generalized_jsd": term})

  def teacher(objective):
    return ctx.trained(decl.teachers[0], taps=objective.needs.teacher)

  out = base.student_plan(ctx, decl, make_objective=make_objective, teacher=teacher,
                          teacher_runs=decl.teachers)
  step_fn = functools.partial(lm.on_policy_step, config=config)
  example = data.example_batch(ctx.config.batch_size)
  make_state = out.init_state

  def init_state():
    state = make_state()
    try:  # The student (and teacher) must sample: refused now, not inside the first step.
      jax.eval_shape(lambda s, b: lm.on_policy_batch(s, b, config), state, example)
    except ValueError as e:
      raise ConfigError(f"{where}: {e} (config.{decl.section()}.model)") from None
    return state

  out.init_state = init_state
  out.make_runner = lambda: ctx.runner(step_fn=step_fn)
  baseline = distill._baseline(ctx, decl)  # pylint: disable=protected-access
  if baseline:
    summary = out.summary
    out.summary = lambda host: {**summary(host), "baseline": baseline}
  return out


KIND = base.RunKind(OnPolicy, plan)
