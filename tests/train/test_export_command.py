"""``kdjax export``: one ``kdjax: error:`` line per failure, partial runs refused unless asked,
the exported step always named."""
import json
import os
import shutil
import subprocess

import pytest

from kdjax import train
from kdjax import workdir as contract
from kdjax.train import export_command
from tests.train.conftest import tiny

TEACHER_STEPS = 4


@pytest.fixture(scope="module", name="trained")
def fixture_trained(tmp_path_factory):
  """A workdir whose one run, ``teacher``, trained 4 steps (checkpoints 2 and 4). Read only."""
  workdir = str(tmp_path_factory.mktemp("export") / "w")
  train.train_and_evaluate(tiny(**{"teacher_only": True, "teacher.total_steps": TEACHER_STEPS,
                                   "checkpoint_every": 2, "eval_every": 0, "keep_checkpoints": 3,
                                   "logging.tensorboard": False}), workdir)
  return workdir


@pytest.fixture(name="copy")
def fixture_copy(trained, tmp_path):
  target = str(tmp_path / "w")
  shutil.copytree(trained, target)
  return target


def _fails(capsys, *argv):
  """Runs ``kdjax export ARGV``; returns its one error line (without the prefix)."""
  status = export_command.main(list(argv))
  out, err = capsys.readouterr()
  assert status == 1, (out, err)
  lines = [line for line in err.splitlines() if line.startswith("kdjax: error: ")]
  assert len(lines) == 1 and "Traceback" not in err, err
  assert not out
  return lines[0][len("kdjax: error: "):]


def test_missing_workdir(capsys, tmp_path):
  message = _fails(capsys, f"--workdir={tmp_path}/nope", "--run=teacher")
  assert message == (f"--workdir={tmp_path}/nope does not exist; pass the --workdir of a "
                     "finished training command")


def test_workdir_without_config_json(capsys, tmp_path):
  message = _fails(capsys, f"--workdir={tmp_path}", "--run=teacher")
  assert message.startswith(f"--workdir={tmp_path} has no config.json")


@pytest.mark.parametrize("argv, expected", [
    (["--formats=tflite"], "--formats=tflite: 'tflite' is not an export format; use a "
                           "comma-separated subset of stablehlo,onnx"),
    (["--batch_size=-1"], "--batch_size=-1: a fixed batch size must be >= 1 (leave it out for a "
                          "symbolic batch dimension)"),
    (["--batch_size=abc"], "kdjax export: argument --batch_size: invalid int value: 'abc' (see "
                           "kdjax export --help)"),
])
def test_bad_arguments_before_any_work(capsys, tmp_path, argv, expected):
  assert _fails(capsys, f"--workdir={tmp_path}", *argv) == expected


def test_unknown_run(capsys, trained):
  message = _fails(capsys, f"--workdir={trained}", "--run=student_kd")
  assert message == (f"--run=student_kd: {trained} has no run 'student_kd'; export one of its "
                     "trained runs: teacher")


def test_deleted_checkpoints(capsys, copy):
  shutil.rmtree(contract.checkpoint_dir(copy, "teacher"))
  message = _fails(capsys, f"--workdir={copy}", "--run=teacher")
  assert message.startswith("run 'teacher' has no checkpoint in ")
  assert "its checkpoints were deleted" in message and "Orbax" not in message


def test_truncated_checkpoint(capsys, copy):
  state = os.path.join(contract.checkpoint_dir(copy, "teacher"), str(TEACHER_STEPS), "state")
  for root, _, names in os.walk(state):
    for name in names:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(max(0, os.path.getsize(f.name) // 3))
  message = _fails(capsys, f"--workdir={copy}", "--run=teacher")
  assert message.startswith(f"run 'teacher', checkpoint {TEACHER_STEPS}: cannot read ")
  assert "damaged or incomplete" in message and "not an Orbax checkpoint" not in message
  assert "move " in message and "aside and rerun the training command" in message


def test_unfinished_run_is_refused_unless_allowed(capsys, copy):
  shutil.rmtree(os.path.join(contract.checkpoint_dir(copy, "teacher"), str(TEACHER_STEPS)))
  message = _fails(capsys, f"--workdir={copy}", "--run=teacher")
  assert message == (f"run 'teacher' is unfinished: its latest checkpoint is step 2 of "
                     f"{TEACHER_STEPS}; finish it (rerun the training command on this workdir) "
                     "or pass --allow_partial to export step 2")
  assert not os.path.exists(os.path.join(copy, contract.EXPORT_DIR))

  status = export_command.main([f"--workdir={copy}", "--run=teacher", "--formats=stablehlo",
                                "--allow_partial"])
  out, err = capsys.readouterr()
  assert status == 0, err
  assert "exported run 'teacher' at step 2" in err
  assert json.loads(out)["teacher"]["step"] == 2


def test_finished_run_names_its_step(capsys, copy):
  status = export_command.main([f"--workdir={copy}", "--run=teacher", "--formats=stablehlo"])
  out, err = capsys.readouterr()
  assert status == 0, err
  assert f"exported run 'teacher' at step {TEACHER_STEPS}" in err
  assert json.loads(out)["teacher"]["step"] == TEACHER_STEPS


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
def test_read_only_workdir(capsys, copy, tmp_path):
  mount = str(tmp_path / "ro")
  os.makedirs(mount)
  if subprocess.run(["mount", "--bind", copy, mount], check=False).returncode:
    pytest.skip("cannot bind-mount")
  try:
    if subprocess.run(["mount", "-o", "remount,ro,bind", mount], check=False).returncode:
      pytest.skip("cannot remount read-only")
    message = _fails(capsys, f"--workdir={mount}", "--run=teacher", "--formats=stablehlo")
    assert message.startswith(f"cannot write the export to {mount}/export (Read-only file "
                              "system); make the workdir writable")
  finally:
    subprocess.run(["umount", "-l", mount], check=False)
