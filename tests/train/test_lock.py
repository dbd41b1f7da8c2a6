"""The workdir lock: one run per workdir, released on every exit, stale locks taken over."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from kdjax.train import errors
from kdjax.train import lock as lock_lib
from tests.train.conftest import REPO, cli_env

HOLDER = textwrap.dedent("""
    import sys, time
    from kdjax.train.lock import WorkdirLock
    workdir, mode = sys.argv[1], sys.argv[2]
    lock = WorkdirLock(workdir)
    lock.acquire()
    print("locked", flush=True)
    if mode == "hold":
      sys.stdin.readline()  # Holds the lock until the test writes a line (or closes stdin).
      lock.release()
      print("released", flush=True)
    else:
      time.sleep(600)  # Killed by the test.
""")

CONTENDER = textwrap.dedent("""
    import sys, time
    from kdjax.train.lock import WorkdirLock
    from kdjax.train.errors import WorkdirError
    start = time.monotonic()
    try:
      with WorkdirLock(sys.argv[1]):
        print("acquired", flush=True)
    except WorkdirError as e:
      print(type(e).__name__ + ": " + str(e), flush=True)
      print(f"{time.monotonic() - start:.3f}", file=sys.stderr, flush=True)
      sys.exit(3)
""")


def _start(script, *args, **kwargs):
  return subprocess.Popen([sys.executable, "-c", script, *args], env=cli_env(), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_locked(process):
  line = process.stdout.readline()
  assert line.strip() == "locked", (line, process.stderr.read() if process.poll() else "")


def test_second_process_is_refused_at_once_naming_the_holder(tmp_path):
  workdir = str(tmp_path / "w")
  holder = _start(HOLDER, workdir, "hold", stdin=subprocess.PIPE)
  try:
    _wait_locked(holder)
    record = json.loads((tmp_path / "w" / lock_lib.LOCK_FILE).read_text())
    assert record["pid"] == holder.pid and record["host"] == socket.gethostname()

    contender = _start(CONTENDER, workdir)
    out, err = contender.communicate(timeout=300)
    assert contender.returncode == 3, (out, err)
    assert float(err.strip().splitlines()[-1]) < 5  # Refused at once: it never waits.
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("WorkdirLockedError: "), out
    assert f"PID {holder.pid}" in lines[0] and socket.gethostname() in lines[0]
    assert record["started"] in lines[0] and "another --workdir" in lines[0]

    # The holder releases: the next run gets the lock and, on its exit, leaves no lock file.
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "released"
    contender = _start(CONTENDER, workdir)
    out, err = contender.communicate(timeout=300)
    assert contender.returncode == 0 and out.strip() == "acquired", (out, err)
    assert not (tmp_path / "w" / lock_lib.LOCK_FILE).exists()
  finally:
    holder.kill()
    holder.communicate()


def test_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path):
  workdir = str(tmp_path / "w")
  holder = _start(HOLDER, workdir, "sleep")
  _wait_locked(holder)
  holder.send_signal(signal.SIGKILL)
  holder.communicate(timeout=60)
  lock_path = tmp_path / "w" / lock_lib.LOCK_FILE
  # No Python cleanup ran: the record stays; the kernel dropped the flock with the process.
  assert json.loads(lock_path.read_text())["pid"] == holder.pid
  with pytest.warns(RuntimeWarning, match=f"PID {holder.pid}"):
    lock = lock_lib.WorkdirLock(workdir)
    lock.acquire()
  assert json.loads(lock_path.read_text())["pid"] == os.getpid()
  lock.release()
  assert not lock_path.exists()


def test_released_on_exception_and_reusable(tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "config.json").write_text("{}")
  with pytest.raises(KeyError):
    with lock_lib.WorkdirLock(str(workdir)):
      assert (workdir / lock_lib.LOCK_FILE).exists()
      raise KeyError("boom")
  assert sorted(os.listdir(workdir)) == ["config.json"]  # An existing workdir is kept.
  with lock_lib.WorkdirLock(str(workdir)) as lock:
    assert lock.held
  assert not lock.held
  lock.release()  # Releasing twice is harmless.


def test_second_lock_in_the_same_process_is_refused(tmp_path):
  with lock_lib.WorkdirLock(str(tmp_path)):
    with pytest.raises(errors.WorkdirError, match=f"PID {os.getpid()}"):
      lock_lib.WorkdirLock(str(tmp_path)).acquire()


def test_a_new_workdir_is_removed_again_when_nothing_was_written(tmp_path):
  workdir = tmp_path / "new"
  with lock_lib.WorkdirLock(str(workdir)):
    assert workdir.is_dir()
  assert not workdir.exists()
  with lock_lib.WorkdirLock(str(workdir)):
    (workdir / "config.json").write_text("{}")
  assert sorted(os.listdir(workdir)) == ["config.json"]


def test_only_the_main_process_locks(tmp_path):
  with lock_lib.WorkdirLock(str(tmp_path / "w"), is_main=False) as lock:
    assert not lock.held
  assert not (tmp_path / "w").exists()


def test_lock_file_of_another_host_is_refused_with_the_fix(tmp_path):
  record = {"host": "some-other-host", "pid": 4242, "started": "2026-01-01 00:00:00 UTC"}
  (tmp_path / lock_lib.LOCK_FILE).write_text(json.dumps(record))
  with pytest.raises(lock_lib.WorkdirLockedError) as info:
    lock_lib.WorkdirLock(str(tmp_path)).acquire()
  message = str(info.value)
  assert "some-other-host" in message and "PID 4242" in message and "remove" in message
  assert "\n" not in message
  assert info.value.holder == record
  assert json.loads((tmp_path / lock_lib.LOCK_FILE).read_text()) == record  # Left as it was.


def test_unwritable_workdir_is_a_workdir_error(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(errors.WorkdirError, match="writable"):
    lock_lib.WorkdirLock(str(tmp_path / "file" / "w")).acquire()
