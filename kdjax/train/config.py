"""Run configuration: the defaults every config starts from, and how a config is resolved.

A config is an ``ml_collections.ConfigDict``. :func:`base_config` holds every key with its
default, locked (so a misspelt key is an error with a suggestion) and with ``FieldReference``s
for dependent values (the teacher's steps and optimizer follow the student's until set). Config
files (``configs/*.py``) start from it and override a few fields. :func:`resolve` sets a config
(or a partial dict) onto the defaults with ml_collections' own type and key checks, checks every
value (:mod:`kdjax.train.checks`) and fills in what the dataset decides (class counts, the
evaluation split).
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict

from kdjax.train import checks
from kdjax.train.checks import check_stages  # noqa: F401  (part of this module's API)
from kdjax.train.errors import ConfigError

DTYPES = checks.DTYPES
# Keys whose values are free-form mappings: checked by the component that reads them.
FREE_FORM = ("teacher.model_kwargs", "student.model_kwargs", "objective", "stages", "runs",
             "models")
# Keys that change speed, logging or bookkeeping but not the trajectory of a run, so a workdir
# may be resumed with different values (e.g. on a different machine). Everything else must match
# the workdir's config.json.
RUNTIME_KEYS = (
    "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "progress_bar",
    "parallel", "mesh", "shard_teacher", "shard_student", "data.data_dir",
    "data.worker_count", "data.eval_batch_size", "logging", "checks", "checked_steps", "export",
    "teacher_cache.batch_size", "teacher_cache.chunk_size", "teacher_cache.dir",
    "teacher_cache.on_stale",
)


def _optimizer() -> ml_collections.ConfigDict:
  """The optimizer fields with their defaults."""
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
  return ml_collections.ConfigDict(defaults)


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
  c.data.image_size = 0  # folder:<dir> datasets: resize images to this size (0: as stored)
  # Training augmentation, applied once per example (teacher and student see the same view).
  c.data.augment = ml_collections.ConfigDict(
      {"crop_padding": 0, "flip": False, "mixup_alpha": 0.0, "cutmix_alpha": 0.0})

  c.optimizer = _optimizer()  # the students' optimizer (and the teacher's defaults)

  c.teacher = ml_collections.ConfigDict()
  c.teacher.model = "cnn_small"  # a kdjax.models zoo name
  c.teacher.model_kwargs = ml_collections.ConfigDict()  # extra arguments of models.create
  c.teacher.num_classes = config_dict.placeholder(int)  # None: the dataset's class count
  c.teacher.dtype = "float32"  # computation dtype: float32 | bfloat16 | float16
  c.teacher.total_steps = c.get_ref("total_steps").identity()  # follows total_steps until set
  c.teacher.checkpoint = ""  # a trained teacher to load; "" trains it in WORKDIR/teacher
  # Every field follows config.optimizer's until the config sets it (FieldReference).
  c.teacher.optimizer = ml_collections.ConfigDict(
      {k: c.optimizer.get_ref(k).identity() for k in c.optimizer.keys()})

  c.student = ml_collections.ConfigDict()
  c.student.model = "mlp"
  c.student.model_kwargs = ml_collections.ConfigDict()
  c.student.num_classes = config_dict.placeholder(int)
  c.student.dtype = "float32"


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
  # After distillation (kdjax.train.compress_runs): runs after student_kd that prune and
  # quantize the distilled student while it keeps distilling from the teacher.
  c.compress = ml_collections.ConfigDict({
      "pruning": 0.0,  # target sparsity of student_kd_pruned (0: no pruning run)
      "prune_structure": "unstructured",  # unstructured | 2:4
      "prune_begin": 0,  # first pruning step of the run
      "prune_end": 0,  # the step the target is reached (0: 3/4 of the run)
      "prune_frequency": 10,  # steps between mask updates
      "keep_dense": (),  # regexes of student parameter paths left dense (e.g. 'head/.*')
      "quantization": "none",  # none | ptq | qat: the student_kd_int8 run
      "weight_bits": 8,  # 8 or 4
      "act_bits": 8,  # 0: float activations
      "keep_float": (),  # regexes of module paths left in float
      "steps": 0,  # steps of each compression run (0: total_steps)
  })
  # Offline teacher (kdjax.teacher_cache): distill runs read the teacher's outputs on replayed
  # views from a cache built once, and the training step runs no teacher forward.
  c.teacher_cache = ml_collections.ConfigDict({
      "enabled": False,
      "replay_epochs": 4,  # distinct augmented views per example (epoch e shows view e mod E)
      "k": 0,  # top-k logits kept per view (0: all of them; exact KD)
      "values_dtype": "float16",  # float16 | bfloat16 | float32
      "mode": "renormalize",  # renormalize (raw logits, any temperature) | remainder
      "batch_size": 0,  # examples per teacher forward while building (0: data.eval_batch_size)
      "chunk_size": 0,  # examples per resumable unit of the build (0: 8 x batch_size)
      "dir": "",  # "" = WORKDIR/teacher_cache; one subdirectory per teacher run
      "on_stale": "rebuild",  # a cache of another teacher or other settings: rebuild | error
  })
  # Export of the students after the runs (kdjax.export): formats among stablehlo, onnx.
  c.export = ml_collections.ConfigDict({"formats": (), "batch_size": 0})
  c.lock()  # Unknown keys are errors, with ml_collections' "did you mean" suggestion.
  return c


# Setting a config onto the defaults ----------------------------------------------------------


def _tuples(value: Any) -> Any:
  if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  return value


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; free-form mappings (objective, model_kwargs) stay whole."""
  flat = {}
  for k, v in tree.items():
    if isinstance(v, Mapping) and v and f"{prefix}{k}" not in FREE_FORM:
      flat.update(flatten(v, f"{prefix}{k}."))
    else:
      flat[f"{prefix}{k}"] = v
  return flat


