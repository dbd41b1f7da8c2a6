"""One-line messages for the errors of a command-line run, and quiet background failures.

:func:`describe` turns any exception that ends a run into the one line ``kdjax`` prints:
kdjax's own errors keep their message (it names the fix); a full disk, exhausted accelerator
memory and errors of the config machinery (ml_collections) get a message that names the fix;
anything else is named as unexpected, with the hint to rerun with ``--verbose``.
:func:`quiet_background_tracebacks` keeps library log records and background threads (async
checkpoint saves) to one line, so the final ``kdjax: error`` line is what a user reads.
"""
from __future__ import annotations

import difflib
import errno
import logging as std_logging
import os
import re
import signal
import sys
import threading

from kdjax import data
from kdjax.train.errors import Preempted, TrainError

EXIT_ERROR = 1
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again later (the run resumes where it stopped).
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C.

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_PREEMPTED", "config_keys", "config_path",
           "config_type_error", "describe", "describe_config_file_error", "describe_flags_error",
           "describe_subcommand_import", "describe_unexpected", "disk_full_path", "exit_status",
           "extra_for", "first_line", "missing_package", "nearest_keys", "QUIET_LOGGERS",
           "quiet_background_tracebacks"]


def exit_status(exc: BaseException) -> int:
  """The command's exit status when ``exc`` ended the run: 75 preempted (SIGTERM), 130
  interrupted (Ctrl-C), 1 any other error."""
  if isinstance(exc, Preempted):
    return EXIT_INTERRUPTED if exc.signum == signal.SIGINT else EXIT_PREEMPTED
  return EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_ERROR


def describe(exc: BaseException, workdir: str) -> str:
  """The one-line message ``kdjax`` prints for ``exc``, which ended a run in ``workdir``."""
  if isinstance(exc, KeyboardInterrupt):
    return (f"interrupted (Ctrl-C) before a checkpoint could be saved; run the same command "
            f"again to resume from the last checkpoint in {workdir}")
  if isinstance(exc, (TrainError, data.DataError)):
    for cause in (exc.__cause__, exc.__context__):  # A checkpoint error caused by a full disk.
      if cause is not None and disk_full_path(cause, "") is not None:
        return describe_unexpected(cause, workdir)
    text = str(exc)
    return " ".join(text.split()) if "\n" in text else text
  return describe_unexpected(exc, workdir)


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


def first_line(text: str) -> str:
  lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
  return lines[0] if lines else ""


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


def _chain(exc: BaseException):
  """``exc`` and every exception it was raised from or during (and those of exception groups)."""
  seen, stack = set(), [exc]
  while stack:
    e = stack.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    yield e
    stack += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


_NO_SPACE = re.compile(r"No space left on device|Disk quota exceeded|\bENOSPC\b|"
                       r"OS error 28\b|\[Errno 28\]")
_QUOTED_PATH = re.compile(r"[\"'](/[^\"']+)[\"']")


def disk_full_path(exc: BaseException, default: str) -> str | None:
  """Where a write ran out of disk space, if that is what ``exc`` (or its cause) is.

  ``OSError`` with ``ENOSPC`` / ``EDQUOT``, or an Orbax / tensorstore error whose text says so
  (tensorstore reports ``RESOURCE_EXHAUSTED: Error writing local file "...": [OS error 28: No
  space left on device]``). XLA's ``RESOURCE_EXHAUSTED`` for device memory is not a full disk.
  """
  for e in _chain(exc):
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return os.fspath(e.filename) if e.filename else default
    text = str(e)
    lower = text.lower()
    writing = "resource_exhausted" in lower and ("writ" in lower or "file" in lower) and (
        "memory" not in lower)
    if _NO_SPACE.search(text) or writing:
      found = _QUOTED_PATH.search(text)
      return found.group(1) if found else default
  return None


# Modules kdjax's optional extras provide whose import name is not their package's name.
_PACKAGE_OF = {"PIL": "pillow", "sklearn": "scikit-learn", "tensorboard": "tensorboardX"}


