"""Sequential distillation: born-again generations and teacher-assistant chains.

Both run the ordinary :func:`kdjax.distill_step` (through a ``train_fn`` you write) several
times, each run's trained student becoming the next run's frozen teacher. The loop is plain
Python over pure training runs; every model and state is passed explicitly.

``train_fn(student: Model, teacher: Model | None) -> DistillState`` builds a
:class:`~kdjax.step.DistillState` for the pair, trains it and returns the trained state, e.g.::

  def train_fn(student, teacher):
    objective = objectives.combine({'ce': objectives.cross_entropy()} if teacher is None else
                                   {'ce': objectives.cross_entropy(), 'kd': objectives.kd()})
    state = kdjax.DistillState.create(student=student, teacher=teacher, objective=objective,
                                      tx=optax.adam(1e-3), rng=key, example_batch=batch)
    step = jax.jit(kdjax.distill_step)
    for batch in data:
      state, _ = step(state, batch)
    return state
"""
from __future__ import annotations

from typing import Callable, Sequence

from kdjax.models import Model
from kdjax.step import DistillState

TrainFn = Callable[[Model, "Model | None"], DistillState]


def as_teacher(state: DistillState, *, taps: Sequence[str] = (), name: str = "") -> Model:
  """Freezes a trained state's student into a :class:`~kdjax.models.Model` to use as a teacher.

  Its ``apply`` is the student's, its params a copy of the trained ``state.params['student']``
  and its model state a copy of the student's BatchNorm statistics (copies, so that stepping
  the state further with a donating jitted step never deletes the teacher's arrays). The
  objective's adapters and the optimizer state are left behind.

  Args:
    state: a (trained) :class:`~kdjax.step.DistillState`.
    taps: the tap paths the student's ``apply`` produces (informational, as on any Model).
    name: the model's name.
  """
  if not isinstance(state, DistillState):
    raise TypeError(f"as_teacher takes a kdjax.DistillState, got {type(state).__name__}; a train_fn "
                    "must return the trained DistillState")
  return state.student(taps=tuple(taps), name=name)


def born_again_generations(make_student: Callable[[int], Model], train_fn: TrainFn,
                           generations: int, *, teacher: Model | None = None,
                           taps: Sequence[str] = ()) -> list[DistillState]:
  """Born-again networks: generation ``g + 1`` distils from the trained generation ``g``.

  Generation 0 is trained from ``teacher`` (``None``: from the labels alone, as in the paper,
  where it is the first teacher); generation ``g >= 1`` is a fresh ``make_student(g)`` trained
  with the frozen student of generation ``g - 1`` as its teacher.

  Args:
    make_student: ``g -> Model``, a freshly initialised model of generation ``g`` (usually the
      same architecture with a different seed).
    train_fn: ``(student, teacher) -> trained DistillState`` (see the module docstring).
    generations: how many models to train (>= 1).
    teacher: the teacher of generation 0, or ``None``.
    taps: the taps each trained student is frozen with (:func:`as_teacher`).

  Returns:
    The trained state of every generation, in order. The born-again ensemble of the paper is
    ``ensemble_teacher([as_teacher(s) for s in states])``.

  References:
    T. Furlanello, Z. Lipton, M. Tschannen, L. Itti, A. Anandkumar, "Born-Again Neural
    Networks", ICML 2018.
  """
  if generations < 1:
    raise ValueError(f"generations must be >= 1, got {generations}")
  states = []
  for g in range(generations):
    state = train_fn(make_student(g), teacher)
    states.append(state)
    teacher = as_teacher(state, taps=taps, name=f"generation_{g}")
  return states


def teacher_assistant_chain(models: Sequence[Model], train_fn: TrainFn, *,
                            taps: Sequence[str] = ()) -> list[DistillState]:
  """Teacher-assistant distillation: teacher -> assistant(s) -> student, one link at a time.

  ``models[0]`` is the trained teacher; ``models[1:]`` are untrained models of decreasing size.
  ``models[i]`` is trained with the trained ``models[i - 1]`` as its frozen teacher.

  Args:
    models: ``[teacher, assistant_1, ..., student]``, at least two.
    train_fn: ``(student, teacher) -> trained DistillState`` (see the module docstring).
    taps: the taps each trained model is frozen with (:func:`as_teacher`).

  Returns:
    The trained state of ``models[1]``, ..., ``models[-1]``, in order; the last one is the
    student's.

  References:
    S. I. Mirzadeh, M. Farajtabar, A. Li, N. Levine, A. Matsukawa, H. Ghasemzadeh, "Improved
    Knowledge Distillation via Teacher Assistant", AAAI 2020.
  """
  models = tuple(models)
  if len(models) < 2:
    raise ValueError(f"a teacher-assistant chain needs a teacher and at least one model to train, "
                     f"got {len(models)} model(s)")
  teacher = models[0]
  states = []
  for i, student in enumerate(models[1:], start=1):
    state = train_fn(student, teacher)
    states.append(state)
    teacher = as_teacher(state, taps=taps, name=student.name or f"link_{i}")
  return states
