r"""usage: kdjax --config=CONFIG.py[:ARG] [--config.KEY=VALUE ...] --workdir=DIR [--smoke]
       kdjax {report,export,plan} ...      (python -m kdjax.main works the same)

Trains the runs of a config (teacher, student alone, distilled student, ...) in --workdir and
prints their table; the same command resumes. --config.KEY=VALUE overrides any key (every key:
docs/training.md); ':ARG' goes to the file's get_config. --smoke cuts every run to a few steps
(warm-ups and intervals scaled) for a quick check; --verbose adds tracebacks. Several hosts:
--coordinator_address=HOST:PORT --num_processes=N --process_id=I (none under SLURM, Open MPI or
a Cloud TPU VM slice). Exit status: 0 done, 1 error, 75 preempted, 130 Ctrl-C (rerun: resumes).

  kdjax --config=configs/quickstart.py --workdir=/tmp/kdjax_quickstart
  kdjax report /tmp/kdjax_quickstart       learning curves, results table (report.png, .md)
  kdjax export --workdir=/tmp/kdjax_quickstart --run=student_kd   ONNX, StableHLO (.[deploy])
  kdjax plan --config=configs/cifar100/kd.py --topology=v5e:2x2   memory, time on a TPU slice
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C.
SUBCOMMANDS = {"report": "kdjax.report", "export": "kdjax.train.export_command",
               "plan": "kdjax.plan"}

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py); "
                                          "--config.<key>=<value> sets a key.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..N-1.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "On errors, print the traceback too.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Every run cut to a few steps (kdjax.train.smoke).")


def _fail(message: str, code: int = EXIT_ERROR, *, trace: bool = False):
  if trace:
    traceback.print_exc()
  print(f"kdjax: error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; a bad config file or override ends with one message instead of a trace."""
  try:
    return FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  # absl, ml_collections, the file itself.
    from kdjax.train import config_errors  # pylint: disable=g-import-not-at-top
    _fail(config_errors.describe_flags_error(e, argv, traceback.format_exc()),
          trace=bool({"--verbose", "--verbose=true"} & set(argv)))


def _load_config():
  config = _CONFIG.value
  if config is None or not _WORKDIR.value:
    _fail("--config and --workdir are required, e.g. --config=configs/quickstart.py "
          "--workdir=/tmp/kdjax_run (kdjax --help)")
  try:
    config.keys()  # A file that failed to load gives a placeholder that raises on any access.
  except Exception as e:  # pylint: disable=broad-except
    from kdjax.train import config_errors  # pylint: disable=g-import-not-at-top
    _fail(config_errors.describe_config_file_error(e, sys.argv))
  return config


def detected_cluster(environ=os.environ) -> str | None:
  """The launcher ``jax.distributed.initialize()`` reads by itself, if it started > 1 process."""
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
  given = {"coordinator_address": _COORDINATOR.value, "num_processes": _NUM_PROCESSES.value,
           "process_id": _PROCESS_ID.value}
  if all(v is None for v in given.values()) and detected_cluster() is None:
    return
  if any(v is None for v in given.values()) and any(v is not None for v in given.values()):
    _fail("multi-process runs need all of --coordinator_address, --num_processes and "
          "--process_id (or none of them for one process)")
  import jax  # pylint: disable=g-import-not-at-top
  if all(v is None for v in given.values()):
    logging.warning("%s launched several processes: jax.distributed.initialize() with JAX's "
                    "auto-detection", detected_cluster())
    given = {}
  jax.distributed.initialize(**given)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; pass options as --name=value")
  config = _load_config()
  logging.set_verbosity(logging.WARNING)
  _initialize_distributed()
  from kdjax import train, workdir  # pylint: disable=g-import-not-at-top,g-multiple-import
  from kdjax.train import describe, quiet, smoke  # pylint: disable=g-import-not-at-top,g-multiple-import
  if not _VERBOSE.value:
    quiet.quiet_background_tracebacks()
    quiet.start_backends()
  try:
    config = smoke.smoke_config(config) if _SMOKE.value else config
    results = train.train_and_evaluate(config, _WORKDIR.value)
  except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except
    _fail(describe.describe(e, _WORKDIR.value), describe.exit_status(e), trace=_VERBOSE.value)
  if workdir.is_main():
    print(train.results_table(results), flush=True)
    print(f"results: {os.path.join(_WORKDIR.value, workdir.RESULTS_FILE)}\nnext: kdjax report "
          f"{_WORKDIR.value}  (writes learning curves and this table to report.png, .md)")


def run(argv: list[str] | None = None):
  """Entry point of the ``kdjax`` console script (and of ``python -m kdjax.main``)."""
  argv = list(sys.argv if argv is None else argv)
  try:
    if len(argv) == 1 or argv[1] not in SUBCOMMANDS and {"--help", "-h", "help"} & set(argv):
      print(__doc__, end="", flush=True)
      sys.exit(0 if len(argv) > 1 else EXIT_ERROR)
    if argv[1] in SUBCOMMANDS:
      try:
        module = importlib.import_module(SUBCOMMANDS[argv[1]])
      except ImportError as e:
        from kdjax.train import describe  # pylint: disable=g-import-not-at-top
        _fail(describe.describe_subcommand_import(argv[1], SUBCOMMANDS[argv[1]], e))
      sys.exit(int(module.main(argv[2:]) or 0))
    app.run(main, argv=argv, flags_parser=_parse_flags)
  except KeyboardInterrupt:
    _fail("interrupted (Ctrl-C) before training started; run the same command again to start",
          EXIT_INTERRUPTED)


if __name__ == "__main__":
  run()
