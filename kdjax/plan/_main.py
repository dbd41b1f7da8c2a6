r"""``kdjax plan`` / ``python -m kdjax.plan``: the plan of a config on a topology, as a table.

  python -m kdjax.plan --config=configs/cifar100/kd.py --topology=v5e:2x2 \
      --config.batch_size=256

Prints one row per run, then (when a run does not fit) the suggested overrides and their rows;
the last line is JSON: ``{"topology", "devices", "processes", "runs": {run: {"fits",
"peak_bytes_per_device", "hbm_bytes_per_device", "step_seconds", "flops_per_step"}},
"suggestion"}``. Exit status 0 when every run fits, 2 when some run does not, 1 on an error.
Nothing else is printed: JAX runs on the CPU (``JAX_PLATFORMS=cpu`` unless set), and what libtpu
and the CUDA plugin say about the chip this machine lacks is dropped (``--verbose`` keeps it).
``--runs=a,b`` plans only those runs; ``--noeval`` leaves out the evaluation steps.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Sequence

from absl import flags
from ml_collections import config_flags

EXIT_ERROR = 1
EXIT_DOES_NOT_FIT = 2


def _flags(argv: list[str]) -> flags.FlagValues:
  # Own flag registry: `kdjax plan` runs inside kdjax.main, whose --config is already defined.
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
      "config", None, "Config file (configs/*.py with get_config()); override keys with "
      "--config.<key>=<value>.", flag_values=fv, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("topology", None, "v5e:2x2, v5e-16, v4:2x2x2, h100:1x8, h100:2x8, ...",
                      flag_values=fv)
  flags.DEFINE_list("runs", [], "Plan only these runs of the config (e.g. --runs=student_kd); "
                    "all when not given.", flag_values=fv)
  flags.DEFINE_bool("eval", True, "Also compile each run's evaluation step.", flag_values=fv)
  flags.DEFINE_bool("suggest", True, "When a run does not fit, search for overrides that fit.",
                    flag_values=fv)
  flags.DEFINE_integer("num_train", None, "Training examples, for a TFDS dataset that is not "
                       "prepared here and whose size kdjax does not know.", flag_values=fv)
  flags.DEFINE_bool("verbose", False, "Show what libtpu and the CUDA plugin print while they "
                    "start (dropped otherwise: warnings about the chip this machine lacks).",
                    flag_values=fv)
  flags.DEFINE_integer("max_tries", 8, "Candidate configs the suggestion search may compile.",
                       flag_values=fv)
  return fv


def _fail(message: str) -> int:
  print(f"kdjax plan: error: {message}", file=sys.stderr, flush=True)
  return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command on ``argv`` (the arguments after ``plan``); returns the exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  # No GPU to autotune on: the CUDA compiler takes its default kernels (set before JAX starts).
  if "xla_gpu_autotune_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_gpu_autotune_level=0").strip()
  argv = ["kdjax plan", *argv]
  fv = _flags(argv)
  try:
    fv(argv)
  except flags.Error as e:
    return _fail(f"{str(e).splitlines()[0]}; usage: kdjax plan --config=configs/... "
                 "--topology=v5e:2x2 [--config.<key>=<value> ...]")
  except Exception as e:  # pylint: disable=broad-except  # Raised by the config file itself.
    return _fail(f"cannot load the config: {type(e).__name__}: {str(e).splitlines()[0]}")
  if fv.config is None or not fv.topology:
    return _fail("--config and --topology are required, e.g. kdjax plan "
                 "--config=configs/cifar100/kd.py --topology=v5e:2x2")

  import jax  # pylint: disable=g-import-not-at-top
  from kdjax import data  # pylint: disable=g-import-not-at-top
  from kdjax import train  # pylint: disable=g-import-not-at-top
  from kdjax.plan import _plan  # pylint: disable=g-import-not-at-top
  from kdjax.plan._topology import TopologyError, get_topology  # pylint: disable=g-import-not-at-top
  from kdjax.train import quiet  # pylint: disable=g-import-not-at-top
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  # The steps compile for the topology's compile-only devices; JAX's own backend only traces
  # shapes. On CPU it claims no TPU of this host, and the CUDA plugin registers without a GPU
  # (asked for other platforms, it skips its CUDA version check) so its topologies exist.
  if not jax.config.jax_platforms and not xla_bridge.backends_are_initialized():
    jax.config.update("jax_platforms", "cpu")
  loud = contextlib.nullcontext() if fv.verbose else quiet.no_chip_noise()
  try:
    with loud:  # libtpu and the CUDA plugin start here, and say they find no chip.
      jax.devices()
      topology = get_topology(fv.topology)
    report = _plan.plan(fv.config, topology, evaluate=fv.eval, suggest=fv.suggest,
                        num_train=fv.num_train, max_tries=fv.max_tries, runs=fv.runs)
  except (TopologyError, train.ConfigError, data.DataError) as e:
    return _fail(" ".join(str(e).split()))
  print(report.table(), flush=True)
  if not report.fits:
    if report.suggestion:
      print(f"\ndoes not fit; this fits: {report.suggestion}", flush=True)
      print(report.suggested.table(), flush=True)
    else:
      print("\ndoes not fit, and no change the search tried fits", flush=True)
  print(_plan.to_json_line(report), flush=True)
  return 0 if report.fits else EXIT_DOES_NOT_FIT
