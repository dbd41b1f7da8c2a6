"""Config value checks: every key's type and range, with a message that names the fix.

:func:`validate` runs on the resolved config (as plain dicts) before any work is done;
:func:`check_stages` is also used by ``builders.make_objective`` for library callers.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from kdjax import teacher_cache
from kdjax.train.errors import ConfigError

PARALLEL_MODES = ("jit", "pmap")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adamw")
SCHEDULES = ("cosine", "step", "constant")
DTYPES = ("float32", "bfloat16", "float16")
MESH_AXES = ("data", "fsdp")


def _require(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_positive_int(c: Mapping, path: str, minimum: int = 1):
  value = _get(c, path)
  _require(_is_int(value) and value >= minimum,
           f"config.{path} must be an integer >= {minimum}, got {value!r}")


def _get(c: Mapping, path: str) -> Any:
  for part in path.split("."):
    c = c[part]
  return c


def _check_optimizer(o: Mapping, path: str, total_steps: int):
  _require(o["name"] in OPTIMIZERS,
           f"config.{path}.name={o['name']!r} is not an optimizer; use one of {OPTIMIZERS}")
  _require(o["schedule"] in SCHEDULES,
           f"config.{path}.schedule={o['schedule']!r} is not a schedule; use one of {SCHEDULES}")
  _require(_is_number(o["learning_rate"]) and o["learning_rate"] > 0,
           f"config.{path}.learning_rate must be a positive number, got {o['learning_rate']!r}")
  for key in ("momentum", "b1", "b2"):
    _require(_is_number(o[key]) and 0 <= o[key] < 1,
             f"config.{path}.{key} must be in [0, 1), got {o[key]!r}")
  for key in ("eps", "weight_decay", "min_learning_rate", "grad_clip_norm"):
    _require(_is_number(o[key]) and o[key] >= 0,
             f"config.{path}.{key} must be a number >= 0, got {o[key]!r}")
  _require(_is_int(o["warmup_steps"]) and 0 <= o["warmup_steps"] < total_steps,
           f"config.{path}.warmup_steps must be an integer in [0, {total_steps}) (the run's "
           f"steps), got {o['warmup_steps']!r}")
  _require(_is_number(o["decay_factor"]) and 0 < o["decay_factor"] <= 1,
           f"config.{path}.decay_factor must be in (0, 1], got {o['decay_factor']!r}")
  for key in ("decay_steps", "decay_epochs"):
    bounds = o[key]
    _require(isinstance(bounds, tuple) and all(_is_number(b) and b > 0 for b in bounds)
             and list(bounds) == sorted(bounds),
             f"config.{path}.{key} must be an increasing tuple of positive numbers, got "
             f"{bounds!r}")
  if o["schedule"] == "step":
    _require(bool(o["decay_steps"]) != bool(o["decay_epochs"]),
             f"config.{path}.schedule='step' needs its boundaries in exactly one of "
             f"config.{path}.decay_steps (steps) or config.{path}.decay_epochs (epochs)")


def _check_objective(objective: Mapping):
  _require(isinstance(objective, Mapping) and len(objective) > 0,
           "config.objective needs at least one term, e.g. {'ce': {'kind': 'cross_entropy', "
           "'weight': 0.1}, 'kd': {'kind': 'kd', 'weight': 0.9, 'temperature': 4.0}}")
  for name, term in objective.items():
    path = f"config.objective.{name}"
    _require(isinstance(term, Mapping) and "kind" in term,
             f"{path} must be a mapping with a 'kind' (e.g. {{'kind': 'kd', 'weight': 0.9, "
             f"'temperature': 4.0}}), got {term!r}")
    weight = term.get("weight", 1.0)
    _require(_is_number(weight) and weight >= 0,
             f"{path}.weight must be a number >= 0 (a loss weight), got {weight!r}")
    warmup = term.get("warmup_steps", 0)
    _require(_is_int(warmup) and warmup >= 0,
             f"{path}.warmup_steps must be an integer >= 0, got {warmup!r}")
    if "temperature" in term:
      t = term["temperature"]
      _require(_is_number(t) and t > 0,
               f"{path}.temperature must be > 0, got {t!r}; typical values are 1-8 (e.g. 4.0)")


def check_stages(stages: Any, term_names: Iterable[str], total_steps: int | None = None):
  """Raises :class:`ConfigError` naming the fix unless ``stages`` fits ``config.stages``.

  Each stage names terms of ``term_names``; with ``total_steps``, the stages must fit in it.
  """
  term_names = sorted(term_names)
  example = ("e.g. ({'steps': 2000, 'terms': ('hint',)}, {'steps': 0, 'terms': ('ce', 'kd')})")
  _require(isinstance(stages, tuple), f"config.stages must be a tuple of stages, {example}; "
           f"got {stages!r}")
  total = 0
  for i, stage in enumerate(stages):
    path = f"config.stages[{i}]"
    _require(isinstance(stage, Mapping) and set(stage) == {"steps", "terms"},
             f"{path} must be a mapping with exactly the keys 'steps' and 'terms', {example}; "
             f"got {stage!r}")
    last = i == len(stages) - 1
    steps, terms = stage["steps"], stage["terms"]
    _require(_is_int(steps) and (steps >= 1 or (last and steps == 0)),
             f"{path}.steps must be an integer >= 1 (0 is allowed on the last stage: until "
             f"config.total_steps), got {steps!r}")
    _require(isinstance(terms, tuple) and terms and all(isinstance(t, str) for t in terms),
             f"{path}.terms must be a non-empty tuple of term names, got {terms!r}")
    unknown = sorted(set(terms) - set(term_names))
    _require(not unknown, f"{path}.terms names {unknown}, which config.objective does not "
             f"define; its terms are {term_names}")
    total += steps
  _require(total_steps is None or total <= total_steps, f"config.stages add up to {total} steps but config.total_steps "
           f"is {total_steps}; shorten the stages or raise config.total_steps")


def validate(c: Mapping):
  """Raises :class:`ConfigError` for the first value of ``c`` (plain dicts) kdjax cannot use."""
  for path in ("seed",):
    _require(_is_int(c[path]), f"config.{path} must be an integer, got {c[path]!r}")
  for path in ("batch_size", "total_steps", "teacher.total_steps", "accumulation_steps",
               "log_every", "checkpoint_every", "keep_checkpoints", "data.eval_batch_size"):
    _check_positive_int(c, path)
  for path in ("eval_every", "data.worker_count", "checked_steps"):
    _check_positive_int(c, path, minimum=0)
  _require(c["batch_size"] % c["accumulation_steps"] == 0,
           f"config.batch_size={c['batch_size']} must be divisible by "
           f"config.accumulation_steps={c['accumulation_steps']}")
  _require(c["parallel"] in PARALLEL_MODES,
           f"config.parallel={c['parallel']!r} is not a parallel mode; use one of "
           f"{PARALLEL_MODES}")
  mesh = c["mesh"]
  _require(isinstance(mesh, Mapping) and set(mesh) <= set(MESH_AXES) and
           all(_is_int(v) and (v == -1 or v >= 1) for v in mesh.values()),
           f"config.mesh must map {MESH_AXES} to sizes >= 1 or -1 (the remaining devices), "
           f"got {mesh!r}")
  for side in ("teacher", "student"):
    m = c[side]
    _require(isinstance(m["model"], str) and m["model"],
             f"config.{side}.model must name a model of kdjax.models, got {m['model']!r}")
    _require(m["dtype"] in DTYPES,
             f"config.{side}.dtype={m['dtype']!r} is not supported; use one of {DTYPES}")
    _require(m["num_classes"] is None or (_is_int(m["num_classes"]) and m["num_classes"] > 0),
             f"config.{side}.num_classes must be a positive integer or None (the dataset's), "
             f"got {m['num_classes']!r}")
  augment = c["data"]["augment"]
  _require(_is_int(augment["crop_padding"]) and augment["crop_padding"] >= 0,
           f"config.data.augment.crop_padding must be an integer >= 0, got "
           f"{augment['crop_padding']!r}")
  for key in ("mixup_alpha", "cutmix_alpha"):
    _require(_is_number(augment[key]) and augment[key] >= 0,
             f"config.data.augment.{key} must be >= 0 (0: off), got {augment[key]!r}")
  _require(not (augment["mixup_alpha"] > 0 and augment["cutmix_alpha"] > 0),
           "config.data.augment: mixup_alpha and cutmix_alpha are both set; set one to 0")
  _check_optimizer(c["optimizer"], "optimizer", c["total_steps"])
  _check_optimizer(c["teacher"]["optimizer"], "teacher.optimizer", c["teacher"]["total_steps"])
  _check_objective(c["objective"])
  check_stages(c["stages"], c["objective"], c["total_steps"])
  _check_teacher_cache(c)


def _check_teacher_cache(c: Mapping):
  tc = c["teacher_cache"]
  _require(isinstance(tc["enabled"], bool),
           f"config.teacher_cache.enabled must be True or False, got {tc['enabled']!r}")
  _check_positive_int(c, "teacher_cache.replay_epochs")
  for key in ("k", "batch_size", "chunk_size"):
    _check_positive_int(c, f"teacher_cache.{key}", minimum=0)
  for key, allowed in (("values_dtype", tuple(teacher_cache.VALUE_DTYPES)),
                       ("mode", teacher_cache.MODES), ("on_stale", teacher_cache.ON_STALE)):
    _require(tc[key] in allowed,
             f"config.teacher_cache.{key}={tc[key]!r}; use one of {allowed}")
  augment = c["data"]["augment"]
  _require(not (tc["enabled"] and (augment["mixup_alpha"] > 0 or augment["cutmix_alpha"] > 0)),
           "config.teacher_cache.enabled=True with mixup / CutMix: a mixed view depends on its "
           "batch partner, so the teacher's outputs on it cannot be cached; set "
           "config.data.augment.mixup_alpha and cutmix_alpha to 0 or turn the teacher cache off")


