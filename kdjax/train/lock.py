"""One run per workdir: an exclusive lock held for the whole life of a run.

Two commands on one workdir would delete each other's checkpoints and interleave their
``metrics.jsonl`` records. :class:`WorkdirLock` makes the second one stop at once, before it
writes anything, with one line naming the holder.

The lock is ``fcntl.flock`` on ``WORKDIR/kdjax.lock``, an open file: the kernel drops it when
the holding process ends in any way (exception, SIGTERM, SIGKILL, a crash), so a lock is never
held by a process that is gone. The file also holds, as JSON, the holder's host, PID and start
time, for the message a second run prints. On a normal exit (any exception included) the file
is removed; a file left behind by a killed process on this host is taken over with a warning.
A file left by a process on another host cannot be checked from here (``flock`` over a network
file system is only as reliable as its lock service), so it is refused with the command that
removes it.

Usage (only process 0 of a multi-process run takes the lock)::

  with WorkdirLock(workdir, is_main=jax.process_index() == 0):
    ...  # everything that reads or writes the workdir
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import time
import warnings

from kdjax.train.errors import WorkdirError

LOCK_FILE = "kdjax.lock"


class WorkdirLockedError(WorkdirError):
  """Another run holds the workdir's lock; ``holder`` is its lock record (host, pid, started)."""

  def __init__(self, message: str, *, holder: dict):
    super().__init__(message)
    self.holder = holder


def _describe(holder: dict) -> str:
  host = holder.get("host", "?")
  pid = holder.get("pid", "?")
  started = holder.get("started", "?")
  return f"host {host}, PID {pid}, started {started}"


def _pid_alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except (ProcessLookupError, ValueError, TypeError, OverflowError):
    return False
  except PermissionError:
    return True  # It exists, under another user.
  return True


class WorkdirLock:
  """An exclusive lock on ``workdir`` for as long as the ``with`` block (or until ``release``).

  Args:
    workdir: the run's directory; created if missing (and removed again on release if the lock
      file was all it held, so a run refused later by a check leaves no trace).
    is_main: whether this process takes the lock; pass ``jax.process_index() == 0``. Other
      processes of a multi-process run get a lock object that does nothing.

  Raises:
    WorkdirLockedError: (a :class:`~kdjax.train.errors.WorkdirError`) another live run holds the
      lock; the message names its host, PID and start time and what to do.
    WorkdirError: the workdir cannot be created or the lock file cannot be written.
  """

  def __init__(self, workdir: str, *, is_main: bool = True):
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self.is_main = bool(is_main)
    self._fd: int | None = None
    self._created_workdir = False

  @property
  def held(self) -> bool:
    return self._fd is not None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def acquire(self) -> None:
    """Takes the lock or raises at once (never waits for another run)."""
    if not self.is_main or self._fd is not None:
      return
    if not os.path.isdir(self.workdir):
      try:
        os.makedirs(self.workdir)
        self._created_workdir = True
      except FileExistsError:
        pass
      except OSError as e:
        raise WorkdirError(f"cannot create --workdir={self.workdir}: {e.strerror}; pass a "
                           "writable directory") from e
    for _ in range(50):
      fd = self._open()
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise WorkdirError(f"cannot lock {self.path}: {e.strerror}; the workdir must be on a "
                             "file system that supports file locks") from e
        self._refuse(self._read_holder())
      # The holder may have removed the file between our open and our flock: then we locked an
      # unlinked file that a third run cannot see. Only the file at the path counts.
      try:
        same = os.path.samestat(os.fstat(fd), os.stat(self.path))
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    else:
      raise WorkdirError(f"cannot lock {self.path}: the file keeps being replaced; is another "
                         "program deleting it?")
    try:
      self._take_over(fd)
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd

  def _open(self) -> int:
    try:
      return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
      raise WorkdirError(f"cannot write the lock file {self.path}: {e.strerror}; pass a "
                         "writable --workdir") from e

  def _read_holder(self) -> dict:
    # A run that has just taken the lock may not have written its record yet: retry briefly.
    for _ in range(20):
      try:
        with open(self.path, encoding="utf-8") as f:
          text = f.read()
        if text.strip():
          return json.loads(text)
      except (OSError, ValueError):
        pass
      time.sleep(0.05)
    return {}

  def _refuse(self, holder: dict):
    pid = holder.get("pid")
    stop = f"wait for it to finish or stop it (kill {pid}), " if pid else "wait for it to finish, "
    raise WorkdirLockedError(
        f"--workdir={self.workdir} is in use by another kdjax run ({_describe(holder)}); "
        f"{stop}or pass another --workdir", holder=holder)

  def _take_over(self, fd: int) -> None:
    """Holding the flock: checks any previous record, then writes ours."""
    with os.fdopen(os.dup(fd), "r+", encoding="utf-8") as f:
      text = f.read()
      old = None
      if text.strip():
        try:
          old = json.loads(text)
        except ValueError:
          old = {}
      host = socket.gethostname()
      if old is not None:
        if old.get("host", host) != host:
          raise WorkdirLockedError(
              f"--workdir={self.workdir} has a lock file from a run on another host "
              f"({_describe(old)}) that cannot be checked from {host}; if that run is no longer "
              f"running, remove {self.path} and rerun the same command", holder=old)
        note = ("" if not _pid_alive(old.get("pid")) else
                f" (PID {old.get('pid')} now belongs to another process)")
        warnings.warn(f"{self.path}: taking over the lock of a run that ended without releasing "
                      f"it ({_describe(old)}){note}", RuntimeWarning, stacklevel=3)
      record = {"host": host, "pid": os.getpid(),
                "started": datetime.datetime.now(datetime.timezone.utc).strftime(
                    "%Y-%m-%d %H:%M:%S UTC"),
                "started_unix": time.time()}
      f.seek(0)
      f.truncate()
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def release(self) -> None:
    """Removes the lock file and drops the lock; safe to call more than once."""
    fd, self._fd = self._fd, None
    if fd is None:
      return
    try:
      # Unlink while still holding the lock, so no other run ever reads a file we half own.
      if os.path.samestat(os.fstat(fd), os.stat(self.path)):
        os.unlink(self.path)
    except OSError:
      pass
    finally:
      os.close(fd)
    if self._created_workdir:
      self._created_workdir = False
      try:
        os.rmdir(self.workdir)  # Only if empty: a run refused before writing leaves nothing.
      except OSError:
        pass
