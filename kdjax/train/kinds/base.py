"""What every run kind shares: the declaration's common fields, the pipeline's context, and the
plan of a run that trains one model with a ``DistillState``.

A kind is a :class:`RunKind`: its ``fields`` (a frozen dataclass extending :class:`Run`, which
also says which fields name earlier runs, the run's model section and its class count) and
``plan(ctx, decl) -> RunPlan``. The table of kinds is :data:`kdjax.train.kinds.KINDS`.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from kdjax import models
from kdjax import parallel
from kdjax import step as step_lib
from kdjax import workdir as contract
from kdjax.train import builders
from kdjax.train import schema
from kdjax.train import checkpoint as ckpt_lib
from kdjax.train import rundata
from kdjax.train.errors import ConfigError
from kdjax.train.execute import RunPlan

# Initialisation and step-key tags of the two standard sections (as in every earlier release).
_TAGS = {"teacher": (1, 2), "student": (3, 4)}


@dataclasses.dataclass(frozen=True)
class Run:
  """The fields every declaration has.

  Attributes:
    name: the run's name, its directory in the workdir.
    kind: the key of its kind in :data:`kdjax.train.kinds.KINDS`.
    model: its model section: ``'teacher'``, ``'student'`` or a key of ``config.models``.
    steps: updates to apply (0: ``config.total_steps``, ``teacher.total_steps`` for the
      teacher section).
    seed: an offset of the model's initialisation and step keys (born-again generations).
    classes: train and evaluate on these labels only (empty: every class).
    init_from: start from this earlier run's trained parameters.
  """

  name: str
  kind: str
  model: str = "student"
  steps: int = 0
  seed: int = 0
  classes: tuple[int, ...] = ()
  init_from: str = ""

  reads: ClassVar[tuple[str, ...]] = ("init_from",)  # Fields that name earlier runs.
  external: ClassVar[bool] = False  # Its trained model is read from outside the workdir.

  def read_runs(self) -> tuple[str, ...]:
    """The earlier runs this one reads, by name."""
    out: list[str] = []
    for field in self.reads:
      value = getattr(self, field)
      out += [value] if isinstance(value, str) else list(value)
    return tuple(v for v in out if v)

  def section(self) -> str:
    """The model section of the run's (first) model."""
    return self.model

  def num_classes(self, decls: Mapping[str, "Run"]) -> int | None:
    """The class count of the run's model when it differs from the dataset's, else ``None``."""
    del decls
    return max(self.classes) + 1 if self.classes else None

  def total_steps(self, config: Any) -> int:
    if self.steps:
      return int(self.steps)
    return int(config.teacher.total_steps if self.model == "teacher" else config.total_steps)

  def checkpoint(self, ctx: "Context") -> tuple[str, str]:
    """Where the run's trained model is, and how a message names it."""
    return f"{ctx.checkpoint_dir(self.name)}/{self.total_steps(ctx.config)}", f"run '{self.name}'"

  def reuse_key(self) -> str:
    """The config key a new workdir can point at this finished run to load it instead of
    retraining it ('' when there is none)."""
    return ""

  def load_variables(self, ctx: "Context", model: models.Model) -> tuple[Any, Any]:
    """The trained ``(params, model_state)`` of the run, read into ``model``'s structure."""
    path, what = self.checkpoint(ctx)
    return ckpt_lib.load_model_variables(path, model.params, model.model_state, what=what)

  def export_form(self, ctx: "Context", trained: models.Model) -> models.Model:
    """The model an export of this run writes (the trained model itself, by default)."""
    del ctx
    return trained


class RunKind(NamedTuple):
  """A run kind: its declaration's fields and how a declaration becomes a plan."""

  fields: type[Run]
  plan: Callable[["Context", Any], RunPlan]


