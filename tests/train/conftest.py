"""Shared pieces of the training tests: the tiny config, one finished reference workdir."""
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from kdjax import train
from tests import helpers
from tests.train import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIG_FILE = os.path.join(REPO, "tests", "train", "tiny_config.py")


@pytest.fixture(autouse=True)
def _no_full_disk_left_over():
  """``kdjax.train.quiet`` remembers a full disk for the rest of the process (a CLI run ends
  there); a test that shows it one must not change what the next test in the worker sees."""
  yield
  from kdjax.train import quiet  # pylint: disable=g-import-not-at-top
  quiet._OneLine.disk_full = False  # pylint: disable=protected-access


def tiny(**overrides):
  """The tiny pipeline config with dotted-key overrides, e.g. ``tiny(**{'optimizer.name': 'sgd'})``."""
  return helpers.with_overrides(tiny_config.get_config(), overrides)


def train_losses(workdir, run):
  """``{step: loss}`` of a run's training records in metrics.jsonl."""
  records = train.read_metrics(os.path.join(workdir, run, "metrics.jsonl"))
  return {r["step"]: r["loss"] for r in records if not r.get("eval")}


def snapshot(directory):
  """Every file under ``directory`` with a hash of its content: to check nothing changed."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def cli_env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
  env.setdefault("JAX_NUM_CPU_DEVICES", "8")
  env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def cli(*args, **kwargs):
  """Starts ``python -m kdjax.main ARGS`` (a Popen)."""
  return subprocess.Popen([sys.executable, "-m", "kdjax.main", *args], env=cli_env(), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture(scope="session", name="reference")
def fixture_reference(tmp_path_factory):
  """The tiny pipeline run once, uninterrupted: ``(workdir, results)``. Do not modify it."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  results = train.train_and_evaluate(tiny(), workdir)
  return workdir, results


def run_cli(*args, timeout=1500):
  """Runs ``python -m kdjax.main ARGS`` to the end; fails the test unless it exits 0."""
  process = cli(*args)
  _, err = process.communicate(timeout=timeout)
  assert process.returncode == 0, err[-3000:]


def kill_when(path, *args):
  """Starts ``python -m kdjax.main ARGS`` and SIGKILLs it as soon as ``path`` exists."""
  process = cli(*args)
  while not os.path.isdir(path):
    assert process.poll() is None, process.communicate()[1][-3000:]
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
