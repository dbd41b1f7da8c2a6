"""Runs declared in the config, and the kinds that turn a declaration into a :class:`RunPlan`.

``config.runs`` is a tuple of declarations, run in order; each is a dict with a ``name`` (its
directory), a ``kind`` and the kind's fields. Runs read earlier runs by name (a teacher, an old
task's model). An empty ``config.runs`` is the standard pipeline, built from the config's
``teacher`` / ``student`` sections: ``teacher`` -> ``student`` (the baseline, with
``compare_baseline``) -> ``student_kd``.

Kinds (fields beyond ``name`` and ``kind``; all optional unless said):

* ``supervised``: trains ``model`` (a model section: ``'teacher'``, ``'student'`` or a key of
  ``config.models``) with cross-entropy; ``compare``: a run whose model the evaluation measures
  agreement with.
* ``distill``: trains ``model`` with ``objective`` (default ``config.objective`` and
  ``config.stages``) from ``teachers`` (run names; several are combined by
  :func:`kdjax.strategies.ensemble_teacher` with ``combine``). With
  ``config.teacher_cache.enabled`` its one teacher's outputs are read from a cache built before
  the run (:mod:`kdjax.train.cache_runs`) and the step runs no teacher.
* ``load``: the trained teacher of ``config.teacher.checkpoint``, only evaluated.
* ``mutual``, ``lwf``: see :mod:`kdjax.train.strategy_runs`.

Every kind also takes ``steps`` (default ``config.total_steps``; ``teacher.total_steps`` for
the teacher section), ``seed`` (an offset of the model's initialisation and step keys: born-again
generations), ``classes`` (train and evaluate on these labels only) and ``init_from`` (start from
another run's trained parameters).
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable, Mapping

import jax

from kdjax import models
from kdjax import parallel
from kdjax import step as step_lib
from kdjax import strategies
from kdjax.train import builders
from kdjax.train import cache_runs
from kdjax.train import checkpoint as ckpt_lib
from kdjax.train import rundata
from kdjax.train.errors import ConfigError
from kdjax.train.execute import RunPlan

COMMON_FIELDS = ("name", "kind", "model", "steps", "seed", "classes", "init_from")
KINDS: dict[str, tuple[Callable[..., RunPlan], tuple[str, ...]]] = {}
# Initialisation and step-key tags of the two standard sections (as in every earlier release).
_TAGS = {"teacher": (1, 2), "student": (3, 4)}


def kind(name: str, fields: tuple[str, ...] = ()):
  """Registers a plan builder ``(ctx, decl) -> RunPlan`` as run kind ``name``."""
  def register(fn):
    KINDS[name] = (fn, COMMON_FIELDS + fields)
    return fn
  return register


def standard_runs(config: Any) -> tuple[dict[str, Any], ...]:
  """The declarations of the standard pipeline: teacher, baseline student, distilled student."""
  teacher = ({"name": "teacher", "kind": "load"} if config.teacher.checkpoint else
             {"name": "teacher", "kind": "supervised", "model": "teacher"})
  if config.teacher_only:
    return (teacher,)
  runs = [teacher]
  if config.compare_baseline:
    runs.append({"name": "student", "kind": "supervised", "model": "student",
                 "compare": "teacher"})
  runs.append({"name": "student_kd", "kind": "distill", "model": "student",
               "teachers": ("teacher",)})
  from kdjax.train import compress_runs  # pylint: disable=g-import-not-at-top
  return tuple(runs + compress_runs.compress_runs(config))


def declarations(config: Any) -> tuple[dict[str, Any], ...]:
  """``config.runs`` (or the standard pipeline), checked: kinds, fields, names, references."""
  decls = tuple(dict(d) for d in (config.runs or standard_runs(config)))
  seen: list[str] = []
  for i, d in enumerate(decls):
    where = f"config.runs[{i}]"
    if d.get("kind") not in KINDS:
      raise ConfigError(f"{where}.kind={d.get('kind')!r} is not a run kind; use one of "
                        f"{sorted(KINDS)}")
    unknown = sorted(set(d) - set(KINDS[d["kind"]][1]))
    if unknown:
      raise ConfigError(f"{where} (kind {d['kind']!r}) has no field(s) {unknown}; its fields are "
                        f"{list(KINDS[d['kind']][1])}")
    name = d.get("name")
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
      raise ConfigError(f"{where}.name={name!r} must be a name of letters, digits, '_' or '-' "
                        "(it is the run's directory)")
    if name in seen:
      raise ConfigError(f"{where}.name={name!r} is used twice; every run needs its own name")
    for ref in tuple(d.get("teachers", ())) + tuple(
        d[k] for k in ("compare", "init_from", "old") if d.get(k)):
      if ref not in seen:
        raise ConfigError(f"{where} reads run {ref!r}, which no earlier run declares; declare it "
                          f"before {name!r} (earlier runs: {seen})")
    seen.append(name)
  return decls


@dataclasses.dataclass
class Context:
  """What every run of a pipeline shares: config, data, workdir, and the trained models.

  ``abstract``: set while the pipeline checks every run with ``jax.eval_shape`` before anything
  is written; earlier runs' models are then freshly initialised instead of read from disk.
  ``workdir``: the workdir's path (where a teacher cache goes unless the config says).
  """

  config: Any
  data: Any
  checkpoint_dir: Callable[[str], str]
  decls: Mapping[str, Mapping[str, Any]]
  abstract: bool = False
  workdir: str = ""
  _trained: dict = dataclasses.field(default_factory=dict)

  def data_for(self, decl: Mapping[str, Any]) -> Any:
    classes = tuple(decl.get("classes", ()))
    return rundata.make(self.config, classes=classes) if classes else self.data

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
    return builders.model_section(section, name)

  def model(self, section: str, *, seed: int = 0, taps=(), num_classes: int | None = None,
            data: Any = None) -> models.Model:
    spec = self.section(section)
    shapes = (data or self.data).shapes
    if num_classes is not None:
      spec = builders.model_section({**builders.plain(spec), "num_classes": num_classes}, section)
    return builders.make_model(spec, side=section, input_shape=shapes.input_shape,
                               rng=self.key(section, 0, seed), taps=taps,
                               bn_axis_name=_bn_axis_name(self.config))

  def trained(self, run: str, *, taps=()) -> models.Model:
    """Run ``run``'s trained model (its final checkpoint), tapping ``taps``."""
    decl = self.decls[run]
    if decl["kind"] == "load":
      model = self.model("teacher", taps=taps)
      path = self.config.teacher.checkpoint
    else:
      model = self.model(decl.get("model", "student"), seed=decl.get("seed", 0), taps=taps,
                         num_classes=model_classes(self, decl),
                         data=self.data_for(decl))
      path = f"{self.checkpoint_dir(run)}/{steps_of(self, decl)}"
    if self.abstract and decl["kind"] != "load":
      return model
    if run not in self._trained:
      self._trained[run] = ckpt_lib.load_model_variables(
          path, model.params, model.model_state,
          what=("config.teacher.checkpoint" if decl["kind"] == "load" else f"run '{run}'"))
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


