"""Run configuration: the defaults every config starts from, and the checks it must pass.

A config is an ``ml_collections.ConfigDict``. :func:`base_config` holds every key with its
default; config files (``configs/*.py``) start from it and override a few fields. :func:`resolve`
merges a config onto the defaults, rejects unknown keys and impossible values with a
:class:`ConfigError` that names the fix, and fills in the values that depend on the dataset
(class counts, evaluation split) or on other keys (the teacher's steps and optimizer).
"""
from __future__ import annotations

import difflib
import json
import math
from typing import Any, Iterable, Mapping

import ml_collections
from ml_collections import config_dict

from kdjax.train.errors import ConfigError

PARALLEL_MODES = ("jit", "pmap")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adamw")
SCHEDULES = ("cosine", "step", "constant")
DTYPES = ("float32", "bfloat16", "float16")
MESH_AXES = ("data", "fsdp")
# Keys whose values are free-form mappings: checked by the component that reads them.
FREE_FORM = ("teacher.model_kwargs", "student.model_kwargs", "objective", "stages", "runs",
             "models")
# Keys that change speed, logging or bookkeeping but not the trajectory of a run, so a workdir
# may be resumed with different values (e.g. on a different machine). Everything else must match
# the workdir's config.json.
RUNTIME_KEYS = (
    "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "progress_bar",
    "parallel", "mesh", "shard_teacher", "shard_student", "data.data_dir",
    "data.worker_count", "data.eval_batch_size", "logging", "checks", "checked_steps",
)


def _optimizer(inherit: bool = False) -> ml_collections.ConfigDict:
  """Optimizer fields; with ``inherit`` every field is ``None`` (= take ``config.optimizer``'s)."""
  defaults = dict(
      name="momentum",  # sgd | momentum | nesterov | adamw
      learning_rate=0.1,  # peak learning rate, reached after warmup_steps
      momentum=0.9,  # sgd with momentum / nesterov
      b1=0.9,  # adamw
      b2=0.999,  # adamw
      eps=1e-8,  # adamw
      weight_decay=5e-4,  # decoupled for adamw, L2 added to the gradient for sgd; never on
      # biases or normalisation scales (parameters with fewer than 2 dimensions)
      schedule="cosine",  # cosine | step | constant
      warmup_steps=0,  # linear warm-up from 0 to learning_rate
      min_learning_rate=0.0,  # cosine: the learning rate at the last step
      decay_factor=0.1,  # step: multiply the learning rate by this at each boundary
      decay_steps=(),  # step: boundaries in steps ...
      decay_epochs=(),  # ... or in epochs of the training split (converted with batch_size)
      grad_clip_norm=0.0,  # clip the global gradient norm to this (0: no clipping)
  )
  if not inherit:
    return ml_collections.ConfigDict(defaults)
  types = {k: (tuple if isinstance(v, tuple) else type(v)) for k, v in defaults.items()}
  return ml_collections.ConfigDict({k: config_dict.placeholder(t) for k, t in types.items()})


