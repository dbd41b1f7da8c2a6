"""Run kinds: what a declaration in ``config.runs`` can ask for, one module per kind.

``config.runs`` is a tuple of declarations, run in order; each is a dict with a ``name`` (its
directory), a ``kind`` (a key of :data:`KINDS`) and the kind's fields (its ``fields``
dataclass). Runs read earlier runs by name (a teacher, an old task's model, the runs to
export). An empty ``config.runs`` is the standard pipeline (:func:`standard_runs`).

Every kind takes the fields of :class:`~kdjax.train.kinds.base.Run` (``model``, ``steps``,
``seed``, ``classes``, ``init_from``). Adding a kind is one module (its fields dataclass and
``plan(ctx, decl) -> RunPlan``) and one row of :data:`KINDS`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from kdjax import workdir as contract
from kdjax.train.errors import ConfigError
from kdjax.train.kinds import compressed
from kdjax.train.kinds import cross_tokenizer
from kdjax.train.kinds import distill
from kdjax.train.kinds import export
from kdjax.train.kinds import load
from kdjax.train.kinds import lwf
from kdjax.train.kinds import mutual
from kdjax.train.kinds import on_policy
from kdjax.train.kinds import several_students
from kdjax.train.kinds import supervised
from kdjax.train.kinds.base import Context
from kdjax.train.kinds.base import Run
from kdjax.train.kinds.base import RunKind

__all__ = ["KINDS", "Context", "Run", "RunKind", "declarations", "declare", "standard_runs"]

KINDS: dict[str, RunKind] = {
    "supervised": supervised.KIND,
    "distill": distill.KIND,
    "load": load.KIND,
    "mutual": mutual.KIND,
    "lwf": lwf.KIND,
    "compressed": compressed.KIND,
    "export": export.KIND,
    "on_policy": on_policy.KIND,
    "cross_tokenizer": cross_tokenizer.KIND,
    "several_students": several_students.KIND,
}


def standard_runs(config: Any) -> tuple[dict[str, Any], ...]:
  """The standard pipeline: teacher (trained, or loaded from ``config.teacher.checkpoint``),
  the baseline ``student`` (with ``compare_baseline``), the distilled ``student_kd``, the
  compressed students of ``config.compress`` and the ``export`` of ``config.export``."""
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
  smaller = compressed.declarations(config, after="student_kd")
  runs += smaller
  if tuple(config.export.formats):
    runs.append({"name": contract.EXPORT_DIR, "kind": "export",
                 "runs": ("student_kd", *(d["name"] for d in smaller if compressed.trains(d))),
                 "formats": tuple(config.export.formats),
                 "batch_size": int(config.export.batch_size or 0)})
  return tuple(runs)


def _plain(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    return value.to_dict()
  if isinstance(value, list):
    return tuple(value)
  return value


def declare(decl: Mapping[str, Any], where: str = "config.runs[?]") -> Run:
  """A declaration (a dict) as its kind's fields dataclass, checked."""
  kind = decl.get("kind")
  if kind not in KINDS:
    raise ConfigError(f"{where}.kind={kind!r} is not a run kind; use one of {sorted(KINDS)}")
  fields = KINDS[kind].fields
  names = [f.name for f in dataclasses.fields(fields)]
  unknown = sorted(set(decl) - set(names))
  if unknown:
    raise ConfigError(f"{where} (kind {kind!r}) has no field(s) {unknown}; its fields are "
                      f"{names}")
  name = decl.get("name")
  if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
    raise ConfigError(f"{where}.name={name!r} must be a name of letters, digits, '_' or '-' "
                      "(it is the run's directory)")
  return fields(**{k: _plain(v) for k, v in decl.items()})


def declarations(config: Any) -> tuple[Run, ...]:
  """``config.runs`` (or the standard pipeline), checked: kinds, fields, names, references."""
  decls: list[Run] = []
  for i, d in enumerate(config.runs or standard_runs(config)):
    decl = declare(dict(d), f"config.runs[{i}]")
    seen = [e.name for e in decls]
    if decl.name in seen:
      raise ConfigError(f"config.runs[{i}].name={decl.name!r} is used twice; every run needs "
                        "its own name")
    for ref in decl.read_runs():
      if ref not in seen:
        raise ConfigError(f"config.runs[{i}] reads run {ref!r}, which no earlier run declares; "
                          f"declare it before {decl.name!r} (earlier runs: {seen})")
    decls.append(decl)
  return tuple(decls)