@dataclasses.dataclass
class Context:
  """What every run of a pipeline shares: config, data, workdir, and the trained models.

  ``workdir``: the workdir's path (run directories; the teacher cache unless the config says).
  ``abstract``: set while the pipeline checks every run with ``jax.eval_shape`` before anything
  is written; earlier runs' models are then freshly initialised instead of read from disk.
  """

  config: Any
  data: Any
  workdir: str
  decls: Mapping[str, Run]
  abstract: bool = False
  _trained: dict = dataclasses.field(default_factory=dict)

  def run_dir(self, run: str) -> str:
    return contract.run_dir(self.workdir, run)

  def checkpoint_dir(self, run: str) -> str:
    return contract.checkpoint_dir(self.workdir, run)

  def data_for(self, classes: tuple[int, ...] = ()) -> Any:
    return rundata.make(self.config, classes=tuple(classes)) if classes else self.data

  def key(self, section: str, purpose: int, seed: int = 0) -> jax.Array:
    tag = _TAGS.get(section)
    base = tag[purpose] if tag else 1000 + 2 * (zlib.crc32(section.encode()) % 100000) + purpose
    key = jax.random.fold_in(jax.random.key(self.config.seed), base)
    return jax.random.fold_in(key, seed) if seed else key

  def section(self, name: str) -> Any:
    if name in ("teacher", "student"):
      return self.config[name]
    if name not in self.config.models:
      raise ConfigError(f"model section {name!r} is neither 'teacher', 'student' nor a key of "
                        f"config.models (which has {sorted(self.config.models)})")
    section = self.config.models[name]
    if section.get("num_classes") is None:
      section = {**section, "num_classes": self.config.student.num_classes}
    return schema.model_section(section, name)

  def model(self, section: str, *, seed: int = 0, taps=(), num_classes: int | None = None,
            data: Any = None) -> models.Model:
    spec = self.section(section)
    shapes = (data or self.data).shapes
    if num_classes is not None:
      spec = schema.model_section({**builders.plain(spec), "num_classes": num_classes}, section)
    return builders.make_model(spec, side=section, input_shape=shapes.input_shape,
                               rng=self.key(section, 0, seed), taps=taps,
                               bn_axis_name=_bn_axis_name(self.config))

  def _untrained(self, run: str, taps=()) -> models.Model:
    decl = self.decls[run]
    return self.model(decl.section(), seed=decl.seed, taps=taps,
                      num_classes=decl.num_classes(self.decls), data=self.data_for(decl.classes))

  def load(self, run: str, path: str, *, what: str, fix: str = "") -> None:
    """Reads run ``run``'s trained variables from the checkpoint ``path`` (instead of its final
    one) for :meth:`trained` to return: ``kdjax export --allow_partial``."""
    model = self._untrained(run)
    self._trained[run] = _finite(ckpt_lib.load_model_variables(
        path, model.params, model.model_state, what=what, fix=fix), what)

  def trained(self, run: str, *, taps=()) -> models.Model:
    """Run ``run``'s trained model (its final checkpoint), tapping ``taps``."""
    decl = self.decls[run]
    model = self._untrained(run, taps)
    if self.abstract and not decl.external:
      return model
    if run not in self._trained:
      self._trained[run] = _finite(decl.load_variables(self, model), decl.checkpoint(self)[1])
    params, model_state = self._trained[run]
    return dataclasses.replace(model, params=params, model_state=model_state, name=run)

  def runner(self, **kwargs) -> Any:
    c = self.config
    try:
      return parallel.make_runner(c.parallel, mesh_shape=dict(c.mesh),
                                  shard_teacher=c.shard_teacher, shard_student=c.shard_student,
                                  **kwargs)
    except ValueError as e:
      raise ConfigError(f"config.parallel / config.mesh: {e}") from None


def _finite(variables: tuple[Any, Any], what: str) -> tuple[Any, Any]:
  """``(params, model_state)`` read from a checkpoint, refused when a value is NaN or inf: a
  teacher of NaN would make every student loss NaN, and the message would blame the student."""
  for name, tree in zip(("params", "model_state"), variables):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      value = np.asarray(leaf)
      if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
        bad = int((~np.isfinite(value)).sum())
        raise ConfigError(
            f"{what}: the model read from it has non-finite values ({bad} of {value.size} in "
            f"{name}{jax.tree_util.keystr(path)}): the checkpoint is damaged or its training "
            "diverged; use a checkpoint of a model that trained without NaN (or retrain it)")
  return variables


def _bn_axis_name(config: Any) -> str | None:
  # Under pmap each device sees a slice of the batch: BatchNorm averages its statistics over the
  # mapped axis to normalise like the jit path, which sees the global batch.
  return parallel.PMAP_AXIS if config.parallel == "pmap" else None


def class_names(ctx: Context) -> dict[str, list[str]]:
  """``{"class_names": [...]}`` of the dataset, for a results entry (empty when unknown)."""
  names = getattr(getattr(ctx.data, "info", None), "class_names", None)
  return {"class_names": list(names)} if names else {}


