"""One teacher, several students: every student distils from one teacher forward per batch.

Each student ``k`` has its own :class:`~kdjax.DistillState` (model, objective, optimizer and
step key) and takes exactly the update :func:`kdjax.distill_step` gives it alone:

    theta_k <- tx_k(grad_theta_k L_k(student_k(x), teacher(x'), batch))

where ``teacher(x')`` is computed once per batch and shared: with ``N`` students a step runs one
teacher forward instead of ``N``, all students in one compiled program. Since ``L_k`` depends on
no other student's parameters, the students are independent: each one's trajectory equals its
own separate run with the same initialisation, step key and batches.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax
import jax

from kdjax import _checkpointable
from kdjax.models import Model
from kdjax.step import DistillState, distill_step, eval_step

PyTree = Any
Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class SeveralStudentsState:
  """The students of one teacher, as one pytree.

  Attributes:
    students: one :class:`~kdjax.DistillState` per student, without the teacher (its
      ``teacher_params`` and ``teacher_apply`` are ``None``): each has its own parameters,
      objective, optimizer state and step key.
    teacher_params, teacher_state: the frozen teacher's variables, held once; never part of a
      checkpoint.
    teacher_apply: static: the teacher's model-protocol ``apply``.
    names: static: one name per student (its key in checkpoints and metrics).
  """

  students: tuple
  teacher_params: PyTree = _checkpointable.frozen_field()
  teacher_state: PyTree = _checkpointable.frozen_field()
  teacher_apply: Callable = flax.struct.field(pytree_node=False, default=None)
  names: tuple[str, ...] = flax.struct.field(pytree_node=False, default=())

  @classmethod
  def create(cls, students: Sequence[DistillState],
             names: Sequence[str] | None = None) -> "SeveralStudentsState":
    """Gathers students' states built with one teacher into one state.

    Args:
      students: one or more :class:`~kdjax.DistillState`, each made by
        ``DistillState.create(teacher=teacher, ...)`` with the same ``teacher`` Model (so the
        objectives' adapters are initialised from its shapes, as in a run of its own) and
        ``accumulation_steps=1``.
      names: one distinct name per student (default ``student_0``, ``student_1``, ...).

    Returns:
      The state; its teacher is the students' teacher, held once.
    """
    students = tuple(students)
    names = tuple(names) if names is not None else tuple(f"student_{k}"
                                                          for k in range(len(students)))
    if not students:
      raise ValueError("SeveralStudentsState needs at least one student's DistillState")
    if len(names) != len(students) or len(set(names)) != len(names):
      raise ValueError(f"names={list(names)} must give {len(students)} distinct names, one per "
                       "student")
    for name, s in zip(names, students):
      if not isinstance(s, DistillState):
        raise TypeError(f"student {name!r} is a {type(s).__name__}; give each student's "
                        "kdjax.DistillState")
      if s.teacher_apply is None:
        raise ValueError(f"student {name!r} has no teacher; build every student's state with "
                         "DistillState.create(teacher=...) of the one teacher")
      if s.teacher_apply is not students[0].teacher_apply:
        raise ValueError(f"student {name!r} was built with another teacher than "
                         f"{names[0]!r}; build every student's state with the same teacher Model")
      if s.teacher_key != students[0].teacher_key:
        raise ValueError(f"student {name!r}'s teacher reads batch[{s.teacher_key!r}] but "
                         f"{names[0]!r}'s reads batch[{students[0].teacher_key!r}]; the one "
                         "teacher reads one input (teacher_input_key)")
      if s.accumulation_steps != 1:
        raise ValueError(f"student {name!r} has accumulation_steps={s.accumulation_steps}; the "
                         "shared teacher forward covers the whole batch, so use 1")
    first = students[0]
    return cls(students=tuple(s.with_teacher(None) for s in students),
               teacher_params=first.teacher_params, teacher_state=first.teacher_state,
               teacher_apply=first.teacher_apply, names=names)

  @property
  def step(self) -> jax.Array:
    """Updates applied so far (every student takes one per step)."""
    return self.students[0].step

  @property
  def params(self) -> tuple:
    """Every student's trainable parameters (student and objective), one entry per student."""
    return tuple(s.params for s in self.students)

  def student_state(self, k: int) -> DistillState:
    """Student ``k``'s state with the teacher: what a run of its own would hold."""
    s = self.students[k]
    return s.replace(teacher_params=self.teacher_params, teacher_state=self.teacher_state,
                     teacher_apply=self.teacher_apply)

  def student(self, k: int) -> Model:
    """Student ``k`` as a :class:`~kdjax.models.Model` (copies of its arrays)."""
    return self.students[k].student(name=self.names[k])

  def checkpoint_tree(self) -> dict[str, PyTree]:
    """What a checkpoint holds: each student's own checkpoint tree under its name."""
    return {name: s.checkpoint_tree() for name, s in zip(self.names, self.students)}

  def from_checkpoint_tree(self, tree: PyTree) -> "SeveralStudentsState":
    """This state with every student's trained fields from ``tree``."""
    return self.replace(students=tuple(s.from_checkpoint_tree(tree[name])
                                       for name, s in zip(self.names, self.students)))


class _SharedTeacher:
  """A teacher ``apply`` that runs the teacher the first time a step asks and gives every later
  caller in the same trace that one output: the students' steps share one forward."""

  def __init__(self, apply: Callable, params: PyTree, model_state: PyTree):
    self._apply, self._params, self._model_state = apply, params, model_state
    self._out = None

  def __call__(self, params, model_state, inputs, *, train, rng):
    del params, model_state  # The state's own (traced) teacher variables are used.
    if self._out is None:
      self._out = self._apply(self._params, self._model_state, inputs, train=train, rng=rng)
    return self._out


def several_students_step(state: SeveralStudentsState, batch: Batch, *,
                          axis_name: str | None = None
                          ) -> tuple[SeveralStudentsState, dict[str, jax.Array]]:
  """One distillation update of every student, from one teacher forward.

  Student ``k`` is updated by :func:`kdjax.distill_step` on its own state, its teacher outputs
  being the shared forward (computed on the first student's teacher inputs, which every
  student's step computes the same way from ``batch``: the teacher's entry, masked by
  ``batch['mask']``).

  Args:
    state: the :class:`SeveralStudentsState`.
    batch: a dict of arrays with a leading batch axis, as :func:`kdjax.distill_step` takes.
    axis_name: set under ``pmap`` / ``shard_map`` (see :func:`kdjax.distill_step`).

  Returns:
    ``(new_state, metrics)``; metrics hold ``loss`` (the sum of the students' losses) and each
    student's metrics as ``<name>/<metric>`` (``<name>/loss``, ``<name>/accuracy``,
    ``<name>/agreement`` and its terms' losses).
  """
  teacher = _SharedTeacher(state.teacher_apply, state.teacher_params, state.teacher_state)
  students, metrics = [], {}
  for name, s in zip(state.names, state.students):
    view = s.replace(teacher_params=None, teacher_state=None, teacher_apply=teacher)
    new, m = distill_step(view, batch, axis_name=axis_name)
    students.append(new.with_teacher(None))
    metrics.update({f"{name}/{key}": value for key, value in m.items()})
  metrics["loss"] = sum(metrics[f"{name}/loss"] for name in state.names)
  return state.replace(students=tuple(students)), metrics


def several_students_eval_step(state: SeveralStudentsState, batch: Batch, *,
                               axis_name: str | None = None) -> dict[str, dict[str, jax.Array]]:
  """``{name: kdjax.eval_step(student_state(k), batch)}``: every student's per-example outputs."""
  return {name: eval_step(state.student_state(k), batch, axis_name=axis_name)
          for k, name in enumerate(state.names)}
