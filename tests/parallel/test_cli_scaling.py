"""The same config through the CLI on 1 device, 8 devices, pmap, and two processes.

Each run is a real ``python -m kdjax.main`` process: device counts are fixed when JAX starts, and
the multi-process run uses ``jax.distributed.initialize`` on 127.0.0.1 (gloo on CPU).
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "tests", "train", "tiny_config.py")
# A batch-level (relation) term next to KD, so gathering across devices is exercised, and a
# BatchNorm teacher+student (cnn_small) so statistics are synced across devices too.
OVERRIDES = [
    "--config.compare_baseline=False",
    "--config.total_steps=12",
    "--config.teacher.total_steps=6",
    "--config.eval_every=0",
    "--config.checkpoint_every=6",
    "--config.teacher.model=cnn_small",
    "--config.student.model=cnn_small",
    "--config.student.model_kwargs={\"width\": 4}",
    "--config.teacher.model_kwargs={\"width\": 8}",
]
OBJECTIVE = ('--config.objective={"ce": {"kind": "cross_entropy", "weight": 0.1}, '
             '"kd": {"kind": "kd", "weight": 0.9, "temperature": 4.0}, '
             '"rkd": {"kind": "rkd", "weight": 0.02}}')


def _env(devices):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
  env["JAX_NUM_CPU_DEVICES"] = str(devices)
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _start(workdir, devices, *extra):
  return subprocess.Popen(
      [sys.executable, "-m", "kdjax.main", f"--config={CONFIG}", f"--workdir={workdir}",
       *OVERRIDES, OBJECTIVE, *extra], env=_env(devices), cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)


def _wait(procs, timeout=400):
  for p in procs:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]


def _results(workdir, run="student_kd"):
  losses = {}
  with open(os.path.join(workdir, run, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if not r.get("eval") and "loss" in r:
        losses[r["step"]] = r["loss"]
  with open(os.path.join(workdir, "results.json")) as f:
    return losses, json.load(f)[run]["accuracy"]


def _assert_same(ref, got, rtol=1e-4):
  (ref_losses, ref_acc), (got_losses, got_acc) = ref, got
  assert sorted(ref_losses) == sorted(got_losses) and len(ref_losses) >= 10
  for step in ref_losses:
    np.testing.assert_allclose(got_losses[step], ref_losses[step], rtol=rtol, err_msg=f"step {step}")
  assert abs(got_acc - ref_acc) <= 0.005


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_one_device_eight_devices_and_pmap_log_the_same_losses(tmp_path):
  runs = {"jit1": (1, []), "jit8": (8, []), "pmap8": (8, ["--config.parallel=pmap"])}
  procs = {name: _start(tmp_path / name, n, *extra) for name, (n, extra) in runs.items()}
  _wait(procs.values())
  ref = _results(tmp_path / "jit1")
  _assert_same(ref, _results(tmp_path / "jit8"))
  _assert_same(ref, _results(tmp_path / "pmap8"))


@pytest.mark.slow
def test_two_processes_match_one_process_with_four_devices(tmp_path):
  port = _free_port()
  single = _start(tmp_path / "single", 4)
  multi = [_start(tmp_path / "multi", 2, f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={i}") for i in range(2)]
  _wait([single, *multi])
  _assert_same(_results(tmp_path / "single"), _results(tmp_path / "multi"))