def input_key(ctx: Context, section: str, data: Any) -> str:
  """The batch entry the models of ``section`` read: ``config.<section>.input_key`` or the
  dataset's input."""
  return ctx.section(section).get("input_key") or data.shapes.input_key


def teacher_input_key(ctx: Context, runs: Sequence[str], data: Any) -> str | None:
  """The one batch entry the models of the teacher runs ``runs`` read (``None``: no runs)."""
  keys = sorted({input_key(ctx, ctx.decls[r].section(), data) for r in runs if r})
  if len(keys) > 1:
    raise ConfigError(f"teachers {list(runs)} read different batch entries {keys}; an ensemble "
                      "reads one input: give their model sections the same input_key")
  return keys[0] if keys else None


def optimizer_of(ctx: Context, decl: Run, data: Any):
  """The run's optimizer, its learning-rate schedule and the hint a NaN message gives."""
  key = "teacher.optimizer" if decl.model == "teacher" else "optimizer"
  opt = ctx.config.teacher.optimizer if decl.model == "teacher" else ctx.config.optimizer
  tx, schedule = builders.make_optimizer(opt, total_steps=decl.total_steps(ctx.config),
                                         steps_per_epoch=data.shapes.num_train /
                                         ctx.config.batch_size)
  hint = (f"Lower config.{key}.learning_rate (now {opt.learning_rate}), add a warm-up "
          f"(config.{key}.warmup_steps) or gradient clipping (config.{key}.grad_clip_norm), ")
  return tx, schedule, hint


def student_plan(ctx: Context, decl: Run, *, make_objective, teacher=None, eval_teacher=None,
                 make_student=None, evaluate=None, data=None, teacher_runs=(),
                 teacher_input: str | None = None) -> RunPlan:
  """The plan of a run that trains one model with a ``DistillState`` (most kinds).

  ``make_objective()`` builds the objective when the state is built (once per run; traced
  shape-only by the pipeline's checks), and its ``needs`` choose the student's taps;
  ``teacher(objective)`` gives the teacher tapping what the objective reads. ``data``: the run's
  data, when it is not ``ctx.data_for(decl.classes)`` (a stream carrying a teacher cache).
  ``teacher_runs``: the runs whose models ``teacher`` / ``eval_teacher`` give (their sections'
  ``input_key`` is the entry the teacher reads) unless ``teacher_input`` names another one (the
  teacher's own tokens of the text, beside the student's).
  """
  c, data = ctx.config, data if data is not None else ctx.data_for(decl.classes)
  section = decl.section()
  tx, schedule, hint = optimizer_of(ctx, decl, data)
  num_classes = decl.num_classes(ctx.decls)

  def init_state():
    objective = make_objective()
    student = (make_student() if make_student else
               ctx.model(section, seed=decl.seed, taps=objective.needs.student,
                         num_classes=num_classes, data=data))
    if decl.init_from:
      start = ctx.trained(decl.init_from)
      student = dataclasses.replace(student, params=start.params, model_state=start.model_state)
    try:
      return step_lib.DistillState.create(
          student=student, teacher=teacher(objective) if teacher else None, objective=objective,
          tx=tx, rng=ctx.key(section, 1, decl.seed), example_batch=data.example_batch(c.batch_size),
          input_key=input_key(ctx, section, data), label_key=data.shapes.label_key,
          teacher_input_key=teacher_input or teacher_input_key(ctx, teacher_runs, data),
          accumulation_steps=c.accumulation_steps)
    except (ValueError, TypeError) as e:
      raise ConfigError(f"run '{decl.name}': {e}") from None

  classes = num_classes or data.shapes.num_classes
  names = class_names(ctx)

  def default_evaluate(runner, state):
    if eval_teacher is None:
      return data.evaluate(runner, state, num_classes=classes)
    eval_runner = ctx.runner()
    host = runner.host_state(state).with_teacher(eval_teacher())
    return data.evaluate(eval_runner, eval_runner.put_state(host), num_classes=classes)

  return RunPlan(
      name=decl.name, total_steps=decl.total_steps(c), init_state=init_state,
      make_runner=ctx.runner, data=data, evaluate=evaluate or default_evaluate,
      summary=lambda host: {"params": models.param_count(host.student().params),
                            "model": builders.model_name(ctx.section(section)),
                            "model_section": section, **names},
      batch_size=c.batch_size, seed=c.seed, learning_rate=schedule, fix_hint=hint)
