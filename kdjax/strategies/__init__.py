"""Distillation strategies beyond one teacher and one student: several models at once.

* Several teachers: :func:`ensemble_teacher` (one Model running every teacher in the step).
* One teacher, several students: :class:`SeveralStudentsState` and
  :func:`several_students_step` (every student distils from one shared teacher forward).
* Students teaching each other: :class:`MutualState` and :func:`mutual_step` (deep mutual
  learning).
* Sequential distillation: :func:`as_teacher`, :func:`born_again_generations`,
  :func:`teacher_assistant_chain`.
* Continual learning: :func:`lwf_objective`, :func:`lwf_teacher`, :func:`expand_head`
  (Learning without Forgetting).

Objective terms, including those with their own params and state (CRD, VID, ReviewKD), are in
:mod:`kdjax.objectives`.
"""
from kdjax.strategies._ensemble import combine_logits
from kdjax.strategies._ensemble import ensemble_teacher
from kdjax.strategies._generations import as_teacher
from kdjax.strategies._generations import born_again_generations
from kdjax.strategies._generations import teacher_assistant_chain
from kdjax.strategies._lwf import expand_head
from kdjax.strategies._lwf import lwf_objective
from kdjax.strategies._lwf import lwf_teacher
from kdjax.strategies._mutual import MutualState
from kdjax.strategies._mutual import mutual_losses
from kdjax.strategies._mutual import mutual_step
from kdjax.strategies._several import SeveralStudentsState
from kdjax.strategies._several import several_students_eval_step
from kdjax.strategies._several import several_students_step

__all__ = (
    "MutualState",
    "SeveralStudentsState",
    "as_teacher",
    "born_again_generations",
    "combine_logits",
    "ensemble_teacher",
    "expand_head",
    "lwf_objective",
    "lwf_teacher",
    "mutual_losses",
    "mutual_step",
    "several_students_eval_step",
    "several_students_step",
    "teacher_assistant_chain",
)