def extra_for(package: str) -> str | None:
  """The extra of kdjax's ``pyproject.toml`` that installs ``package`` (``onnx`` -> ``deploy``),
  from the installed distribution's metadata; ``None`` if no extra does."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    requirements = metadata.requires("kdjax") or []
  except metadata.PackageNotFoundError:
    return None
  norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
  extras = []
  for requirement in requirements:
    found = re.match(r"\s*([A-Za-z0-9._-]+).*extra\s*==\s*['\"]([\w-]+)['\"]", requirement)
    if found and norm(found.group(1)) == norm(package):
      extras.append(found.group(2))
  useful = [e for e in extras if e not in ("test", "bench")]
  return (useful or extras or [None])[0]


def missing_package(exc: BaseException) -> str | None:
  """The one line for a missing optional package behind ``exc``: kdjax's own ``ImportError``
  message (it names the extra) or the extra that installs the module, e.g. ``pip install -e
  ".[deploy]"``; ``None`` when no import failed."""
  for e in _chain(exc):
    if not isinstance(e, ImportError):
      continue
    if "pip install" in str(e):
      return " ".join(str(e).split())
    name = (e.name or "").split(".")[0]
    if not name or name == "kdjax":
      continue
    package = _PACKAGE_OF.get(name, name)
    extra = extra_for(package)
    fix = (f'pip install -e ".[{extra}]" (the {extra} extra; or pip install "kdjax[{extra}]")'
           if extra else f"pip install {package}")
    return f"the package {package!r} is not installed (import {e.name} failed); {fix}"
  return None


def describe_subcommand_import(name: str, module: str, exc: ImportError) -> str:
  """The one line for ``kdjax <name>`` whose ``module`` failed to import with ``exc``."""
  if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
    return (f"'kdjax {name}' is not available: this installation has no {module} module; "
            "reinstall kdjax (pip install -e .)")
  return f"'kdjax {name}' needs more: {missing_package(exc)}"


def describe_unexpected(exc: BaseException, workdir: str) -> str:
  """The one-line message for an exception that is not one of kdjax's own errors."""
  path = disk_full_path(exc, workdir)
  if path is not None:
    return (f"no space left on device while writing {path}; free space and rerun the same "
            "command to resume")
  missing = missing_package(exc)
  if missing is not None:
    return missing
  for e in _chain(exc):
    text = str(e)
    if "RESOURCE_EXHAUSTED" in text and "memory" in text.lower():
      return ("out of accelerator memory (RESOURCE_EXHAUSTED); lower batch_size, use "
              "accumulation_steps, or shard the teacher (shard_teacher=True, mesh.fsdp > 1)")
  return (f"unexpected {type(exc).__name__}: {first_line(str(exc))[:300]}; rerun with "
          "--verbose for the traceback (and report it if it is a bug in kdjax)")


_BACKGROUND_LOGGERS = re.compile(r"orbax|asyncio|tensorstore")


class _OneLine(std_logging.Filter):
  """Without --verbose: log records lose their tracebacks; full-disk errors are left to the
  final ``kdjax: error`` line."""

  disk_full = False  # Set once a record reports a full disk.

  def filter(self, record: std_logging.LogRecord) -> bool:
    try:
      message = record.getMessage()
    except Exception:  # pylint: disable=broad-except
      return True
    if record.levelno >= std_logging.ERROR:
      cause = record.exc_info[1] if record.exc_info else None
      if (_NO_SPACE.search(message) or "RESOURCE_EXHAUSTED" in message or
          (cause is not None and disk_full_path(cause, "") is not None)):
        _OneLine.disk_full = True
        return False
      if _OneLine.disk_full and _BACKGROUND_LOGGERS.search(
          f"{record.name} {record.pathname}"):
        # Orbax's save threads and asyncio report the same full disk several times more
        # ("Failed to run 4 Handler Commit operations", "Event loop is closed").
        return False
    if record.exc_info or "Traceback (most recent call last)" in message:
      record.msg, record.args = first_line(message), None
      record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


# Libraries whose warnings a run cannot act on (onnx_ir warns once per intermediate value whose
# type it cannot serialize while jax2onnx writes a model); shown with --verbose.
QUIET_LOGGERS = ("onnx_ir",)


def quiet_background_tracebacks():
  """Without --verbose: one-line library log records, no traceback from background threads
  (the final ``kdjax: error`` line says what happened) and only errors from
  :data:`QUIET_LOGGERS`."""
  for name in QUIET_LOGGERS:
    std_logging.getLogger(name).setLevel(std_logging.ERROR)
  one_line = _OneLine()
  for logger in (std_logging.getLogger(), std_logging.getLogger("absl")):
    logger.addFilter(one_line)
    for handler in logger.handlers:
      handler.addFilter(one_line)

  def hook(args):
    # Background threads (async checkpoint saves) report their failure to the main thread,
    # which prints the one line; here only a short note.
    if disk_full_path(args.exc_value, "") is not None:
      _OneLine.disk_full = True
      return
    if _OneLine.disk_full and _BACKGROUND_LOGGERS.search(str(args.exc_value)):
      return
    print(f"kdjax: warning: background thread {getattr(args.thread, 'name', '?')} failed: "
          f"{args.exc_type.__name__}: {first_line(str(args.exc_value))}", file=sys.stderr,
          flush=True)

  threading.excepthook = hook
  sys.excepthook = _quiet_callbacks(sys.excepthook)
  sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)


def _after_failed_save(exc: BaseException | None) -> bool:
  """Whether ``exc`` is a callback's echo of a save that already failed: tensorstore and
  Orbax calling into an asyncio loop that the failed save closed, after a full disk."""
  return exc is not None and (
      _OneLine.disk_full or (isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)))


def _quiet_callbacks(previous):
  # Native callbacks (tensorstore's futures) print their exceptions through sys.excepthook.
  def excepthook(exc_type, exc, tb):
    if not _after_failed_save(exc):
      previous(exc_type, exc, tb)
  return excepthook


def _quiet_unraisable(previous):
  def unraisablehook(unraisable):
    if not _after_failed_save(unraisable.exc_value):
      previous(unraisable)
  return unraisablehook