def base_config() -> ml_collections.ConfigDict:
  """Every config key with its default value.

  The defaults train a small CNN teacher and an MLP student on the bundled ``digits`` dataset;
  ``configs/quickstart.py`` tunes them to finish in well under a minute on a laptop CPU.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0  # model init, data order, augmentation and dropout all derive from it
  c.batch_size = 128  # global batch size (all devices and processes together)
  c.total_steps = 1000  # optimizer updates of each student run
  c.accumulation_steps = 1  # micro-batches per update (gradient accumulation)
  c.log_every = 50  # steps between metrics.jsonl / TensorBoard records
  c.eval_every = 500  # steps between evaluations (0: only at the end)
  c.checkpoint_every = 500  # steps between checkpoints (the last step is always saved)
  c.keep_checkpoints = 2  # latest checkpoints kept; the best by eval accuracy is kept too
  c.progress_bar = True  # a tqdm bar on process 0
  c.parallel = "jit"  # jit (a device mesh) | pmap
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})  # -1: the remaining devices
  c.shard_teacher = False  # shard the teacher's parameters over the fsdp axis
  c.shard_student = False  # shard the student's parameters, optimizer and objective state too
  c.compare_baseline = True  # also train the student without distillation ("student" run)
  c.teacher_only = False  # stop after the teacher run (to train a teacher for later runs)
  # The runs, in order (kdjax.train.runs): dicts {name, kind, ...}; () = the standard pipeline
  # teacher -> student (with compare_baseline) -> student_kd.
  c.runs = ()
  # Model sections beyond teacher/student that runs name: {name: {model, model_kwargs,
  # num_classes, dtype}} (mutual-learning peers, ensemble teachers, assistants).
  c.models = ml_collections.ConfigDict()
  c.checks = True  # run the first checked_steps steps of every run with kdjax.checked
  c.checked_steps = 10
  c.logging = ml_collections.ConfigDict({
      "tensorboard": True,  # event files in WORKDIR/<run>
      "wandb": "",  # a W&B project name: log there too (offline mode without an API key)
  })

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"  # digits | synthetic | tfds:<name>[:<config>] | text:stdlib | ...
  c.data.data_dir = ""  # TFDS data directory ("" = the TFDS default)
  c.data.train_split = "train"
  c.data.eval_split = ""  # "" = the dataset's evaluation split (test where there is one)
  c.data.eval_batch_size = 512  # global; must be divisible by the device count
  c.data.worker_count = 0  # grain worker processes (0: load in the main process)
  c.data.standardize = False  # subtract the per-channel mean, divide by the std
  c.data.sequence_length = 64  # text datasets: tokens per training window
  # Training augmentation, applied once per example (teacher and student see the same view).
  c.data.augment = ml_collections.ConfigDict(
      {"crop_padding": 0, "flip": False, "mixup_alpha": 0.0, "cutmix_alpha": 0.0})

  c.teacher = ml_collections.ConfigDict()
  c.teacher.model = "cnn_small"  # a kdjax.models zoo name
  c.teacher.model_kwargs = ml_collections.ConfigDict()  # extra arguments of models.create
  c.teacher.num_classes = config_dict.placeholder(int)  # None: the dataset's class count
  c.teacher.dtype = "float32"  # computation dtype: float32 | bfloat16 | float16
  c.teacher.total_steps = config_dict.placeholder(int)  # None: total_steps
  c.teacher.checkpoint = ""  # a trained teacher to load; "" trains it in WORKDIR/teacher
  c.teacher.optimizer = _optimizer(inherit=True)  # None fields: config.optimizer's value

  c.student = ml_collections.ConfigDict()
  c.student.model = "mlp"
  c.student.model_kwargs = ml_collections.ConfigDict()
  c.student.num_classes = config_dict.placeholder(int)
  c.student.dtype = "float32"

  c.optimizer = _optimizer()  # the students' optimizer (and the teacher's defaults)

  # Distillation objective of the "student_kd" run: term name -> {kind, weight, warmup_steps,
  # **arguments of kdjax.objectives.<kind>}. warmup_steps > 0 ramps the weight linearly from 0.
  c.objective = ml_collections.ConfigDict({
      "ce": {"kind": "cross_entropy", "weight": 0.1},
      "kd": {"kind": "kd", "weight": 0.9, "temperature": 4.0},
  })
  # Multi-stage training of the "student_kd" run: consecutive stages, each
  # {"steps": n, "terms": (term names of config.objective that count in it)}; the other terms
  # have weight 0 during the stage. steps=0 on the last stage: until total_steps. Empty: one
  # stage with every term. E.g. a FitNets hint stage, then KD:
  #   ({"steps": 2000, "terms": ("hint",)}, {"steps": 0, "terms": ("ce", "kd")})
  c.stages = ()
  return c


# Merging and unknown keys ---------------------------------------------------------------------


def _to_plain(value: Any) -> Any:
  if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    return {k: _to_plain(v) for k, v in value.items()}
  if isinstance(value, Mapping):
    return {k: _to_plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_to_plain(v) for v in value)
  if isinstance(value, tuple):
    return tuple(_to_plain(v) for v in value)
  return value


def _suggest(key: str, known: Iterable[str]) -> str:
  close = difflib.get_close_matches(key, list(known), n=1)
  return f" (did you mean '{close[0]}'?)" if close else ""


def _merge(base: dict, user: Mapping, prefix: str = "") -> dict:
  out = dict(base)
  for key, value in user.items():
    path = f"{prefix}{key}"
    if key not in base:
      raise ConfigError(
          f"unknown config key '{path}'{_suggest(key, base)}; the known keys here are "
          f"{sorted(base)} (see kdjax.train.config.base_config for every key)")
    if path in FREE_FORM:
      out[key] = value if value is not None else {}
    elif isinstance(base[key], dict):
      if not isinstance(value, Mapping):
        raise ConfigError(f"config key '{path}' must be a mapping of {sorted(base[key])}, got "
                          f"{value!r}")
      out[key] = _merge(base[key], value, f"{path}.")
    else:
      out[key] = value
  return out


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; free-form mappings (objective, model_kwargs) stay whole."""
  flat = {}
  for k, v in tree.items():
    if isinstance(v, Mapping) and v and f"{prefix}{k}" not in FREE_FORM:
      flat.update(flatten(v, f"{prefix}{k}."))
    else:
      flat[f"{prefix}{k}"] = v
  return flat


