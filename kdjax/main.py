r"""Command line: train a teacher, a baseline student and a distilled student.

  python -m kdjax.main --config=configs/quickstart.py --workdir=/tmp/kdjax_quickstart
  kdjax --config=configs/quickstart.py --config.seed=1 --workdir=/tmp/kdjax_seed1

Override any config key with ``--config.<key>=<value>``. Several processes (multi-host):
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` on every process, or none
under a launcher JAX detects by itself (SLURM, Open MPI, a multi-host Cloud TPU VM).

Subcommands:

  kdjax report WORKDIR [WORKDIR ...]   learning curves and results table (kdjax.report)
  kdjax export ...                     exported models (kdjax.export; ``kdjax export --help``)

also as ``python -m kdjax.main report ...``.

Exit status: 0 done; 1 an error the printed one-line message explains (bad config, dataset,
workdir in use or of another config, checkpoint, NaN loss, full disk); 75 preempted (SIGTERM) and
130 interrupted (Ctrl-C): a checkpoint was saved, run the same command again to resume.
Tracebacks are printed only with ``--verbose``.
"""
from __future__ import annotations

import errno
import importlib
import logging as std_logging
import os
import re
import signal
import sys
import threading
import traceback

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

EXIT_ERROR = 1
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again later (the run resumes where it stopped).
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C.
SUBCOMMANDS = {"report": "kdjax.report", "export": "kdjax.export"}

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py with get_config()); override keys with "
    "--config.<key>=<value>.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..N-1.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "On errors, print the full traceback as well as "
                             "the one-line message.")


