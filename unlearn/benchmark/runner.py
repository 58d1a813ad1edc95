"""Run the cells of a grid one after another in child processes, resumably."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from unlearn.benchmark.grid import Cell, Layout, shell_line
from unlearn.errors import UnlearnError
from unlearn.io import write_json_atomic

#: lines of a failed command's output kept in ``error.json``
ERROR_TAIL_LINES = 40


def run_logged(command: list[str], log: Path, timeout: float | None) -> tuple[int, str]:
    """Run ``command`` with its output appended to ``log``; return (exit code, output tail)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"$ {shell_line(command)}\n")
        handle.flush()
        try:
            code = subprocess.run(
                command, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            handle.write(f"\n[unlearn benchmark] killed after {timeout} s\n")
            code = -9
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return code, "\n".join(lines[-ERROR_TAIL_LINES:])


class Runner:
    """Runs every unfinished cell; a finished cell (its ``metrics.json`` exists) is skipped.

    A poison is generated once and shared by the cells that use it. A cell whose poison or
    fit fails gets an ``error.json`` (command, exit code, output tail) and the next cell
    runs. An interrupted cell's partial run directory is removed before it runs again, so
    its logs start afresh rather than holding a killed run's rows twice.

    Args:
        layout: the benchmark's files.
        timeout: seconds one child process may take (``None``: no limit).
        echo: where progress lines go (``print`` by default).
    """

    def __init__(
        self, layout: Layout, timeout: float | None = None, echo: Callable[[str], None] = print
    ) -> None:
        self.layout = layout
        self.timeout = timeout
        self.echo = echo
        self._poison_errors: dict[Path, dict] = {}

    def run(self) -> dict[str, int]:
        """Run the grid; return counts of ``done`` (before), ``ran``, ``failed`` cells."""
        cells = self.layout.cells()
        counts = {"done": 0, "ran": 0, "failed": 0}
        for i, cell in enumerate(cells, 1):
            prefix = f"[{i}/{len(cells)}] {cell.id}"
            if self.layout.metrics_file(cell).is_file():
                counts["done"] += 1
                self.echo(f"{prefix}: finished earlier, skipped")
                continue
            start = time.perf_counter()
            error = self._run_cell(cell)
            seconds = time.perf_counter() - start
            if error is None:
                counts["ran"] += 1
                self.layout.error_file(cell).unlink(missing_ok=True)
                self.echo(f"{prefix}: done in {seconds:.0f} s")
            else:
                counts["failed"] += 1
                write_json_atomic(self.layout.error_file(cell), {**error, "seconds": seconds})
                self.echo(f"{prefix}: FAILED ({error['step']}, exit {error['returncode']})")
        return counts

    def _run_cell(self, cell: Cell) -> dict | None:
        try:
            poison = self.layout.poison_dir(cell)
        except UnlearnError as err:  # a missing poison config: recorded, the grid goes on
            return {"step": "poison", "command": "", "returncode": None, "output": str(err)}
        if poison is not None:
            error = self._ensure_poison(cell, poison)
            if error is not None:
                return error
        run_dir = self.layout.run_dir(cell)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        command = self.layout.fit_command(cell)
        code, tail = run_logged(command, self.layout.cell_dir(cell) / "fit.log", self.timeout)
        if code != 0 or not self.layout.metrics_file(cell).is_file():
            return {
                "step": "fit",
                "command": shell_line(command),
                "returncode": code,
                "output": tail,
            }
        return None

    def _ensure_poison(self, cell: Cell, poison: Path) -> dict | None:
        if (poison / "poison.pt").is_file() and (poison / "meta.json").is_file():
            return None
        if poison in self._poison_errors:
            return self._poison_errors[poison]
        command = self.layout.poison_command(cell)
        assert command is not None
        self.echo(f"  generating poison {poison.name}")
        start = time.perf_counter()
        code, tail = run_logged(command, poison.parent / f"{poison.name}.log", self.timeout)
        if code != 0 or not (poison / "poison.pt").is_file():
            error = {
                "step": "poison",
                "command": shell_line(command),
                "returncode": code,
                "output": tail,
            }
            self._poison_errors[poison] = error
            return error
        timing = poison.parent / f"{poison.name}.seconds.json"
        write_json_atomic(timing, {"seconds": time.perf_counter() - start})
        return None


def load_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` if the file does not exist."""
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
