"""The one registry of term kinds: ``config.objective.<name>.kind`` -> a term constructor.

Every constructor registered here takes keyword arguments only and returns a :class:`Term` whose
``needs`` say which taps and batch keys it reads. ``dataset_args`` name constructor arguments the
run layer fills in when a config leaves them out: ``num_data`` (the training split's size, for
CRD's memory banks), ``num_classes`` (the dataset's class count) and ``teacher_model`` (the
trained teacher as a :class:`kdjax.models.Model`, for terms built from its parameters, such as a
margin from its BatchNorm statistics or its classifier head).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from kdjax.objectives._base import Term

DATASET_ARGS = ("num_data", "num_classes", "teacher_model")


@dataclasses.dataclass(frozen=True)
class TermKind:
  """A registered term kind: its constructor and the arguments the dataset supplies."""

  name: str
  ctor: Callable[..., Term]
  dataset_args: tuple[str, ...] = ()


_KINDS: dict[str, TermKind] = {}


def register(name: str, ctor: Callable[..., Term], *, dataset_args: tuple[str, ...] = ()) -> None:
  """Makes ``ctor`` available to configs as ``{'kind': name, ...}``.

  Args:
    name: the config kind (``'kd'``, ``'crd'``, ...); registering a name twice replaces it.
    ctor: keyword-only constructor returning a :class:`Term`.
    dataset_args: arguments of ``ctor`` the run fills in from the dataset when the config
      leaves them out; each must be one of ``DATASET_ARGS``.
  """
  unknown = sorted(set(dataset_args) - set(DATASET_ARGS))
  if unknown:
    raise ValueError(f"dataset_args {unknown} are not values a run can supply; use a subset of "
                     f"{DATASET_ARGS}")
  _KINDS[name] = TermKind(name, ctor, tuple(dataset_args))


def term_kinds() -> dict[str, TermKind]:
  """Every registered kind, by name (a copy)."""
  return dict(_KINDS)
