"""The whole config: the top-level keys and every section, checked together."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from kdjax.train.schema._base import Section, check_choice, check_int, is_int, key, require
from kdjax.train.schema._base import section
from kdjax.train.schema._compress import Compress, Export
from kdjax.train.schema._data import Data
from kdjax.train.schema._model import Model, Teacher, hf_config, model_section
from kdjax.train.schema._objective import DEFAULT_OBJECTIVE, check_objective, check_stages
from kdjax.train.schema._optimizer import Optimizer
from kdjax.train.schema._teacher_cache import TeacherCache

PARALLEL_MODES = ("jit", "pmap")


@dataclasses.dataclass(frozen=True)
class Mesh(Section):
  """Device mesh axis sizes (``-1``: the remaining devices)."""

  data: int = key(-1, "batch axis: examples are split over it")
  fsdp: int = key(1, "parameter-sharding axis (`shard_teacher`, `shard_student`)")
  model: int = key(1, "model-parallel axis: attention heads, MLP hidden units and the "
                      "vocabulary split over it (`kdjax.parallel.MODEL_RULES`); `parallel='jit'`")

  def check(self, path: str, root: Any) -> None:
    sizes = dataclasses.asdict(self)
    require(all(is_int(v) and (v == -1 or v >= 1) for v in sizes.values()),
            f"config.{path} must map {MESH_AXES} to sizes >= 1 or -1 (the remaining devices), "
            f"got {sizes!r}")


MESH_AXES = tuple(f.name for f in dataclasses.fields(Mesh))


@dataclasses.dataclass(frozen=True)
class Logging(Section):
  """Where metrics go besides ``WORKDIR/<run>/metrics.jsonl``."""

  tensorboard: bool = key(True, "TensorBoard event files in `WORKDIR/<run>`")
  wandb: str = key("", "a Weights & Biases project: log there too (offline mode without an API "
                       "key)")


@dataclasses.dataclass(frozen=True)
class Config(Section):
  """Every config key: the top-level ones, then one field per section."""

  FREE_FORM = ("runs", "models", "objective", "stages")

  seed: int = key(0, "model initialisation, data order, augmentation and dropout all derive "
                     "from it")
  batch_size: int = key(128, "the **global** batch (all devices and processes); a multiple of "
                             "the device count x `accumulation_steps`")
  total_steps: int = key(1000, "optimizer updates of each student run")
  accumulation_steps: int = key(1, "micro-batches per update (gradient accumulation)")
  log_every: int = key(50, "steps between `metrics.jsonl` / TensorBoard records", runtime=True)
  eval_every: int = key(500, "steps between evaluations (0: only at the end)", runtime=True)
  checkpoint_every: int = key(500, "steps between checkpoints; evaluation steps and the last "
                                   "step are always saved", runtime=True)
  keep_checkpoints: int = key(2, "latest checkpoints kept; the best evaluated one (by `accuracy`, "
                                 "`miou`, `map` or `perplexity`: the run's headline metric) is "
                                 "kept as well", runtime=True)
  progress_bar: bool = key(True, "a tqdm bar (loss, steps/s, ETA) on process 0", runtime=True)
  parallel: str = key("jit", "`jit` (a device mesh, the main path) or `pmap`", runtime=True)
  mesh: Mesh = section(Mesh, runtime=True)
  shard_teacher: bool = key(False, "shard the teacher's parameters over the `fsdp` axis",
                            runtime=True)
  shard_student: bool = key(False, "shard the student's parameters, optimizer and objective "
                                   "state too", runtime=True)
  compare_baseline: bool = key(True, "also train the student without distillation (the "
                                     "`student` run)")
  teacher_only: bool = key(False, "stop after the teacher run (train a teacher to reuse with "
                                  "`teacher.checkpoint`)")
  runs: tuple = key((), "the runs, in order: `{name, kind, ...}` dicts (`kdjax.train` run "
                        "kinds); `()`: the standard `teacher` -> `student` -> `student_kd` "
                        "pipeline")
  models: dict = key({}, "more model sections for `runs` to name: `{name: {model, "
                         "model_kwargs, num_classes, dtype}}`", shown="`{}`")
  checked_steps: int = key(10, "the first steps of every run (and of every resume) run through "
                               "`kdjax.checked`: bad labels, non-finite inputs, losses or "
                               "gradients stop the run naming the step (0: off)", runtime=True)
  logging: Logging = section(Logging, runtime=True)
  data: Data = section(Data)
  optimizer: Optimizer = section(Optimizer)
  teacher: Teacher = section(Teacher)
  student: Model = section(Model)
  objective: dict = key(DEFAULT_OBJECTIVE, "the `student_kd` run's objective: term name -> "
                        "`{kind, weight, warmup_steps, **arguments}`",
                        shown="`{ce: 0.1 x cross_entropy, kd: 0.9 x kd(T=4)}`")
  stages: tuple = key((), "consecutive training stages of `student_kd`: `{steps, terms}` each "
                          "(`()`: one stage, every term)")
  compress: Compress = section(Compress)
  teacher_cache: TeacherCache = section(TeacherCache)
  export: Export = section(Export, runtime=True)

  def check(self, path: str = "", root: Any = None) -> None:
    """Every section's checks, in the order of the keys."""
    root = self
    require(is_int(self.seed), f"config.seed must be an integer, got {self.seed!r}")
    for name in ("batch_size", "total_steps", "accumulation_steps", "log_every",
                 "checkpoint_every", "keep_checkpoints"):
      check_int(getattr(self, name), name)
    for name in ("eval_every", "checked_steps"):
      check_int(getattr(self, name), name, minimum=0)
    require(self.batch_size % self.accumulation_steps == 0,
            f"config.batch_size={self.batch_size} must be divisible by "
            f"config.accumulation_steps={self.accumulation_steps}")
    check_choice(self.parallel, "parallel", PARALLEL_MODES, "a parallel mode")
    self.mesh.check("mesh", root)
    require(self.parallel == "jit" or self.mesh.model == 1,
            f"config.parallel={self.parallel!r} is pure data parallelism but config.mesh.model="
            f"{self.mesh.model}; set config.parallel='jit' to split the models over a model axis")
    require(isinstance(self.runs, tuple) and all(isinstance(r, Mapping) for r in self.runs),
            f"config.runs must be a tuple of run declarations ({{'name': ..., 'kind': ...}}), "
            f"got {self.runs!r}")
    require(isinstance(self.models, Mapping),
            f"config.models must map section names to model sections, got {self.models!r}")
    for name, spec in self.models.items():
      require(isinstance(spec, Mapping), f"config.models.{name} must be a mapping with a "
              f"'model', got {spec!r}")
      model_section(spec, name)
    self.data.check("data", root)
    self.optimizer.check("optimizer", root)
    self.teacher.check("teacher", root)
    self.teacher.optimizer.check("teacher.optimizer", root)
    self.student.check("student", root)
    _check_hf_pair(self)
    check_objective(self.objective)
    check_stages(self.stages, self.objective, self.total_steps)
    self.compress.check("compress", root)
    self.teacher_cache.check("teacher_cache", root)
    self.export.check("export", root)


def _check_hf_pair(config: Config) -> None:
  """Teacher and student read from Hugging Face directories must share a vocabulary."""
  sources = {side: getattr(config, side).hf_source() for side in ("teacher", "student")}
  if not all(sources.values()):
    return
  vocab = {side: hf_config(directory).get("vocab_size") for side, (_, directory) in
           sources.items()}
  require(vocab["teacher"] == vocab["student"],
          f"config.teacher.{sources['teacher'][0]} has a vocabulary of {vocab['teacher']} tokens "
          f"but config.student.{sources['student'][0]} has {vocab['student']}; distillation "
          "compares the two models token by token, so use directories with the same vocabulary")


def validate(values: Mapping[str, Any]) -> Config:
  """The typed config of ``values`` (a resolved config as plain dicts), every key checked.

  Raises:
    ConfigError: the first value kdjax cannot use, naming ``config.<key>`` and the fix.
  """
  config = Config.parse(values)
  config.check()
  return config


RUNTIME_KEYS = tuple(Config.runtime_keys())
FREE_FORM = ("teacher.model_kwargs", "student.model_kwargs") + Config.FREE_FORM
