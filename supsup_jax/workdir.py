"""One run per workdir: an exclusive lock file holding the owner's pid and host.

``with workdir.lock(path): ...`` holds ``<path>/.lock`` for the body and
releases it on exit, also when the body raises. The file is locked with
``flock`` (the kernel drops the lock when its process dies, however it dies)
and holds ``{"pid", "host", "started"}`` of the holder, so a second process on
the same workdir is refused at once with :class:`WorkdirLockedError` naming
the holder and the lock file. A lock file left behind by a killed process is
stale: its pid is gone and nobody holds the ``flock``, so it is taken over
(with one line on the console).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".lock"

# lock path -> open file descriptor holding the flock (closing it releases).
_HELD: dict[str, int] = {}


class WorkdirLockedError(RuntimeError):
  """Another live process holds the workdir."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


def _read(fd: int) -> dict | None:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    holder = json.loads(os.read(fd, 4096).decode())
    return {"pid": int(holder["pid"]), "host": str(holder["host"])}
  except (OSError, ValueError, KeyError, TypeError):
    return None


def check_workdir(workdir: str | os.PathLike) -> None:
  """One-line errors for a workdir that is a file or cannot be written; creates it."""
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise NotADirectoryError(f"workdir {str(workdir)!r} is a file; pass a directory")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise PermissionError(f"cannot create workdir {str(workdir)!r}: {e.strerror}") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise PermissionError(f"workdir {str(workdir)!r} is not writable; pass a writable directory")


def acquire(path: str | os.PathLike) -> Path:
  """Takes the lock of workdir ``path`` (created if missing); returns the lock path.

  Raises:
    WorkdirLockedError: another process (or this one, already) holds it.
    NotADirectoryError, PermissionError: ``path`` is a file or not writable.
  """
  workdir = Path(path).absolute()
  check_workdir(workdir)
  lock_path = workdir / LOCK_NAME
  if str(lock_path) in _HELD:
    raise WorkdirLockedError(f"workdir {str(workdir)!r} is already locked by this process "
                             f"(pid {os.getpid()}, lock {lock_path}); locks do not nest")
  while True:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read(fd) or {"pid": "?", "host": "?"}
      os.close(fd)
      raise WorkdirLockedError(
          f"workdir {str(workdir)!r} is in use by pid {holder['pid']} on host "
          f"{holder['host']} (lock {lock_path}); wait for that run to end or use "
          "another --workdir") from None
    # The holder may have removed the file between our open and flock: then we
    # locked an orphaned inode and must try again on the new file.
    try:
      same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  stale = _read(fd)
  if stale is not None and stale["pid"] != os.getpid():
    why = ("is gone" if stale["host"] != socket.gethostname() or not _pid_alive(stale["pid"])
           else "no longer holds it")
    print(f"workdir lock {lock_path}: previous holder pid {stale['pid']} on host "
          f"{stale['host']} {why}; taking it over", flush=True)
  record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.time()}).encode()
  os.ftruncate(fd, 0)
  os.pwrite(fd, record, 0)
  os.fsync(fd)
  _HELD[str(lock_path)] = fd
  return lock_path


def release(lock_path: str | os.PathLike) -> None:
  """Removes the lock file and drops the lock, if this process holds it."""
  fd = _HELD.pop(str(Path(lock_path).absolute()), None)
  if fd is None:
    return
  with contextlib.suppress(FileNotFoundError):
    os.remove(lock_path)  # while still holding the flock: no one can slip in
  os.close(fd)


@contextlib.contextmanager
def lock(path: str | os.PathLike) -> Iterator[Path]:
  """``with lock(workdir):`` the body runs holding the workdir; yields the lock path."""
  lock_path = acquire(path)
  try:
    yield lock_path
  finally:
    release(lock_path)
