"""Distillation strategies beyond one teacher and one student.

* Several teachers: :func:`ensemble_teacher` (one Model running every teacher in the step).
* Students teaching each other: :class:`MutualState` and :func:`mutual_step` (deep mutual
  learning).
* Sequential distillation: :func:`as_teacher`, :func:`born_again_generations`,
  :func:`teacher_assistant_chain`.
* Continual learning: :func:`lwf_objective`, :func:`lwf_teacher`, :func:`expand_head`
  (Learning without Forgetting).
* Objective terms with their own params and state: :func:`crd` (contrastive representation
  distillation with memory banks), :func:`vid` (variational information distillation),
  :func:`review_kd` (knowledge review); each is registered as a config kind of the same name.
"""
from kdjax.strategies._crd import crd
from kdjax.strategies._crd import momentum_update
from kdjax.strategies._crd import nce_loss
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
from kdjax.strategies._review import AttentionFusion
from kdjax.strategies._review import ReviewFusion
from kdjax.strategies._review import adaptive_avg_pool
from kdjax.strategies._review import hierarchical_context_loss
from kdjax.strategies._review import review_kd
from kdjax.strategies._vid import vid
from kdjax.strategies._vid import vid_nll

from kdjax import objectives as _objectives

# Config kinds of the terms defined here (``config.objective.<name>.kind``).
_objectives.register("crd", crd, dataset_args=("num_data",))
_objectives.register("vid", vid)
_objectives.register("review_kd", review_kd)

__all__ = [
    "AttentionFusion",
    "MutualState",
    "ReviewFusion",
    "adaptive_avg_pool",
    "as_teacher",
    "born_again_generations",
    "combine_logits",
    "crd",
    "ensemble_teacher",
    "expand_head",
    "hierarchical_context_loss",
    "lwf_objective",
    "lwf_teacher",
    "momentum_update",
    "mutual_losses",
    "mutual_step",
    "nce_loss",
    "review_kd",
    "teacher_assistant_chain",
    "vid",
    "vid_nll",
]
