r"""Command line: train a teacher, a baseline student and a distilled student.

  python -m kdjax.main --config=configs/quickstart.py --workdir=/tmp/kdjax_quickstart
  kdjax --config=configs/quickstart.py --config.seed=1 --workdir=/tmp/kdjax_seed1

Override any config key with ``--config.<key>=<value>``. Several processes (multi-host):
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` on every process, or none
under a launcher JAX detects by itself (SLURM, Open MPI, a multi-host Cloud TPU VM).

Exit status: 0 done; 1 an error the printed message explains (bad config, dataset, workdir,
checkpoint, NaN loss); 75 preempted (SIGTERM): a checkpoint was saved, run the same command
again to resume.
"""
from __future__ import annotations

import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

EXIT_ERROR = 1
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again later (the run resumes where it stopped).

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py with get_config()); override keys with "
    "--config.<key>=<value>.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..N-1.")


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
    # ml_collections raises these for an override of a key the config does not have.
    text = str(e.args[0] if e.args else e)
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
    _fail(f"{e} (see --helpfull; config keys are listed in docs/training.md)")
  except Exception as e:  # pylint: disable=broad-except  # Errors raised by the config file itself.
    _fail(f"cannot load --config={_config_path(argv)}: {type(e).__name__}: {e}; fix the config "
          "file (it must define get_config() returning an ml_collections.ConfigDict)")


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

  try:
    results = train.train_and_evaluate(config, _WORKDIR.value)
  except train.Preempted as e:
    _fail(str(e), EXIT_PREEMPTED)
  except (train.TrainError, data.DataError) as e:
    _fail(str(e))
  if jax.process_index() == 0:
    print(train.results_table(results), flush=True)
    print(f"results: {_WORKDIR.value}/results.json", flush=True)


def run():
  """Entry point of the ``kdjax`` console script."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
