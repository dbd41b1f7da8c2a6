"""``cross_tokenizer``: a language model with its own BPE vocabulary, distilled (or not) from a
teacher that reads the same text in ``config.data``'s tokens.

The run trains ``model`` on the text of ``config.data`` (``text:...``) under a byte-level BPE
of ``vocab_size`` entries learnt from the training split (``kdjax.lm.BpeTokenizer``: offline,
deterministic, seconds), with next-token cross-entropy (``ce_weight``). With one of
``teachers`` (an earlier run trained on ``config.data``'s own tokens, e.g. bytes), each
training window also holds the teacher's tokens of the same text and the spans the two
tokenizations share (:func:`kdjax.lm.cross_tokenizer_windows`); the teacher reads its tokens
(``teacher_tokens``) inside the step, and the loss adds ``span_kl_weight`` times the KL on
aligned spans (:func:`kdjax.losses.span_kl`), ``uld_weight`` times ULD's distance between
sorted distributions at span starts (:func:`kdjax.losses.uld`) and, for a byte-level teacher,
``next_byte_kl_weight`` times the KL from its next byte to the first byte of the student's next
token at span starts (:func:`kdjax.losses.next_byte_kl`), all at ``temperature``.

``length``: BPE tokens per window (0: about as much text as ``teacher_length`` of the
teacher's tokens holds, 90% of it on average); ``teacher_length``: the teacher's tokens per
window (0: ``config.data.sequence_length``, the windows it was trained on). Validation is on the
BPE tokens of ``config.data``'s evaluation text, so ``bits_per_byte`` compares this run with
runs of other tokenizers (the teacher's). A run with teachers names the earlier run of this
kind without teachers on the same settings as its ``baseline``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from kdjax import data as data_lib
from kdjax import lm
from kdjax import objectives
from kdjax.train.errors import ConfigError
from kdjax.train.execute import RunPlan
from kdjax.train.kinds import base

# The settings that make two runs of this kind read the same windows.
_WINDOW_FIELDS = ("vocab_size", "length", "teacher_length", "classes")


@dataclasses.dataclass(frozen=True)
class CrossTokenizer(base.Run):
  teachers: tuple[str, ...] = ()
  vocab_size: int = 512
  length: int = 0
  teacher_length: int = 0
  ce_weight: float = 1.0
  span_kl_weight: float = 0.0
  uld_weight: float = 0.0
  next_byte_kl_weight: float = 0.0
  temperature: float = 1.0

  reads: ClassVar[tuple[str, ...]] = ("init_from", "teachers")

  def num_classes(self, decls: Any) -> int | None:
    del decls
    return int(self.vocab_size)


def _where(ctx: base.Context, decl: CrossTokenizer) -> str:
  return f"config.runs[{list(ctx.decls).index(decl.name)}]"


def _check(ctx: base.Context, decl: CrossTokenizer) -> None:
  """Refuses bad fields before any work, naming the key to fix."""
  where = _where(ctx, decl)
  is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
  if not is_int(decl.vocab_size) or decl.vocab_size < 257:
    raise ConfigError(f"{where}.vocab_size={decl.vocab_size!r} must be an integer > 256 (the 256 "
                      "bytes plus at least one merge learnt from the training text)")
  for name in ("length", "teacher_length"):
    value = getattr(decl, name)
    if not is_int(value) or value < 0:
      raise ConfigError(f"{where}.{name}={value!r} must be an integer >= 0 (0: derived)")
  for name in ("ce_weight", "span_kl_weight", "uld_weight", "next_byte_kl_weight"):
    value = getattr(decl, name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
      raise ConfigError(f"{where}.{name}={value!r} must be a number >= 0")
  t = decl.temperature
  if not isinstance(t, (int, float)) or isinstance(t, bool) or not t > 0:
    raise ConfigError(f"{where}.temperature={t!r} must be a number > 0")
  if not ctx.config.data.name.startswith("text:"):
    raise ConfigError(f"{where} (kind 'cross_tokenizer') trains language models; set "
                      f"config.data.name to a text dataset ('text:stdlib'), not "
                      f"{ctx.config.data.name!r}")
  if len(decl.teachers) > 1:
    raise ConfigError(f"{where}.teachers={decl.teachers}: a cross-tokenizer run distils one "
                      "teacher; name one earlier run (or none, for the student alone)")
  kd = decl.span_kl_weight + decl.uld_weight + decl.next_byte_kl_weight
  if decl.teachers:
    teacher = ctx.decls[decl.teachers[0]]
    if isinstance(teacher, CrossTokenizer):
      raise ConfigError(f"{where}.teachers={decl.teachers}: run '{teacher.name}' reads BPE "
                        "tokens of its own; the teacher must be a run on config.data's tokens "
                        "(e.g. kind 'supervised')")
    if kd == 0:
      raise ConfigError(f"{where}: a teacher is named but span_kl_weight, uld_weight and "
                        "next_byte_kl_weight are all 0; set one of them > 0 (or drop teachers)")
    if decl.next_byte_kl_weight > 0 and ctx.config.data.tokenizer:
      raise ConfigError(f"{where}.next_byte_kl_weight={decl.next_byte_kl_weight} needs a "
                        "byte-level teacher, but config.data.tokenizer="
                        f"{ctx.config.data.tokenizer!r}; set it to '' or use span_kl_weight")
  else:
    if kd > 0:
      raise ConfigError(f"{where}: span_kl_weight / uld_weight / next_byte_kl_weight need a "
                        f"teacher; set {where}.teachers=('<teacher run>',) or the weights to 0")
    if decl.ce_weight == 0:
      raise ConfigError(f"{where}.ce_weight=0 with no teacher leaves no loss; set ce_weight > 0")


def run_data(ctx: base.Context, decl: CrossTokenizer) -> Any:
  """The run's :class:`kdjax.train.rundata.RetokenizedText` (shared by runs of the same
  settings)."""
  where = _where(ctx, decl)
  base_data = ctx.data_for(decl.classes)
  if not hasattr(base_data, "retokenized"):
    raise ConfigError(f"{where} (kind 'cross_tokenizer') needs text data; set config.data.name "
                      "to a text dataset ('text:stdlib')")
  teacher_length = decl.teacher_length or int(ctx.config.data.sequence_length)
  try:
    out = base_data.retokenized(vocab_size=int(decl.vocab_size), length=int(decl.length),
                                teacher_length=teacher_length, with_teacher=bool(decl.teachers))
  except data_lib.DataError as e:
    raise ConfigError(f"{where} (vocab_size, length, teacher_length): {e}") from None
  if decl.teachers and out.length == out.teacher_length:
    raise ConfigError(f"{where}: length and teacher_length are both {out.length}; the two "
                      "tokenizations spell the same text in different token counts, so give "
                      "them different window lengths (e.g. length=0, derived)")
  return out


def plan(ctx: base.Context, decl: CrossTokenizer) -> RunPlan:
  _check(ctx, decl)
  data = run_data(ctx, decl)
  teachers = decl.teachers

  def make_objective():
    terms = {}
    if decl.ce_weight > 0:
      terms["ce"] = (lm.token_cross_entropy_term(label_key="targets"), float(decl.ce_weight))
    for loss in lm.CROSS_TOKENIZER_LOSSES:
      weight = float(getattr(decl, f"{loss}_weight"))
      if teachers and weight > 0:
        first_byte = data.first_byte if loss == "next_byte_kl" else None
        terms[loss] = (lm.cross_tokenizer_term(loss, temperature=float(decl.temperature),
                                               first_byte=first_byte), weight)
    return objectives.combine(terms)

  def teacher(objective):
    return ctx.trained(teachers[0], taps=objective.needs.teacher)

  eval_runners = []

  def evaluate(runner, state):
    # Validation windows hold the student's tokens only: the student is evaluated alone.
    if not eval_runners:
      eval_runners.append(ctx.runner())
    eval_runner = eval_runners[0]
    host = runner.host_state(state).with_teacher(None)
    return data.evaluate(eval_runner, eval_runner.put_state(host),
                         num_classes=data.shapes.num_classes)

  out = base.student_plan(
      ctx, decl, make_objective=make_objective, data=data,
      teacher=teacher if teachers else None, evaluate=evaluate if teachers else None,
      teacher_runs=teachers, teacher_input=lm.TEACHER_TOKENS_KEY if teachers else None)
  summary = out.summary
  settings = {"vocab_size": int(decl.vocab_size), "length": data.length,
              "teacher_length": data.teacher_length,
              "bytes_per_token": round(data.bytes_per_token, 4)}
  baseline = _baseline(ctx, decl) if teachers else ""
  out.summary = lambda host: {**summary(host), "tokenizer": settings,
                              **({"baseline": baseline} if baseline else {})}
  return out


def _baseline(ctx: base.Context, decl: CrossTokenizer) -> str:
  """The earlier run of this kind, without teachers, on the same model section and windows."""
  for other in ctx.decls.values():
    if other.name == decl.name:
      return ""
    if (isinstance(other, CrossTokenizer) and not other.teachers and
        other.section() == decl.section() and
        all(getattr(other, f) == getattr(decl, f) for f in _WINDOW_FIELDS)):
      return other.name
  return ""


KIND = base.RunKind(CrossTokenizer, plan)
