"""One-line messages for a ``--config`` file or flag that did not load.

:func:`describe_flags_error` turns what absl and ml_collections raise while parsing the flags
into the one line ``kdjax`` prints: an unknown key (with the nearest valid keys, from
:func:`config_keys` and :func:`nearest_keys`), a value of the wrong type, a config file without
``get_config()``, or the config file's own error with its file and line.
"""
from __future__ import annotations

import difflib
import os
import re

from kdjax.train.describe import first_line

__all__ = ["config_keys", "config_path", "config_type_error", "describe_config_file_error",
           "describe_flags_error", "nearest_keys"]


def config_path(argv: list[str]) -> str:
  """The ``--config`` value in ``argv`` (``'?'`` when there is none)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return "?"


def describe_config_file_error(exc: BaseException, argv: list[str]) -> str:
  """The one line for a ``--config`` file that did not load (``exc``: what reading it raised)."""
  path = config_path(argv).split(":", 1)[0]
  if not os.path.isfile(path):
    return (f"config file {path!r} does not exist (relative paths start from the current "
            f"directory, {os.getcwd()}); pass --config=path/to/config.py, e.g. "
            "--config=configs/quickstart.py")
  return (f"cannot load --config={path}: {' '.join(str(exc).split())}; it must define "
          "get_config() returning an ml_collections.ConfigDict")


def describe_flags_error(exc: BaseException, argv: list[str], trace: str = "") -> str:
  """The one line for an error raised while parsing the flags and loading ``--config``.

  ``exc`` is what absl / ml_collections raised: an ``AttributeError`` / ``KeyError`` for a key
  the config does not have (set by an override or by the config file itself), an
  ``absl.flags.Error`` wrapping whatever the config file or its ``get_config(arg)`` raised, or
  that error itself; ``trace`` its traceback text (it may name the config file's line). The
  message is the config file's own (kdjax's recipe helpers name the fix), with the file and line
  where the file itself failed.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  path = config_path(argv)
  original = _original(exc)
  text = str(original.args[0] if original.args else original)
  if isinstance(original, (AttributeError, KeyError)) and "get_config" in text:
    return (f"--config={path} does not define get_config(); a config file must define "
            "get_config() returning an ml_collections.ConfigDict (see configs/quickstart.py)")
  typed = config_type_error(f"{exc}\n{original}\n{trace}", path)
  if typed:
    return typed
  where = _config_file_frame(original, path)
  if isinstance(original, (AttributeError, KeyError)) and (
      where is None or _refusing_config(original) is not None):
    named = (re.search(r'Key "([^"]+)" does not exist', text) or
             re.search(r"^\W*([\w.]+)", text))
    return _unknown_key(original, text, argv, named and named.group(1), where)
  if isinstance(original, flags.Error):
    return f"{first_line(str(original))} (see --help; config keys are listed in docs/training.md)"
  file, _, arg = path.partition(":")
  if isinstance(original, TypeError) and re.search(r"get_config\(\) takes 0 positional", text):
    return (f"--config={path}: the get_config() of {file} takes no argument; drop ':{arg}' (an "
            "argument after ':' is for configs whose get_config takes one, e.g. "
            "--config=configs/cifar100/kd.py:resnet32x4-resnet8x4)")
  message = " ".join(str(original).split())
  if _raised_by_kdjax(original):  # kdjax's recipe helpers: the message names the fix.
    return f"--config={path}: {message}"
  at = f" ({os.path.basename(where[0])}, line {where[1]})" if where else ""
  return (f"cannot load --config={path}: {type(original).__name__}: {message}{at}; fix the "
          "config file (it must define get_config() returning an ml_collections.ConfigDict)")


def _original(exc: BaseException) -> BaseException:
  """The error the config file raised, under absl's and ml_collections' wrappers."""
  while True:
    wrapper = "Error whilst parsing config file" in str(exc)
    inner = exc.__cause__ or exc.__context__
    if not wrapper or inner is None:
      return exc
    exc = inner


def _frames(exc: BaseException):
  tb = exc.__traceback__
  while tb is not None:
    yield tb.tb_frame, tb.tb_lineno
    tb = tb.tb_next


def _config_file_frame(exc: BaseException, path: str):
  """``(file, line, frame)`` of the last traceback entry of ``exc`` inside the config file."""
  file = os.path.abspath(path.split(":", 1)[0])
  found = None
  for frame, line in _frames(exc):
    if os.path.abspath(frame.f_code.co_filename) == file:
      found = (frame.f_code.co_filename, line, frame)
  return found


def _raised_by_kdjax(exc: BaseException) -> bool:
  package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  frames = list(_frames(exc))
  return bool(frames) and os.path.abspath(frames[-1][0].f_code.co_filename).startswith(
      package + os.sep)