def _fail(message: str, code: int = EXIT_ERROR):
  print(f"kdjax: error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _config_path(argv: list[str]) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return "?"


def _parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; a bad config file or override ends with one message instead of a trace."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    text = str(e.args[0] if e.args else e)
    if isinstance(e, AttributeError) and "get_config" in text:
      _fail(f"--config={_config_path(argv)} does not define get_config(); a config file must "
            "define get_config() returning an ml_collections.ConfigDict (see "
            "configs/quickstart.py)")
    # Otherwise ml_collections raises these for an override of a key the config does not have.
    found = re.search(r"'([^'\\\s]+)", text)
    missing = found.group(1) if found else text
    close = re.search(r'Did you mean "([^"]+)"', text)
    hint = f" (did you mean '{close.group(1)}'?)" if close else ""
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    culprit = next((o for o in overrides if missing in o.split(".")), "--config.<key>")
    _fail(f"{culprit}: the config has no key '{missing}'{hint}; --config.<key>=<value> only "
          "overrides keys that exist (fix the spelling, or add the key in the config file; the "
          "keys are listed in docs/training.md)")
  except flags.Error as e:
    typed = config_type_error(str(e), _config_path(argv))
    if typed:
      _fail(typed)
    _fail(f"{_first_line(str(e))} (see --helpfull; config keys are listed in docs/training.md)")
  except Exception as e:  # pylint: disable=broad-except  # Errors raised by the config file itself.
    typed = config_type_error(f"{e}\n{traceback.format_exc()}", _config_path(argv))
    if typed:
      _fail(typed)
    _fail(f"cannot load --config={_config_path(argv)}: {type(e).__name__}: {_first_line(str(e))}; "
          "fix the config file (it must define get_config() returning an "
          "ml_collections.ConfigDict)")


def _first_line(text: str) -> str:
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


def _load_config():
  config = _CONFIG.value
  if config is None:
    _fail("--config is required, e.g. --config=configs/quickstart.py")
  try:
    config.keys()  # A file that failed to load gives a placeholder that raises on any access.
  except Exception as e:  # pylint: disable=broad-except
    path = _config_path(sys.argv).split(":", 1)[0]
    if not os.path.isfile(path):
      _fail(f"config file {path!r} does not exist (relative paths start from the current "
            f"directory, {os.getcwd()}); pass --config=path/to/config.py, e.g. "
            "--config=configs/quickstart.py")
    _fail(f"cannot load --config={path}: {' '.join(str(e).split())}; it must define "
          "get_config() returning an ml_collections.ConfigDict")
  return config


def detected_cluster(environ=os.environ) -> str | None:
  """The multi-process launcher ``jax.distributed.initialize()`` can read by itself, if any.

  Only launchers that started more than one process count: one SLURM task, one MPI rank or a
  single-host TPU VM run as a plain single process.
  """
  def count(key):
    try:
      return int(environ.get(key, "1") or 1)
    except ValueError:
      return 1

  if "SLURM_JOB_ID" in environ and count("SLURM_NTASKS") > 1:
    return "SLURM"
  if count("OMPI_COMM_WORLD_SIZE") > 1:
    return "Open MPI"
  if len([h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "Cloud TPU"
  return None


def _initialize_distributed():
  given = [f.value is not None for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)]
  if not any(given):
    cluster = detected_cluster()
    if cluster is not None:
      import jax  # pylint: disable=g-import-not-at-top
      logging.warning("%s launched several processes: jax.distributed.initialize() with JAX's "
                      "auto-detection", cluster)
      jax.distributed.initialize()
    return
  if not all(given):
    _fail("multi-process runs need all of --coordinator_address, --num_processes and "
          "--process_id (or none of them for one process)")
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; pass options as --name=value")
  config = _load_config()
  if not _WORKDIR.value:
    _fail("--workdir is required, e.g. --workdir=/tmp/kdjax_run")
  logging.set_verbosity(logging.WARNING)
  _initialize_distributed()

  import jax  # pylint: disable=g-import-not-at-top
  from kdjax import data  # pylint: disable=g-import-not-at-top
  from kdjax import train  # pylint: disable=g-import-not-at-top

  verbose = _VERBOSE.value
  if not verbose:
    _quiet_background_tracebacks()
  try:
    results = train.train_and_evaluate(config, _WORKDIR.value)
  except train.Preempted as e:
    _show_traceback(verbose)
    interrupted = getattr(e, "signum", None) == signal.SIGINT
    _fail(str(e), EXIT_INTERRUPTED if interrupted else EXIT_PREEMPTED)
  except KeyboardInterrupt:
    _show_traceback(verbose)
    _fail(f"interrupted (Ctrl-C) before a checkpoint could be saved; run the same command "
          f"again to resume from the last checkpoint in {_WORKDIR.value}", EXIT_INTERRUPTED)
  except (train.TrainError, data.DataError) as e:
    _show_traceback(verbose)
    for cause in (e.__cause__, e.__context__):  # E.g. a checkpoint error caused by a full disk.
      if cause is not None and disk_full_path(cause, "") is not None:
        _fail(describe_unexpected(cause, _WORKDIR.value))
    _fail(" ".join(str(e).split()) if "\n" in str(e) else str(e))
  except Exception as e:  # pylint: disable=broad-except
    _show_traceback(verbose)
    _fail(describe_unexpected(e, _WORKDIR.value))
  if jax.process_index() == 0:
    print(train.results_table(results), flush=True)
    print(f"results: {_WORKDIR.value}/results.json", flush=True)


def _show_traceback(verbose: bool):
  if verbose:
    traceback.print_exc()


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


def describe_unexpected(exc: BaseException, workdir: str) -> str:
  """The one-line message for an exception that is not one of kdjax's own errors."""
  path = disk_full_path(exc, workdir)
  if path is not None:
    return (f"no space left on device while writing {path}; free space and rerun the same "
            "command to resume")
  for e in _chain(exc):
    text = str(e)
    if "RESOURCE_EXHAUSTED" in text and "memory" in text.lower():
      return ("out of accelerator memory (RESOURCE_EXHAUSTED); lower batch_size, use "
              "accumulation_steps, or shard the teacher (shard_teacher=True, mesh.fsdp > 1)")
  return (f"unexpected {type(exc).__name__}: {_first_line(str(exc))[:300]}; rerun with "
          "--verbose for the traceback (and report it if it is a bug in kdjax)")


class _OneLine(std_logging.Filter):
  """Without --verbose: log records lose their tracebacks; full-disk errors are left to the
  final ``kdjax: error`` line."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    try:
      message = record.getMessage()
    except Exception:  # pylint: disable=broad-except
      return True
    if record.levelno >= std_logging.ERROR and (_NO_SPACE.search(message) or
                                                 "RESOURCE_EXHAUSTED" in message):
      return False
    if record.exc_info or "Traceback (most recent call last)" in message:
      record.msg, record.args = _first_line(message), None
      record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


def _quiet_background_tracebacks():
  one_line = _OneLine()
  for logger in (std_logging.getLogger(), std_logging.getLogger("absl")):
    logger.addFilter(one_line)
    for handler in logger.handlers:
      handler.addFilter(one_line)

  def hook(args):
    # Background threads (async checkpoint saves) report their failure to the main thread,
    # which prints the one line; here only a short note.
    if disk_full_path(args.exc_value, "") is not None:
      return
    print(f"kdjax: warning: background thread {getattr(args.thread, 'name', '?')} failed: "
          f"{args.exc_type.__name__}: {_first_line(str(args.exc_value))}", file=sys.stderr,
          flush=True)

  threading.excepthook = hook


def _subcommand(name: str, args: list[str]) -> int:
  module_name = SUBCOMMANDS[name]
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
      _fail(f"'kdjax {name}' is not available: this installation has no {module_name} module; "
            "reinstall kdjax (pip install -e .)")
    _fail(f"'kdjax {name}' needs the package {e.name!r}, which is not installed; "
          f"pip install {e.name}")
  entry = getattr(module, "main", None)
  if entry is None:
    _fail(f"'kdjax {name}': {module_name} has no main(argv) entry point")
  code = entry(args)
  return 0 if code is None else int(code)


def run(argv: list[str] | None = None):
  """Entry point of the ``kdjax`` console script (and of ``python -m kdjax.main``)."""
  argv = list(sys.argv if argv is None else argv)
  try:
    if len(argv) > 1 and argv[1] in SUBCOMMANDS:
      sys.exit(_subcommand(argv[1], argv[2:]))
    app.run(main, argv=argv, flags_parser=_parse_flags)
  except KeyboardInterrupt:
    _fail("interrupted (Ctrl-C) before training started; run the same command again to start",
          EXIT_INTERRUPTED)


if __name__ == "__main__":
  run()
