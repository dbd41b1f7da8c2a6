"""Whether an objective can train on a teacher cache: it must not read the live teacher."""
from __future__ import annotations

from typing import Any, Mapping

from kdjax import objectives
from kdjax.teacher_cache._store import TeacherCacheError


def check_objective(objective: Mapping[str, Any]) -> None:
  """Raises unless every term of an objective can run on a teacher cache (no online teacher).

  Each term is asked (:func:`kdjax.objectives.needs_live_teacher`): terms whose
  ``needs.teacher_outputs`` is ``False`` (``cross_entropy``, ``cached_kd``) pass.

  Args:
    objective: ``config.objective`` (``{name: {'kind': ..., ...}}``, a dict or ConfigDict), or
      ``{name: Term | (Term, weight)}``.

  Raises:
    TeacherCacheError: naming each term that needs the online teacher.
  """
  if hasattr(objective, "to_dict"):
    objective = objective.to_dict()
  needs = objectives.needs_of(objective)
  bad = []
  for name in objectives.needs_live_teacher(objective):
    spec = objective[name]
    kind = f"kind {spec['kind']!r}, " if isinstance(spec, Mapping) and "kind" in spec else ""
    feats = needs[name].teacher if needs[name] is not None else ()
    why = f"reads teacher features {list(feats)}" if feats else "reads the teacher's outputs"
    bad.append(f"{name!r} ({kind}{why})")
  if bad:
    raise TeacherCacheError(
        f"objective term(s) {', '.join(bad)} need the online teacher, which a teacher cache "
        "replaces: use kind 'cached_kd' for the KD term and drop the terms that read the "
        "teacher, or turn the teacher cache off (the teacher then runs in every step)")