def _refusing_config(exc: BaseException):
  """The ``ConfigDict`` whose attribute access raised ``exc`` (``None``: not a config's error)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  target = None
  for frame, _ in _frames(exc):
    candidate = frame.f_locals.get("self")
    if isinstance(candidate, ml_collections.ConfigDict):
      target = candidate
  return target


def _key_path(exc: BaseException, key: str, where) -> str:
  """The dotted config key the file tried to set: the locked ``ConfigDict`` that refused ``key``,
  found in the config file's local variables (``config.optimizer`` -> ``optimizer.<key>``)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  target = _refusing_config(exc)
  if target is None or where is None:
    return key

  def search(node, prefix, depth=0):
    if node is target:
      return prefix
    if depth > 6 or not isinstance(node, ml_collections.ConfigDict):
      return None
    for name, child in getattr(node, "_fields", {}).items():
      found = search(child, f"{prefix}{name}.", depth + 1)
      if found is not None:
        return found
    return None

  prefixes = [search(v, "") for v in where[2].f_locals.values()]
  prefixes = [p for p in prefixes if p is not None]
  return max(prefixes, key=len, default="") + key


def config_keys() -> list[str]:
  """Every dotted key of :func:`kdjax.train.config.base_config`, sections included."""
  from kdjax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  keys = set()
  for k in config_lib.flatten(config_lib.plain(config_lib.base_config())):
    parts = k.split(".")
    keys.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
  return sorted(keys)


def nearest_keys(path: str, keys: list[str], n: int = 3) -> list[str]:
  """The valid keys closest to ``path`` (difflib on the last part; an abbreviation such as
  ``lr`` for ``learning_rate`` counts as close), those of the same section first."""
  parent, _, leaf = path.rpartition(".")

  def score(k):
    k_parent, _, k_leaf = k.rpartition(".")
    s = difflib.SequenceMatcher(None, leaf.lower(), k_leaf.lower()).ratio()
    if len(leaf) > 1 and "".join(w[0] for w in k_leaf.split("_") if w) == leaf.lower():
      s = max(s, 0.9)
    return s if k_parent == parent else s - 0.2

  ranked = sorted((k for k in keys if k != path), key=lambda k: (-score(k), k))
  return [k for k in ranked if score(k) >= 0.5][:n]


def _unknown_key(exc, text, argv, key, where) -> str:
  """An unknown key, set by the config file (``where``) or by a ``--config.<key>`` override."""
  from kdjax.train.config import REMOVED_KEYS  # pylint: disable=g-import-not-at-top
  keys = config_keys()
  if where is not None:  # The config file itself set it.
    dotted = _key_path(exc, key, where)
    prefix = f"{where[0]}, line {where[1]}: "
  else:
    found = re.search(r"'([^'\\\s]+)", text)
    missing = key or (found.group(1) if found else text)
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    culprit = next((o for o in overrides if missing in o.split(".")), "--config.<key>")
    dotted = culprit[len("--config."):] if culprit != "--config.<key>" else missing
    prefix = f"{culprit}: "
  if dotted in REMOVED_KEYS:
    return f"{prefix}config.{dotted} was removed; {REMOVED_KEYS[dotted]}"
  near = nearest_keys(dotted, keys)
  if not near:
    section = dotted.rpartition(".")[0]
    near = [k for k in keys if k.rpartition(".")[0] == section][:8]
  hint = f" (did you mean '{near[0]}'?)" if near else ""
  return (f"{prefix}the config has no key '{dotted}'{hint}; nearest valid keys: "
          f"{', '.join(near) or '-'} (every key is listed in docs/training.md)")


_TYPE_OVERRIDE = re.compile(r"Could not override field '([^']+)'[^.]*\. (.*?) is of original type "
                            r"<class '([\w.]+)'> and cannot be casted to type <class '([\w.]+)'>",
                            re.S)


def config_type_error(text: str, config_path: str) -> str | None:
  """The one-line message for ml_collections' "Could not override field" ``TypeError``.

  A config file that assigns a value of another type than the default's (``batch_size = "64"``)
  makes ml_collections raise inside the file; the message names the key, the value, both types
  and, when the traceback shows it, the file's line.
  """
  found = _TYPE_OVERRIDE.search(text)
  if not found:
    return None
  key, value, got, expected = found.groups()
  path = config_path.split(":", 1)[0]
  where = ""
  line = re.search(r'File "([^"]+)", line (\d+), in get_config', text)
  if line:
    where = f" ({os.path.basename(line.group(1))}, line {line.group(2)})"
  shown = repr(value) if got == "str" else value
  return (f"--config={path}: config key '{key}' must be of type {expected}, got {shown} of type "
          f"{got}{where}; set it to {'an' if expected[0] in 'aeiou' else 'a'} {expected} value "
          "(e.g. no quotes around a number)")
