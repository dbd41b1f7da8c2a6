"""The one table of term kinds: ``config.objective.<name>.kind`` -> a term constructor.

Every constructor here takes keyword arguments only and returns a :class:`Term` whose ``needs``
say which taps and batch keys it reads and whether it reads the live teacher. ``dataset_args``
name constructor arguments the run layer fills in when a config leaves them out: ``num_data``
(the training split's size, for CRD's memory banks), ``num_classes`` (the dataset's class count)
and ``teacher_model`` (the trained teacher as a :class:`kdjax.models.Model`, for terms built from
its parameters, such as a margin from its BatchNorm statistics or its classifier head).

The table is written out below, plus one generated row per entry of :data:`kdjax.losses.TERMS`
(a loss lifted as it is by :func:`from_loss`); nothing registers kinds by importing a module.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from kdjax import losses
from kdjax.objectives import _cached, _catalogue, _crd, _dense, _review, _sampled, _terms, _vid
from kdjax.objectives._base import Needs, Term

DATASET_ARGS = ("num_data", "num_classes", "teacher_model")


@dataclasses.dataclass(frozen=True)
class TermKind:
  """A term kind: its constructor and the arguments the dataset supplies."""

  name: str
  ctor: Callable[..., Term]
  dataset_args: tuple[str, ...] = ()


def _check_dataset_args(dataset_args: tuple[str, ...]) -> tuple[str, ...]:
  unknown = sorted(set(dataset_args) - set(DATASET_ARGS))
  if unknown:
    raise ValueError(f"dataset_args {unknown} are not values a run can supply; use a subset of "
                     f"{DATASET_ARGS}")
  return tuple(dataset_args)


_TABLE: tuple[tuple[str, Callable[..., Term], tuple[str, ...]], ...] = (
    # Response-based.
    ("cross_entropy", _terms.cross_entropy, ()),
    ("kd", _terms.kd, ()),
    ("dkd", _terms.dkd, ()),
    ("dist", _terms.dist, ()),
    ("soft_cross_entropy", _terms.soft_cross_entropy, ()),
    ("reverse_kd", _terms.reverse_kd, ()),
    ("jensen_shannon", _terms.jensen_shannon, ()),
    ("logit_mse", _terms.logit_mse, ()),
    ("mlkd", _catalogue.mlkd, ()),
    ("cached_kd", _cached.cached_kd, ()),
    ("sampled_kd", _sampled.sampled_kd, ()),
    # Feature-based.
    ("fitnets", _terms.fitnets, ()),
    ("attention_transfer", _terms.attention_transfer, ()),
    ("nst", _terms.nst, ()),
    ("feature_mse", _terms.feature_mse, ()),
    ("cosine", _terms.cosine, ()),
    ("factor_transfer", _catalogue.factor_transfer, ()),
    ("activation_boundary", _catalogue.activation_boundary, ()),
    ("ofd", _catalogue.ofd, ("teacher_model",)),
    ("srd", _catalogue.srd, ("teacher_model",)),
    ("vid", _vid.vid, ()),
    ("review_kd", _review.review_kd, ()),
    # Relation and structure.
    ("similarity_preserving", _terms.similarity_preserving, ()),
    ("rkd", _terms.rkd, ()),
    ("rkd_distance", _terms.rkd_distance, ()),
    ("rkd_angle", _terms.rkd_angle, ()),
    ("pkt", _terms.pkt, ()),
    ("cka", _terms.cka, ()),
    ("correlation_congruence", _catalogue.correlation_congruence, ()),
    ("fsp", _catalogue.fsp, ()),
    ("kdsvd", _catalogue.kdsvd, ()),
    # Contrastive, with memory banks.
    ("crd", _crd.crd, ("num_data",)),
    # Dense prediction: segmentation and point detectors.
    ("pixel_kd", _dense.pixel_kd, ()),
    ("channel_wise_distillation", _dense.channel_wise_distillation, ()),
    ("pairwise_similarity_distillation", _dense.pairwise_similarity_distillation, ()),
    ("point_detection", _dense.point_detection, ()),
    ("heatmap_kd", _dense.heatmap_kd, ()),
    ("localization_distillation", _dense.localization_distillation, ()),
    ("feature_imitation", _dense.feature_imitation, ()),
)

_KINDS: dict[str, TermKind] = {
    **{name: TermKind(name, _terms.term_constructor(getattr(losses, name), **options))
       for name, options in losses.TERMS.items()},
    **{name: TermKind(name, ctor, _check_dataset_args(args)) for name, ctor, args in _TABLE},
}


def register_term_kind(name: str, ctor: Callable[..., Term], *,
                       dataset_args: tuple[str, ...] = ()) -> None:
  """Makes your own ``ctor`` available to configs as ``{'kind': name, ...}``.

  kdjax's own kinds are the table above; this is for terms defined outside kdjax, called by
  your code before the config is built.

  Args:
    name: the config kind; registering a name twice replaces it.
    ctor: keyword-only constructor returning a :class:`Term`.
    dataset_args: arguments of ``ctor`` the run fills in from the dataset when the config
      leaves them out; each must be one of ``DATASET_ARGS``.
  """
  _KINDS[name] = TermKind(name, ctor, _check_dataset_args(dataset_args))


def term_kinds() -> dict[str, TermKind]:
  """Every term kind, by name (a copy)."""
  return dict(_KINDS)


# Keys of a config term that are not constructor arguments.
_SPEC_KEYS = ("kind", "weight", "warmup_steps")


def _config_term_needs(spec) -> Needs | None:
  """The needs of a config term ``{'kind': ..., ...}``; ``None`` if it cannot be built alone."""
  kind = _KINDS.get(spec.get("kind"))
  if kind is None:
    return None
  try:
    return kind.ctor(**{k: v for k, v in spec.items() if k not in _SPEC_KEYS}).needs
  except Exception:  # pylint: disable=broad-except
    return None  # It needs dataset arguments (num_data, teacher_model) or is misconfigured.


def needs_of(objective: Any) -> dict[str, Needs | None]:
  """Each term's :class:`Needs`, by name (``None`` for a config term that cannot be built alone).

  Args:
    objective: a :class:`Term` (named ``'objective'``); ``{name: Term | (Term, weight)}``; or a
      config objective ``{name: {'kind': ..., ...}}`` (a dict or ConfigDict), whose terms are
      built from their arguments to ask them. A kind that needs the run's dataset arguments
      (``num_data``, ``teacher_model``) to be built, or an unknown kind, gives ``None``.
  """
  if isinstance(objective, Term):
    return {"objective": objective.needs}
  if hasattr(objective, "to_dict"):
    objective = objective.to_dict()
  out = {}
  for name, spec in objective.items():
    term = spec[0] if isinstance(spec, tuple) and not isinstance(spec, Term) else spec
    out[name] = term.needs if isinstance(term, Term) else (
        _config_term_needs(term) if isinstance(term, Mapping) else None)
  return out


def needs_live_teacher(objective: Any) -> tuple[str, ...]:
  """The terms of an objective that read the live teacher's outputs (empty: none do).

  A term reads them unless its ``needs.teacher_outputs`` is ``False`` (terms of the student
  alone, such as ``cross_entropy``, or of teacher outputs carried by the batch, such as
  ``cached_kd``); an objective whose result is empty trains with no teacher in the state.

  Args:
    objective: as :func:`needs_of`; a config term that cannot be built without the run's
      dataset arguments, or of an unknown kind, counts as reading the teacher.

  Returns:
    The names of the terms that read the live teacher, in order (``('objective',)`` for a
    single term that does).
  """
  return tuple(name for name, needs in needs_of(objective).items()
               if needs is None or needs.teacher_outputs)
