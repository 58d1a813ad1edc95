"""Advisory locks that keep two benchmark runners off the same grid, cell or poison."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from unlearn.errors import UnlearnError

#: bytes of the PID record at the start of a lock file (fixed width: rewritten in place)
_PID_WIDTH = 12


class LockHeld(UnlearnError):
    """Another process holds the lock; the message names the locked thing and its PID."""


class FileLock:
    """``fcntl.flock`` on ``path``, held from :meth:`acquire` until :meth:`release`.

    The lock belongs to the open file, so it ends with the process that holds it, however
    that process ends (a SIGKILL included): a stale lock file never blocks a rerun. Its
    descriptor is not inherited by child processes (Python opens files close-on-exec), so a
    child that outlives its runner does not keep the lock either. The holder writes its PID
    into the file for the message a refused process prints.

    Args:
        path: the lock file (created with its directory if missing).
        what: what the lock protects, for the message (e.g. ``"output directory 'runs/x'"``).
        shared: a shared lock (many holders, no exclusive one) instead of an exclusive one.
    """

    def __init__(self, path: Path, what: str, shared: bool = False) -> None:
        self.path = path
        self.what = what
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting; raise :class:`LockHeld` when another process has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            by = f"PID {holder}" if holder else "another process"
            raise LockHeld(
                f"{self.what} is in use by another benchmark runner ({by}; lock file "
                f"'{self.path}'); wait for it to end or stop it, then rerun"
            ) from None
        os.pwrite(fd, f"{os.getpid():<{_PID_WIDTH - 1}}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock back (closing the file ends it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    """The PID the holder wrote, or ``None`` when the file holds none."""
    text = os.pread(fd, _PID_WIDTH, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