def _bn_axis_name(config: Any) -> str | None:
  # Under pmap each device sees a slice of the batch: BatchNorm averages its statistics over the
  # mapped axis to normalise like the jit path, which sees the global batch.
  return parallel.PMAP_AXIS if config.parallel == "pmap" else None


def steps_of(ctx: Context, decl: Mapping[str, Any]) -> int:
  if decl.get("steps"):
    return int(decl["steps"])
  if decl.get("model") == "teacher":
    return int(ctx.config.teacher.total_steps)
  return int(ctx.config.total_steps)


def model_classes(ctx: Context, decl: Mapping[str, Any]) -> int | None:
  """The class count of a run's model when its ``classes`` differ from the dataset's."""
  if decl["kind"] == "lwf":
    return max(tuple(decl["classes"]) + tuple(ctx.decls[decl["old"]]["classes"])) + 1
  return max(decl["classes"]) + 1 if decl.get("classes") else None


def optimizer_of(ctx: Context, decl: Mapping[str, Any], data: Any):
  key = "teacher.optimizer" if decl.get("model") == "teacher" else "optimizer"
  opt = ctx.config.teacher.optimizer if key == "teacher.optimizer" else ctx.config.optimizer
  tx, schedule = builders.make_optimizer(opt, total_steps=steps_of(ctx, decl),
                                         steps_per_epoch=data.shapes.num_train /
                                         ctx.config.batch_size)
  hint = (f"Lower config.{key}.learning_rate (now {opt.learning_rate}), add a warm-up "
          f"(config.{key}.warmup_steps) or gradient clipping (config.{key}.grad_clip_norm), ")
  return tx, schedule, hint