# Value checks ---------------------------------------------------------------------------------


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


def _validate(c: Mapping):
  for path in ("seed",):
    _require(_is_int(c[path]), f"config.{path} must be an integer, got {c[path]!r}")
  for path in ("batch_size", "total_steps", "accumulation_steps", "log_every",
               "checkpoint_every", "keep_checkpoints", "data.eval_batch_size"):
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


# Public API -----------------------------------------------------------------------------------


def resolve(config: Any, *, num_classes: int | None = None,
            eval_split: str | None = None) -> ml_collections.ConfigDict:
  """The complete, checked config: ``config`` merged onto :func:`base_config`.

  Args:
    config: a ``ConfigDict`` or mapping; keys it leaves out take their defaults.
    num_classes: the dataset's class count; fills ``teacher/student.num_classes`` and is checked
      against values given explicitly.
    eval_split: the dataset's default evaluation split; fills ``data.eval_split`` when empty.

  Raises:
    ConfigError: an unknown key, a value of the wrong type or range, or class counts that
      disagree with the dataset.
  """
  if not isinstance(config, (Mapping, ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    raise ConfigError(f"a config is an ml_collections.ConfigDict (or a dict), got "
                      f"{type(config).__name__}; return one from get_config()")
  c = _merge(_to_plain(base_config()), _to_plain(config))
  if c["teacher"]["total_steps"] is None:
    c["teacher"]["total_steps"] = c["total_steps"]
  _check_positive_int(c, "teacher.total_steps")
  c["teacher"]["optimizer"] = {k: (c["optimizer"][k] if v is None else v)
                               for k, v in c["teacher"]["optimizer"].items()}
  if eval_split and not c["data"]["eval_split"]:
    c["data"]["eval_split"] = eval_split
  _validate(c)
  if num_classes is not None:
    for side in ("teacher", "student"):
      given = c[side]["num_classes"]
      if given is not None and given != num_classes:
        raise ConfigError(
            f"config.{side}.num_classes={given} but dataset '{c['data']['name']}' has "
            f"{num_classes} classes; set config.{side}.num_classes={num_classes} (or None to "
            "use the dataset's)")
      c[side]["num_classes"] = num_classes
  return ml_collections.ConfigDict(c)


def to_json(config: Any) -> str:
  """The config as JSON (tuples become lists), as written to ``WORKDIR/config.json``."""
  return json.dumps(_to_plain(config), indent=2, sort_keys=True, default=list)


def differing_keys(saved: Mapping, current: Any) -> list[str]:
  """Keys (dotted) whose values differ between a saved config.json and ``current``.

  Runtime keys (:data:`RUNTIME_KEYS`) are ignored: they do not change a run's trajectory.
  """
  a = flatten(json.loads(json.dumps(_to_plain(saved), default=list)))
  b = flatten(json.loads(to_json(current)))

  def runtime(key):
    return any(key == r or key.startswith(r + ".") for r in RUNTIME_KEYS)

  return sorted(k for k in set(a) | set(b) if not runtime(k) and a.get(k) != b.get(k))
