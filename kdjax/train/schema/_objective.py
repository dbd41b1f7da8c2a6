"""``config.objective`` and ``config.stages``: the distilled student's terms and their stages.

Both are free-form (a term's keys are its constructor's arguments), so they are checked here by
functions rather than declared as sections; ``kdjax.train.builders`` calls the same functions
for objectives a run declares itself.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Iterable, Mapping

from kdjax import lm
from kdjax import objectives
from kdjax.train.errors import ConfigError
from kdjax.train.schema._base import is_int, is_number, require
from kdjax.train.schema._model import suggest

# Keys of a term's config that are not arguments of its constructor.
TERM_KEYS = ("kind", "weight", "warmup_steps")
# A token divergence term with this key is computed from hidden states and heads, this many
# tokens at a time (kdjax.lm.chunked_kd_term): the same loss without [tokens, vocab] logits.
CHUNK_KEY = "chunk_size"
DEFAULT_OBJECTIVE = {
    "ce": {"kind": "cross_entropy", "weight": 0.1},
    "kd": {"kind": "kd", "weight": 0.9, "temperature": 4.0},
}
_STAGES_EXAMPLE = "e.g. ({'steps': 2000, 'terms': ('hint',)}, {'steps': 0, 'terms': ('ce', 'kd')})"


def term_parts(name: str, spec: Mapping[str, Any],
               where: str = "config.objective") -> tuple[objectives.TermKind, dict[str, Any]]:
  """The registered kind of term ``<where>.<name>`` and its constructor arguments, checked.

  Raises :class:`ConfigError` for an unknown kind, an argument its constructor does not take or
  a required one the term leaves out (``dataset_args`` excepted: the run supplies them).
  """
  path = f"{where}.{name}"
  require(isinstance(spec, Mapping) and "kind" in spec,
          f"{path} must be a mapping with a 'kind' (e.g. {{'kind': 'kd', 'weight': 0.9, "
          f"'temperature': 4.0}}), got {spec!r}")
  kinds = objectives.term_kinds()
  kind = spec["kind"]
  if kind not in kinds:
    raise ConfigError(f"{path}.kind={kind!r} is not a kdjax objective term"
                      f"{suggest(str(kind), tuple(kinds))}; available: {', '.join(kinds)}")
  weight = spec.get("weight", 1.0)
  require(is_number(weight) and weight >= 0,
          f"{path}.weight must be a number >= 0 (a loss weight), got {weight!r}")
  warmup = spec.get("warmup_steps", 0)
  require(is_int(warmup) and warmup >= 0,
          f"{path}.warmup_steps must be an integer >= 0, got {warmup!r}")
  if "temperature" in spec:
    t = spec["temperature"]
    require(is_number(t) and t > 0,
            f"{path}.temperature must be > 0, got {t!r}; typical values are 1-8 (e.g. 4.0)")
  term_kind = kinds[kind]
  if CHUNK_KEY in spec:
    require(kind in lm.CHUNKED_KINDS,
            f"{path}.{CHUNK_KEY}: term kind {kind!r} has no chunked form; {CHUNK_KEY} applies "
            f"to {sorted(lm.CHUNKED_KINDS)} (remove it, or use one of those kinds)")
    chunk = spec[CHUNK_KEY]
    require(is_int(chunk) and chunk >= 1,
            f"{path}.{CHUNK_KEY} must be an integer >= 1 (tokens per chunk), got {chunk!r}")
    require("beta" not in spec, f"{path}.beta: term kind {kind!r} has beta="
            f"{lm.CHUNKED_KINDS[kind]} (kdjax.lm.CHUNKED_KINDS); remove config key beta")
    term_kind = objectives.TermKind(
        kind, functools.partial(lm.chunked_kd_term, beta=lm.CHUNKED_KINDS[kind]))
  kwargs = {k: v for k, v in spec.items() if k not in TERM_KEYS}
  params = inspect.signature(term_kind.ctor).parameters
  accepted = [p for p in params if params[p].kind in (inspect.Parameter.KEYWORD_ONLY,
                                                      inspect.Parameter.POSITIONAL_OR_KEYWORD)]
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise ConfigError(f"{path}: term kind {kind!r} takes no argument(s) {unknown}"
                      f"{suggest(unknown[0], accepted)}; its arguments are {accepted} "
                      f"(plus {list(TERM_KEYS)})")
  missing = sorted(p for p in accepted if params[p].default is inspect.Parameter.empty and
                   p not in kwargs and p not in term_kind.dataset_args)
  if missing:
    raise ConfigError(f"{path}: term kind {kind!r} needs {missing} (e.g. student='stage2', "
                      "teacher='stage3' tap paths for feature terms)")
  return term_kind, kwargs


def check_objective(objective: Any, where: str = "config.objective") -> None:
  """Raises :class:`ConfigError` unless ``objective`` is a mapping of usable terms."""
  require(isinstance(objective, Mapping) and len(objective) > 0,
          f"{where} needs at least one term, e.g. {{'ce': {{'kind': 'cross_entropy', "
          "'weight': 0.1}, 'kd': {'kind': 'kd', 'weight': 0.9, 'temperature': 4.0}}")
  for name, term in objective.items():
    term_parts(name, term, where)


def check_stages(stages: Any, term_names: Iterable[str], total_steps: int | None = None) -> None:
  """Raises :class:`ConfigError` naming the fix unless ``stages`` fits ``config.stages``.

  Each stage names terms of ``term_names``; with ``total_steps``, the stages must fit in it.
  """
  term_names = sorted(term_names)
  require(isinstance(stages, tuple),
          f"config.stages must be a tuple of stages, {_STAGES_EXAMPLE}; got {stages!r}")
  total = 0
  for i, stage in enumerate(stages):
    path = f"config.stages[{i}]"
    require(isinstance(stage, Mapping) and set(stage) == {"steps", "terms"},
            f"{path} must be a mapping with exactly the keys 'steps' and 'terms', "
            f"{_STAGES_EXAMPLE}; got {stage!r}")
    last = i == len(stages) - 1
    steps, terms = stage["steps"], stage["terms"]
    require(is_int(steps) and (steps >= 1 or (last and steps == 0)),
            f"{path}.steps must be an integer >= 1 (0 is allowed on the last stage: until "
            f"config.total_steps), got {steps!r}")
    require(isinstance(terms, tuple) and terms and all(isinstance(t, str) for t in terms),
            f"{path}.terms must be a non-empty tuple of term names, got {terms!r}")
    unknown = sorted(set(terms) - set(term_names))
    require(not unknown, f"{path}.terms names {unknown}, which config.objective does not "
            f"define; its terms are {term_names}")
    total += steps
  require(total_steps is None or total <= total_steps,
          f"config.stages add up to {total} steps but config.total_steps is {total_steps}; "
          "shorten the stages or raise config.total_steps")