def student_plan(ctx: Context, decl: Mapping[str, Any], *, make_objective, teacher=None,
                 eval_teacher=None, make_student=None, evaluate=None, data=None) -> RunPlan:
  """The plan of a run that trains one model with a ``DistillState`` (most kinds).

  ``make_objective()`` builds the objective when the state is built (once per run; traced
  shape-only by the pipeline's checks), and its ``needs`` choose the student's taps;
  ``teacher(objective)`` gives the teacher tapping what the objective reads. ``data``: the run's
  data, when it is not ``ctx.data_for(decl)`` (a stream carrying a teacher cache).
  """
  c, data = ctx.config, data if data is not None else ctx.data_for(decl)
  section, seed = decl.get("model", "student"), decl.get("seed", 0)
  tx, schedule, hint = optimizer_of(ctx, decl, data)

  def init_state():
    objective = make_objective()
    student = (make_student() if make_student else
               ctx.model(section, seed=seed, taps=objective.needs.student,
                         num_classes=model_classes(ctx, decl), data=data))
    if decl.get("init_from"):
      start = ctx.trained(decl["init_from"])
      student = dataclasses.replace(student, params=start.params, model_state=start.model_state)
    try:
      return step_lib.DistillState.create(
          student=student, teacher=teacher(objective) if teacher else None, objective=objective,
          tx=tx,
          rng=ctx.key(section, 1, seed), example_batch=data.example_batch(c.batch_size),
          input_key=data.shapes.input_key, label_key=data.shapes.label_key,
          accumulation_steps=c.accumulation_steps)
    except (ValueError, TypeError) as e:
      raise ConfigError(f"run '{decl['name']}': {e}") from None

  num_classes = model_classes(ctx, decl) or data.shapes.num_classes

  def default_evaluate(runner, state):
    if eval_teacher is None:
      return data.evaluate(runner, state, num_classes=num_classes)
    eval_runner = ctx.runner()
    host = runner.host_state(state).with_teacher(eval_teacher())
    return data.evaluate(eval_runner, eval_runner.put_state(host), num_classes=num_classes)

  return RunPlan(
      name=decl["name"], total_steps=steps_of(ctx, decl), init_state=init_state,
      make_runner=ctx.runner, data=data, evaluate=evaluate or default_evaluate,
      summary=lambda host: {"params": models.param_count(host.params["student"]),
                            "model": ctx.section(section).model},
      batch_size=c.batch_size, seed=c.seed, learning_rate=schedule, fix_hint=hint)


@kind("supervised", ("compare",))
def supervised(ctx: Context, decl: Mapping[str, Any]) -> RunPlan:
  label_key = ctx.data_for(decl).shapes.label_key
  compare = decl.get("compare")
  return student_plan(ctx, decl, make_objective=lambda: builders.supervised_objective(label_key),
                      eval_teacher=(lambda: ctx.trained(compare)) if compare else None)


@kind("distill", ("teachers", "objective", "combine"))
def distill(ctx: Context, decl: Mapping[str, Any]) -> RunPlan:
  names = tuple(decl.get("teachers", ()))
  if not names:
    raise ConfigError(f"run '{decl['name']}' (kind 'distill') needs teachers=(run names, ...)")
  data = ctx.data_for(decl)
  spec = decl.get("objective") or ctx.config.objective
  stages = () if decl.get("objective") else ctx.config.stages
  if ctx.config.teacher_cache.enabled:
    return _distill_on_cache(ctx, decl, data, spec, stages)

  def make_objective():
    untapped = ctx.trained(names[0]) if len(names) == 1 else None
    return builders.make_objective(
        spec, stages=stages,
        supplied={"num_data": data.shapes.num_train, "num_classes": data.shapes.num_classes,
                  "teacher_model": untapped})

  def teacher(objective):
    found = [ctx.trained(n, taps=objective.needs.teacher) for n in names]
    if len(found) == 1:
      return found[0]
    return strategies.ensemble_teacher(found, combine=decl.get("combine", "mean_logits"))

  return student_plan(ctx, decl, make_objective=make_objective, teacher=teacher)


def _distill_on_cache(ctx: Context, decl: Mapping[str, Any], data: Any, spec: Any,
                      stages: Any) -> RunPlan:
  """A ``distill`` run whose student trains on its teacher's cache (:mod:`cache_runs`)."""
  spec = cache_runs.objective_on_cache(spec, ctx.config.teacher_cache, run=decl["name"])
  cached = cache_runs.cached_data(ctx, decl, data, spec,
                                  num_classes=model_classes(ctx, decl) or data.shapes.num_classes)
  run = decl["teachers"][0]

  def make_objective():
    return builders.make_objective(
        spec, stages=stages,
        supplied={"num_data": data.shapes.num_train, "num_classes": data.shapes.num_classes})

  plan = student_plan(ctx, decl, make_objective=make_objective, data=cached,
                      eval_teacher=lambda: ctx.trained(run))
  plan.prepare = cached.build
  return plan


@kind("load")
def load(ctx: Context, decl: Mapping[str, Any]) -> RunPlan:
  data = ctx.data
  plan = student_plan(ctx, {**decl, "model": "teacher"},
                      make_objective=lambda: builders.supervised_objective(data.shapes.label_key),
                      make_student=lambda: ctx.trained(decl["name"]))
  plan.total_steps = 0
  plan.summary = lambda host: {"params": models.param_count(host.params["student"]),
                               "model": ctx.config.teacher.model,
                               "checkpoint": str(ctx.config.teacher.checkpoint)}
  return plan
