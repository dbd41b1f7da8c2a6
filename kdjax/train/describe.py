"""One-line messages and exit statuses for the exceptions that end a command-line run.

:func:`describe` turns any exception that ends a run into the one line ``kdjax`` prints:
kdjax's own errors keep their message (it names the fix); a full disk, exhausted accelerator
memory and a missing optional package get a message that names the fix; anything else is named
as unexpected, with the hint to rerun with ``--verbose``. :func:`exit_status` is the command's
exit status. Errors of the config file and flags are :mod:`kdjax.train.config_errors`'; keeping
background libraries to one line is :mod:`kdjax.train.quiet`.
"""
from __future__ import annotations

import errno
import os
import re
import signal

from kdjax import data
from kdjax.train.errors import Preempted, TrainError

EXIT_ERROR = 1
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again later (the run resumes where it stopped).
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C.

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_PREEMPTED", "describe",
           "describe_subcommand_import", "describe_unexpected", "disk_full_path", "exit_status",
           "extra_for", "first_line", "missing_package", "says_disk_full"]


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


def first_line(text: str) -> str:
  """The first non-blank line of ``text``, stripped (``''`` when there is none)."""
  lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
  return lines[0] if lines else ""


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


def says_disk_full(text: str) -> bool:
  """Whether an error's or log record's ``text`` says a write ran out of disk space."""
  return _NO_SPACE.search(text) is not None


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
    if says_disk_full(text) or writing:
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