def _set(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  """``config.<path> = value`` through ml_collections, its errors turned into one line."""
  parts = path.split(".")
  node = config
  for i, part in enumerate(parts):
    where = ".".join(parts[:i + 1])
    try:
      if not isinstance(node, ml_collections.ConfigDict):
        raise AttributeError(f"{'.'.join(parts[:i])} is not a mapping")
      if i < len(parts) - 1:
        node = getattr(node, part)
      else:
        setattr(node, part, value)
    except AttributeError as e:
      hint = re.search(r'Did you mean "([^"]+)"', str(e))
      close = f" (did you mean '{'.'.join(parts[:i] + [hint.group(1)])}'?)" if hint else ""
      known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise ConfigError(f"unknown config key '{where}'{close}; the known keys here are {known} "
                        "(see kdjax.train.config.base_config for every key)") from None
    except TypeError:
      current = getattr(node, part)
      if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"config key '{path}' must be a mapping of {sorted(current.keys())}, "
                          f"got {value!r}") from None
      raise ConfigError(f"config.{path}={value!r} is a {type(value).__name__}, but config.{path} "
                        f"takes a {type(current).__name__} (e.g. {current!r}); fix its type in "
                        "the config file or the --config override") from None


def resolve(config: Any, *, num_classes: int | None = None,
            eval_split: str | None = None) -> ml_collections.ConfigDict:
  """The complete, checked config: ``config`` set onto :func:`base_config`.

  Args:
    config: a ``ConfigDict`` or mapping; keys it leaves out take their defaults (and the
      teacher's steps and optimizer fields follow the student's unless it sets them).
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
  c = base_config()
  for path, value in flatten(_tuples(config)).items():
    _set(c, path, value)
  c = _tuples(c)  # References resolved: the config is plain values from here on.
  checks.validate(c)
  c = ml_collections.ConfigDict(c)
  if num_classes is not None or eval_split:
    c = with_dataset(c, num_classes=num_classes, eval_split=eval_split)
  return c


def with_dataset(config: ml_collections.ConfigDict, *, num_classes: int | None,
                 eval_split: str | None) -> ml_collections.ConfigDict:
  """A resolved config with the values the dataset decides filled in (and checked)."""
  c = _tuples(config)
  if eval_split and not c["data"]["eval_split"]:
    c["data"]["eval_split"] = eval_split
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
  return json.dumps(_tuples(config), indent=2, sort_keys=True, default=list)


def differing_keys(saved: Mapping, current: Any) -> list[str]:
  """Keys (dotted) whose values differ between a saved config.json and ``current``.

  Runtime keys (:data:`RUNTIME_KEYS`) are ignored: they do not change a run's trajectory.
  """
  a = flatten(json.loads(json.dumps(_tuples(saved), default=list)))
  b = flatten(json.loads(to_json(current)))
  # A key a newer kdjax added is absent from an older config.json: it had its default there.
  defaults = flatten(json.loads(to_json(base_config())))
  a = {**{k: v for k, v in defaults.items() if k not in a and k in b}, **a}

  def runtime(key):
    return any(key == r or key.startswith(r + ".") for r in RUNTIME_KEYS)

  return sorted(k for k in set(a) | set(b) if not runtime(k) and a.get(k) != b.get(k))
