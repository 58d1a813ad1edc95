"""Child processes the benchmark owns: they run in their own process group and die with it.

A poison or fit child is started in a new session (its own process group, so a terminal's
Ctrl-C or a kill of the runner's group reaches it only through the runner) and, on Linux,
with ``PR_SET_PDEATHSIG``: the kernel sends it SIGKILL the moment the runner dies, however
the runner dies. When the child ends, times out or the runner is stopped (SIGTERM, SIGHUP,
Ctrl-C), the runner ends the child's whole group (SIGTERM, then SIGKILL after a grace
period), which also ends the child's own children (data loader workers, DDP ranks).

Grandchildren are not covered by the kernel signal (it does not pass to a fork), so every
child also carries the environment variable :data:`MARKER_ENV`; before a cell or poison runs
again, :func:`kill_marked` ends whatever still carries that cell's or poison's marker.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

#: environment variable naming the cell or poison a child process works for
MARKER_ENV = "UNLEARN_BENCHMARK_UNIT"
#: seconds a stopped child's group gets between SIGTERM and SIGKILL
GRACE_SECONDS = 10.0
#: lines of a command's output returned for ``error.json``
TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGKILL when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to the process group; ``False`` when the group no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


def stop_group(process: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """End the child's process group: SIGTERM, up to ``grace`` s to exit, then SIGKILL.

    A child that has already exited has its leftover group members (if any) killed at once:
    the group outlives its leader while a member lives, and its ID is not reused until then.
    """
    if process.poll() is None and _signal_group(process.pid, signal.SIGTERM):
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def run_logged(
    command: list[str], log: Path, timeout: float | None, marker: str
) -> tuple[int, str]:
    """Run ``command`` as an owned child with its output appended to ``log``.

    Args:
        command: the argument vector.
        log: the file stdout and stderr go to; a line ``$ <command>  (pid N)`` starts each run.
        timeout: seconds the child may take (``None``: no limit); then it is stopped.
        marker: value of :data:`MARKER_ENV` in the child's environment.

    Returns:
        The exit code (negative: the signal that ended it; ``-9`` after the timeout) and the
        last :data:`TAIL_LINES` lines of the log.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{MARKER_ENV: marker})
    with open(log, "a", encoding="utf-8") as handle:
        process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
        try:
            # the child writes to the same file; our line goes first (the child is still
            # importing), so a reader sees which run and which PID the lines below belong to
            handle.write(f"$ {shlex.join(command)}  (pid {process.pid})\n")
            handle.flush()
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(process)
            handle.write(f"\n[unlearn benchmark] stopped after the timeout of {timeout} s\n")
            code = -9
        finally:
            stop_group(process)  # leftovers after an exit, or the child on an interruption
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return code, "\n".join(lines[-TAIL_LINES:])


def kill_marked(marker: str) -> int:
    """SIGKILL every other process whose environment has ``MARKER_ENV=marker``; return how many.

    Only the caller's own processes can be read; on systems without ``/proc`` nothing is done.
    Call it only while holding the lock of what ``marker`` names, so that no live runner owns
    the processes it finds.
    """
    wanted = f"{MARKER_ENV}={marker}".encode()
    killed = 0
    proc = Path("/proc")
    if not proc.is_dir():
        return 0
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if wanted in environ.split(b"\0"):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    if killed:
        time.sleep(0.2)  # let the kernel finish them before their files are removed
    return killed


@contextmanager
def exit_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ``SystemExit(128 + signal)`` while the block runs.

    The exception runs the ``finally`` clauses on its way out, so the child being waited for
    is stopped (:func:`stop_group`) and locks are released before the runner exits. Outside
    the main thread (where handlers cannot be set) the block runs unchanged.
    """

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
