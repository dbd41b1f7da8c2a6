"""``several_students``: several students distil from ``teachers`` at once, one teacher forward
per batch, all in one compiled step (:func:`kdjax.strategies.several_students_step`).

``students`` is a tuple with one entry per student: a model section (``'student'`` or a key of
``config.models``), or a dict ``{"name", "model", "objective", "optimizer", "seed"}`` where only
``model`` is required: ``name`` (default: the section) names the student in results and
checkpoints; ``objective`` (default ``config.objective`` with ``config.stages``), ``optimizer``
(keys of ``config.optimizer`` to change for this student) and ``seed`` (default: the run's)
are what a ``distill`` run of that model section would take (its ``objective`` and ``seed``;
its ``config.optimizer`` with those changes). Each student starts from the initialisation and
step key of that ``distill`` run and sees the same batches, so each one ends where its own run
would, for less than running them one by one costs (``benchmarks/several_students.py``).

The results entry holds one member per student under ``members`` (``run``: the student's
name, then its evaluation, parameters and model); tables and reports show each as
``<run>[<name>]``. The checkpoint holds each student's own state under its name; later runs
cannot read the run as one model (a teacher, ``init_from``, an export). The teacher
runs online (``config.teacher_cache`` does not apply), and ``config.accumulation_steps`` must
be 1.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from kdjax import models
from kdjax import step as step_lib
from kdjax import strategies
from kdjax.train import builders
from kdjax.train import schema
from kdjax.train.errors import ConfigError
from kdjax.train.execute import RunPlan
from kdjax.train.kinds import base
from kdjax.train.kinds import supervised

# The keys of a student given as a dict.
STUDENT_KEYS = ("name", "model", "objective", "optimizer", "seed")


@dataclasses.dataclass(frozen=True)
class SeveralStudents(base.Run):
  teachers: tuple[str, ...] = ()
  students: tuple = ()
  combine: str = "mean_logits"

  reads: ClassVar[tuple[str, ...]] = ("init_from", "teachers")

  def section(self) -> str:
    first = self.students[0] if self.students else self.model
    return first if isinstance(first, str) else str(dict(first).get("model", self.model))

  def load_variables(self, ctx: base.Context, model: models.Model) -> tuple[Any, Any]:
    del ctx, model
    raise ConfigError(f"run '{self.name}' trained several students, so it is not one model a "
                      "later run can read (as a teacher, init_from or export); distil the "
                      "student you need with a 'distill' run of its model section instead")


@dataclasses.dataclass(frozen=True)
class Student:
  """One student of the run, checked."""

  name: str
  section: str
  objective: Any
  optimizer: Any  # The optimizer section (config.optimizer with this student's changes).
  changes: Any  # This student's changes to config.optimizer (None: none).
  seed: int
  where: str  # How messages name it: config.runs[i].students[j].


def _plain(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_plain(v) for v in value)
  return value


def _where(ctx: base.Context, decl: SeveralStudents) -> str:
  names = [dict(d).get("name") for d in (ctx.config.runs or ())]
  return f"config.runs[{names.index(decl.name)}]" if decl.name in names else \
      f"run '{decl.name}'"


def students_of(ctx: base.Context, decl: SeveralStudents) -> list[Student]:
  """The run's students, each checked; a mistake raises a one-line :class:`ConfigError`
  naming ``config.runs[i].students[j].<key>``."""
  where = _where(ctx, decl)
  if not decl.teachers:
    raise ConfigError(f"{where}.teachers is empty; the students distil from teachers=(run "
                      "names, ...) of earlier runs")
  if decl.init_from:
    raise ConfigError(f"{where}.init_from={decl.init_from!r}: a several_students run starts "
                      "each student from its section's initialisation; remove init_from")
  if ctx.config.accumulation_steps != 1:
    raise ConfigError(f"{where} (kind 'several_students') shares one teacher forward over the "
                      f"whole batch; set config.accumulation_steps to 1 (it is "
                      f"{ctx.config.accumulation_steps})")
  specs = decl.students if isinstance(decl.students, tuple) else (decl.students,)
  if not specs:
    raise ConfigError(f"{where}.students is empty; give one or more students, e.g. "
                      "students=('student', {'name': 'wide', 'model': '<key of config.models>'})")
  out: list[Student] = []
  for j, spec in enumerate(specs):
    here = f"{where}.students[{j}]"
    spec = _plain(spec)
    if isinstance(spec, str):
      spec = {"model": spec}
    if not isinstance(spec, dict):
      raise ConfigError(f"{here}={spec!r} must be a model section name or a dict with the keys "
                        f"{list(STUDENT_KEYS)} (only 'model' is required)")
    unknown = sorted(set(spec) - set(STUDENT_KEYS))
    if unknown:
      raise ConfigError(f"{here} has no key(s) {unknown}; its keys are {list(STUDENT_KEYS)}")
    section = spec.get("model")
    if not isinstance(section, str) or not section:
      raise ConfigError(f"{here}.model is missing: name the student's model section ('student' "
                        "or a key of config.models)")
    if section not in ("teacher", "student") and section not in ctx.config.models:
      raise ConfigError(f"{here}.model={section!r} is neither 'teacher', 'student' nor a key of "
                        f"config.models (which has {sorted(ctx.config.models)}); add "
                        f"config.models[{section!r}] or name an existing section")
    name = spec.get("name", section)
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
      raise ConfigError(f"{here}.name={name!r} must be a name of letters, digits, '_' or '-' "
                        "(it names the student in results and checkpoints)")
    if name in [s.name for s in out]:
      raise ConfigError(f"{here}.name={name!r} is used twice in {where}.students; give each "
                        "student its own name")
    seed = spec.get("seed", decl.seed)
    if not isinstance(seed, int) or isinstance(seed, bool):
      raise ConfigError(f"{here}.seed must be an integer, got {seed!r}")
    objective = spec.get("objective")
    if objective is not None:
      schema.check_objective(objective, f"{here}.objective")
    out.append(Student(name=name, section=section, objective=objective,
                       optimizer=_optimizer(ctx, spec.get("optimizer"), here),
                       changes=spec.get("optimizer") or None, seed=seed, where=here))
  return out


def _optimizer(ctx: base.Context, changes: Any, here: str) -> Any:
  """``config.optimizer`` with ``changes`` (a dict of its keys), checked."""
  if changes is None:
    return ctx.config.optimizer
  if not isinstance(changes, dict):
    raise ConfigError(f"{here}.optimizer must be a dict of config.optimizer keys to change, "
                      f"e.g. {{'learning_rate': 0.01}}; got {changes!r}")
  known = [f.name for f in dataclasses.fields(schema.Optimizer)]
  unknown = sorted(set(changes) - set(known))
  if unknown:
    raise ConfigError(f"{here}.optimizer has no key(s) {unknown}; its keys are those of "
                      f"config.optimizer: {known}")
  merged = schema.Optimizer.parse({**builders.plain(ctx.config.optimizer), **changes})
  merged.check(f"{here.removeprefix('config.')}.optimizer", ctx.config)
  return merged


def plan(ctx: base.Context, decl: SeveralStudents) -> RunPlan:
  students = students_of(ctx, decl)
  c, data = ctx.config, ctx.data_for(decl.classes)
  num_classes = decl.num_classes(ctx.decls)
  steps = decl.total_steps(c)
  teachers = decl.teachers
  optimizers = [builders.make_optimizer(s.optimizer, total_steps=steps,
                                        steps_per_epoch=data.shapes.num_train / c.batch_size)
                for s in students]

  def make_objective(s: Student):
    spec = s.objective or c.objective
    stages = () if s.objective else c.stages
    untapped = ctx.trained(teachers[0]) if len(teachers) == 1 else None
    return builders.make_objective(
        spec, stages=stages,
        supplied={"num_data": data.shapes.num_train, "num_classes": data.shapes.num_classes,
                  "teacher_model": untapped})

  def init_state():
    objectives = [make_objective(s) for s in students]
    # One teacher for every student: tapping what any of their objectives reads.
    taps = tuple(dict.fromkeys(t for o in objectives for t in o.needs.teacher))
    found = [ctx.trained(n, taps=taps) for n in teachers]
    teacher = (found[0] if len(found) == 1 else
               strategies.ensemble_teacher(found, combine=decl.combine))
    states = []
    for s, objective, (tx, _) in zip(students, objectives, optimizers):
      model = ctx.model(s.section, seed=s.seed, taps=objective.needs.student,
                        num_classes=num_classes, data=data)
      try:
        states.append(step_lib.DistillState.create(
            student=model, teacher=teacher, objective=objective, tx=tx,
            rng=ctx.key(s.section, 1, s.seed), example_batch=data.example_batch(c.batch_size),
            input_key=base.input_key(ctx, s.section, data), label_key=data.shapes.label_key,
            teacher_input_key=base.teacher_input_key(ctx, teachers, data)))
      except (ValueError, TypeError) as e:
        raise ConfigError(f"{s.where} (student {s.name!r} of run '{decl.name}'): {e}") from None
    return strategies.SeveralStudentsState.create(states, names=[s.name for s in students])

  classes = num_classes or data.shapes.num_classes
  latest: dict[str, dict[str, Any]] = {}  # The last evaluation of each student, for the entry.
  views: list[Any] = []  # [runner, its _OneStudent per student]: one set per runner.

  def evaluate(runner, state):
    if not views or views[0] is not runner:
      views[:] = [runner, [_OneStudent(runner, k) for k in range(len(students))]]
    out = {}
    for k, s in enumerate(students):
      latest[s.name] = dict(data.evaluate(views[1][k], state, num_classes=classes))
      out.update({f"{s.name}/{key}": value for key, value in latest[s.name].items()})
    return out

  baselines = {s.name: _baseline(ctx, decl, s.section) for s in students}

  def summary(host):
    members = []
    for k, s in enumerate(students):
      member = {"run": s.name, **latest.get(s.name, {}),
                "params": models.param_count(host.students[k].params["student"]),
                "model": builders.model_name(ctx.section(s.section)), "model_section": s.section}
      if baselines[s.name]:
        member["baseline"] = baselines[s.name]
      members.append(member)
    return {"members": members, "params": sum(m["params"] for m in members),
            "model": "+".join(m["model"] for m in members),
            "model_section": "+".join(s.section for s in students), **base.class_names(ctx)}

  same_schedule = all(s.changes == students[0].changes for s in students)
  hint = ("Lower the students' learning rate (config.optimizer.learning_rate, or learning_rate "
          f"in {_where(ctx, decl)}.students[j].optimizer), add a warm-up (warmup_steps) or "
          "gradient clipping (grad_clip_norm), ")
  return RunPlan(
      name=decl.name, total_steps=steps, init_state=init_state,
      make_runner=lambda: ctx.runner(step_fn=strategies.several_students_step,
                                     eval_fn=strategies.several_students_eval_step),
      data=data, evaluate=evaluate, summary=summary, batch_size=c.batch_size, seed=c.seed,
      learning_rate=optimizers[0][1] if same_schedule else None, fix_hint=hint)


class _OneStudent:
  """The run's runner, evaluating student ``k`` of the placed state: ``eval`` runs an
  evaluation function of one student's :class:`~kdjax.DistillState` (``kdjax.eval_step`` or the
  task's own) on ``state.student_state(k)``, so every student is evaluated exactly as a run of
  its own would be, on the placed state (nothing is copied)."""

  def __init__(self, runner: Any, k: int):
    self.runner, self.k = runner, k
    self._wrapped: dict[Any, Any] = {}  # eval_fn -> its wrapper, kept so the runner's jit hits.

  def eval(self, state, local_batch, reduce_fn, *, eval_fn=None, gather=False):
    eval_fn = eval_fn or step_lib.eval_step
    if eval_fn not in self._wrapped:
      k = self.k
      self._wrapped[eval_fn] = lambda s, b, **kw: eval_fn(s.student_state(k), b, **kw)
    return self.runner.eval(state, local_batch, reduce_fn, eval_fn=self._wrapped[eval_fn],
                            gather=gather)


def _baseline(ctx: base.Context, decl: SeveralStudents, section: str) -> str:
  """The earlier ``supervised`` run that trained ``section`` alone and compared itself with one
  of the teachers (as :mod:`kdjax.train.kinds.distill` finds a distilled run's baseline)."""
  for other in ctx.decls.values():
    if other.name == decl.name:
      return ""
    if (isinstance(other, supervised.Supervised) and other.compare in decl.teachers and
        other.section() == section and other.classes == decl.classes):
      return other.name
  return ""


KIND = base.RunKind(SeveralStudents, plan)
