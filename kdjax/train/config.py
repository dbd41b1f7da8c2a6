"""Run configuration: the defaults every config starts from, and how a config is resolved.

A config is an ``ml_collections.ConfigDict``. :func:`base_config` holds every key with its
default (declared once, with its meaning and checks, in :mod:`kdjax.train.schema`), locked (so a
misspelt key is an error with a suggestion) and with ``FieldReference``s for dependent values
(the teacher's steps and optimizer follow the student's until set). Config files
(``configs/*.py``) start from it and override a few fields. :func:`resolve` sets a config (or a
partial dict) onto the defaults with ml_collections' own type and key checks, checks every value
once (:func:`kdjax.train.schema.validate`) and fills in what the dataset decides (class counts,
the evaluation split).
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

import ml_collections

from kdjax.train import schema
from kdjax.train.errors import ConfigError

# Keys that change speed, logging or bookkeeping but not the trajectory of a run, so a workdir
# may be resumed with different values (e.g. on a different machine). Everything else must match
# the workdir's config.json.
RUNTIME_KEYS = schema.RUNTIME_KEYS
# Keys kdjax no longer has -> what to do instead (for error messages that meet them).
REMOVED_KEYS = {
    "checks": "set config.checked_steps=0 to turn the checked first steps off (it is the only "
              "switch now)",
}


def base_config() -> ml_collections.ConfigDict:
  """Every config key with its default value (see :func:`kdjax.train.schema.key_table`).

  The defaults train a small CNN teacher and an MLP student on the bundled ``digits`` dataset;
  ``configs/quickstart.py`` tunes them to finish in well under a minute on a laptop CPU.
  """
  c = schema.Config.defaults()
  c.teacher.total_steps = c.get_ref("total_steps").identity()  # follows total_steps until set
  # Every field follows config.optimizer's until the config sets it (FieldReference).
  for k in c.optimizer.keys():
    c.teacher.optimizer[k] = c.optimizer.get_ref(k).identity()
  c.lock()  # Unknown keys are errors, with ml_collections' "did you mean" suggestion.
  return c


# Setting a config onto the defaults ----------------------------------------------------------


def plain(value: Any) -> Any:
  """A ConfigDict (or mapping) as plain dicts, lists and tuples as tuples, all the way down."""
  if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(plain(v) for v in value)
  return value


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; free-form mappings (objective, model_kwargs) stay whole."""
  flat = {}
  for k, v in tree.items():
    if isinstance(v, Mapping) and v and f"{prefix}{k}" not in schema.FREE_FORM:
      flat.update(flatten(v, f"{prefix}{k}."))
    else:
      flat[f"{prefix}{k}"] = v
  return flat


def _set(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  """``config.<path> = value`` through ml_collections, its errors turned into one line."""
  parts = path.split(".")
  node = config
  for i, part in enumerate(parts):
    where = ".".join(parts[:i + 1])
    try:
      if not isinstance(node, ml_collections.ConfigDict):
        raise AttributeError(f"{'.'.join(parts[:i])} is not a mapping")
      if i < len(parts) - 1:
        node = getattr(node, part)
      else:
        setattr(node, part, value)
    except AttributeError as e:
      if where in REMOVED_KEYS:
        raise ConfigError(f"config.{where} was removed; {REMOVED_KEYS[where]}") from None
      hint = re.search(r'Did you mean "([^"]+)"', str(e))
      close = f" (did you mean '{'.'.join(parts[:i] + [hint.group(1)])}'?)" if hint else ""
      known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise ConfigError(f"unknown config key '{where}'{close}; the known keys here are {known} "
                        "(see kdjax.train.config.base_config for every key)") from None
    except TypeError:
      current = getattr(node, part)
      if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"config key '{path}' must be a mapping of {sorted(current.keys())}, "
                          f"got {value!r}") from None
      raise ConfigError(f"config.{path}={value!r} is a {type(value).__name__}, but config.{path} "
                        f"takes a {type(current).__name__} (e.g. {current!r}); fix its type in "
                        "the config file or the --config override") from None


def resolve(config: Any, *, num_classes: int | None = None,
            eval_split: str | None = None) -> ml_collections.ConfigDict:
  """The complete, checked config: ``config`` set onto :func:`base_config`.

  Args:
    config: a ``ConfigDict`` or mapping; keys it leaves out take their defaults (and the
      teacher's steps and optimizer fields follow the student's unless it sets them).
    num_classes: the dataset's class count; fills ``teacher/student.num_classes`` and is checked
      against values given explicitly.
    eval_split: the dataset's default evaluation split; fills ``data.eval_split`` when empty.

  Raises:
    ConfigError: an unknown key, a value of the wrong type or range, or class counts that
      disagree with the dataset.
  """
  if not isinstance(config, (Mapping, ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    raise ConfigError(f"a config is an ml_collections.ConfigDict (or a dict), got "
                      f"{type(config).__name__}; return one from get_config()")
  c = base_config()
  for path, value in flatten(plain(config)).items():
    _set(c, path, value)
  c = plain(c)  # References resolved: the config is plain values from here on.
  schema.validate(c)
  c = ml_collections.ConfigDict(c)
  if num_classes is not None or eval_split:
    c = with_dataset(c, num_classes=num_classes, eval_split=eval_split)
  return c


def with_dataset(config: ml_collections.ConfigDict, *, num_classes: int | None,
                 eval_split: str | None) -> ml_collections.ConfigDict:
  """A resolved config with the values the dataset decides filled in (and checked)."""
  c = plain(config)
  if eval_split and not c["data"]["eval_split"]:
    c["data"]["eval_split"] = eval_split
  if num_classes is not None:
    for side in ("teacher", "student"):
      given = c[side]["num_classes"]
      if given is not None and given != num_classes:
        raise ConfigError(
            f"config.{side}.num_classes={given} but dataset '{c['data']['name']}' has "
            f"{num_classes} classes; set config.{side}.num_classes={num_classes} (or None to "
            "use the dataset's)")
      c[side]["num_classes"] = num_classes
  return ml_collections.ConfigDict(c)


def to_json(config: Any) -> str:
  """The config as JSON (tuples become lists), as written to ``WORKDIR/config.json``."""
  return json.dumps(plain(config), indent=2, sort_keys=True, default=list)


def differing_keys(saved: Mapping, current: Any) -> list[str]:
  """Keys (dotted) whose values differ between a saved config.json and ``current``.

  Runtime keys (:data:`RUNTIME_KEYS`) are ignored: they do not change a run's trajectory.
  """
  a = flatten(json.loads(json.dumps(plain(saved), default=list)))
  b = flatten(json.loads(to_json(current)))
  # A key a newer kdjax added is absent from an older config.json: it had its default there.
  defaults = flatten(json.loads(to_json(base_config())))
  a = {**{k: v for k, v in defaults.items() if k not in a and k in b}, **a}

  def runtime(key):
    return any(key == r or key.startswith(r + ".") for r in RUNTIME_KEYS)

  return sorted(k for k in set(a) | set(b) if not runtime(k) and a.get(k) != b.get(k))
