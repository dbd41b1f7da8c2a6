"""What a config section is: a frozen dataclass whose fields are its keys.

Each field carries its default and a one-line meaning (:func:`key`), or is a nested section
(:func:`section`). From these one declaration gives the ``ml_collections`` defaults
(:meth:`Section.defaults`), the typed view of a resolved config (:meth:`Section.parse`), the
rows of the key table and the keys a workdir may resume with other values of (``runtime``).
Each section's :meth:`Section.check` raises :class:`ConfigError` naming ``config.<key>``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Iterator, Mapping

import ml_collections
from ml_collections import config_dict

from kdjax.train.errors import ConfigError

_DOC, _RUNTIME, _PLACEHOLDER, _SECTION, _SHOWN = "doc", "runtime", "placeholder", "section", "shown"


def key(default: Any = None, doc: str = "", *, runtime: bool = False,
        placeholder: type | None = None, shown: str | None = None) -> Any:
  """A config key: its ``default``, a one-line ``doc`` and whether it is a ``runtime`` key.

  ``runtime`` keys change speed, logging or bookkeeping but not a run's trajectory, so a workdir
  resumes with other values of them. ``placeholder``: the type of a key whose default is None.
  ``shown``: the default as the key table writes it (for defaults that follow another key).
  Mappings and lists as defaults are copied for each config.
  """
  meta = {_DOC: doc, _RUNTIME: runtime, _PLACEHOLDER: placeholder, _SHOWN: shown}
  if isinstance(default, (dict, list)):
    return dataclasses.field(default_factory=lambda: _copy(default), metadata=meta)
  return dataclasses.field(default=default, metadata=meta)


def section(cls: type[Section], doc: str = "", *, runtime: bool = False) -> Any:
  """A nested section (``config.data.augment``): its keys are ``cls``'s."""
  return dataclasses.field(default_factory=cls,
                           metadata={_DOC: doc, _RUNTIME: runtime, _SECTION: cls})


def _copy(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _copy(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_copy(v) for v in value]
  return value


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the key table: the dotted key, its default as text and its meaning."""

  key: str
  default: str
  doc: str
  runtime: bool


class Section:
  """Base of the config sections (each a frozen dataclass; see :func:`key`)."""

  # Keys whose values are free-form mappings (a term's arguments, model kwargs): set whole by an
  # override, checked by the component that reads them.
  FREE_FORM: ClassVar[tuple[str, ...]] = ()

  @classmethod
  def defaults(cls) -> ml_collections.ConfigDict:
    """The section's keys with their defaults, as ``ml_collections`` holds them."""
    c = ml_collections.ConfigDict()
    for f in dataclasses.fields(cls):
      if f.metadata.get(_SECTION):
        c[f.name] = f.metadata[_SECTION].defaults()
      elif f.metadata.get(_PLACEHOLDER):
        c[f.name] = config_dict.placeholder(f.metadata[_PLACEHOLDER])
      else:
        value = f.default_factory() if f.default is dataclasses.MISSING else f.default
        c[f.name] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    return c

  @classmethod
  def parse(cls, values: Mapping[str, Any]):
    """The typed section of a resolved config's plain values (nested sections parsed too)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
      value = values[f.name]
      kwargs[f.name] = f.metadata[_SECTION].parse(value) if f.metadata.get(_SECTION) else value
    return cls(**kwargs)

  @classmethod
  def rows(cls, prefix: str = "", runtime: bool = False) -> Iterator[Row]:
    """The key table's rows of this section, nested sections expanded, in declaration order
    (``runtime``: the section is a runtime key as a whole)."""
    for f in dataclasses.fields(cls):
      is_runtime = runtime or bool(f.metadata.get(_RUNTIME))
      if f.metadata.get(_SECTION):
        yield from f.metadata[_SECTION].rows(f"{prefix}{f.name}.", is_runtime)
        continue
      shown = f.metadata.get(_SHOWN)
      if shown is None:
        value = f.default_factory() if f.default is dataclasses.MISSING else f.default
        shown = f"`{value!r}`"
      yield Row(f"{prefix}{f.name}", shown, f.metadata.get(_DOC, ""), is_runtime)

  @classmethod
  def runtime_keys(cls, prefix: str = "") -> Iterator[str]:
    """Dotted keys (whole sections where a section is runtime) marked ``runtime``."""
    for f in dataclasses.fields(cls):
      if f.metadata.get(_RUNTIME):
        yield f"{prefix}{f.name}"
      elif f.metadata.get(_SECTION):
        yield from f.metadata[_SECTION].runtime_keys(f"{prefix}{f.name}.")

  def check(self, path: str, root: Any) -> None:
    """Raises :class:`ConfigError` for the first value kdjax cannot use (``root``: the config)."""
    del path, root


def names(values: Any) -> str:
  """``values`` as the key table writes a choice: ```a`, `b```."""
  return ", ".join(f"`{v}`" for v in values)


# Checks shared by the sections -----------------------------------------------------------------


def require(ok: bool, message: str) -> None:
  """Raises :class:`ConfigError` with ``message`` unless ``ok``."""
  if not ok:
    raise ConfigError(message)


def is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_int(value: Any, path: str, minimum: int = 1) -> None:
  """``config.<path>`` must be an integer >= ``minimum``."""
  require(is_int(value) and value >= minimum,
          f"config.{path} must be an integer >= {minimum}, got {value!r}")


def check_choice(value: Any, path: str, allowed: Any, what: str = "") -> None:
  """``config.<path>`` must be one of ``allowed`` (a tuple or the keys of a table)."""
  allowed = tuple(allowed)
  what = f" is not {what}" if what else ""
  require(value in allowed, f"config.{path}={value!r}{what}; use one of {allowed}")
