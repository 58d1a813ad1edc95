"""Run a grid's cells and poisons in owned child processes, resumably.

One code path serves a local run of the whole grid and the SLURM array tasks that run one cell
or one poison each.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from unlearn.benchmark.check import GridCheck
from unlearn.benchmark.child import exit_on_signals, kill_marked, run_logged
from unlearn.benchmark.grid import Cell, Layout, shell_line
from unlearn.benchmark.lock import FileLock
from unlearn.benchmark.slurm import srun_prefix
from unlearn.data.poison_store import META_FILE, POISON_FILE
from unlearn.errors import UnlearnError
from unlearn.io import write_json_atomic

#: outcomes of one cell or poison
DONE, RAN, FAILED = "done", "ran", "failed"


class Runner:
    """Runs unfinished cells; a finished cell (its ``metrics.json`` exists) is skipped.

    Every config the cells name is parsed before the first one runs (:class:`GridCheck`).
    A poison is generated once and shared by the cells that use it; an existing poison is
    never made again. A cell whose poison or fit fails gets an ``error.json`` (command, exit
    code, output tail) and the next cell runs. A killed cell's partial run directory (and
    any process still working for it) is removed before the cell runs again, so its logs
    start afresh rather than holding a killed run's rows twice.

    Locks: a run of the whole grid holds ``benchmark.lock`` exclusively; an array task
    (:meth:`run_cell`, :meth:`run_poison`) shares it and holds its cell's or poison's lock,
    so array tasks run side by side but never two on one cell, and never next to a local run.

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
        self.check = GridCheck(layout)
        self._poison_errors: dict[Path, dict] = {}

    def run(self) -> dict[str, int]:
        """Run the grid; return counts of cells ``done`` (before), ``ran``, ``failed``."""
        cells = self.layout.cells()
        counts = {DONE: 0, RAN: 0, FAILED: 0}
        with ExitStack() as stack:
            stack.enter_context(self._grid_lock(shared=False))
            stack.enter_context(exit_on_signals())
            self.check.check(cells)
            for i, cell in enumerate(cells, 1):
                counts[self._cell(cell, f"[{i}/{len(cells)}] {cell.id}", make_poison=True)] += 1
        return counts

    def run_cell(self, number: int) -> str:
        """Run the ``number``-th cell (1-based) alone, poison made before; return the outcome."""
        cells = self.layout.cells()
        cell = _numbered(cells, number, "--run_cell", "cells")
        with ExitStack() as stack:
            stack.enter_context(self._grid_lock(shared=True))
            stack.enter_context(
                FileLock(self.layout.cell_lock(cell), f"cell '{self.layout.cell_dir(cell)}'")
            )
            stack.enter_context(exit_on_signals())
            self.check.check([cell])
            return self._cell(cell, f"[cell {number}/{len(cells)}] {cell.id}", make_poison=False)

    def run_poison(self, number: int) -> str:
        """Make the ``number``-th poison (1-based, :meth:`Layout.poisons`); return the outcome."""
        poisons = self.layout.poisons()
        cell = _numbered(poisons, number, "--run_poison", "poisons")
        poison = self.layout.poison_dir(cell)
        assert poison is not None
        prefix = f"[poison {number}/{len(poisons)}] {poison.name}"
        with ExitStack() as stack:
            stack.enter_context(self._grid_lock(shared=True))
            stack.enter_context(FileLock(self.layout.poison_lock(poison), f"poison '{poison}'"))
            stack.enter_context(exit_on_signals())
            self.check.poison(cell)
            if _poison_ready(poison):
                self.echo(f"{prefix}: exists, skipped")
                return DONE
            error = self._make_poison(cell, poison)
        if error is not None:
            self.echo(f"{prefix}: FAILED (exit {error['returncode']}), see {error['log']}")
            return FAILED
        self.echo(f"{prefix}: done")
        return RAN

    def _grid_lock(self, shared: bool) -> FileLock:
        return FileLock(
            self.layout.lock_file(), f"output directory '{self.layout.root}'", shared=shared
        )

    def _cell(self, cell: Cell, prefix: str, make_poison: bool) -> str:
        if self.layout.metrics_file(cell).is_file():
            self.echo(f"{prefix}: finished earlier, skipped")
            return DONE
        self.layout.error_file(cell).unlink(missing_ok=True)  # pending while it runs again
        start = time.perf_counter()
        error = self._poison_for(cell, make_poison) or self._fit(cell)
        seconds = time.perf_counter() - start
        if error is None:
            self.echo(f"{prefix}: done in {seconds:.0f} s")
            return RAN
        error.pop("log", None)
        write_json_atomic(self.layout.error_file(cell), {**error, "seconds": seconds})
        self.echo(f"{prefix}: FAILED ({error['step']}, exit {error['returncode']})")
        return FAILED

    def _poison_for(self, cell: Cell, make: bool) -> dict | None:
        """``None`` when the cell's poison exists (or it needs none), else the error."""
        poison = self.layout.poison_dir(cell)
        if poison is None or _poison_ready(poison):
            return None
        if make:
            return self._make_poison(cell, poison)
        number = self.layout.poison_number(cell)
        log = self.layout.poison_log(poison)
        tail = log.read_text(errors="replace").splitlines()[-20:] if log.is_file() else []
        message = (
            f"poison '{poison}' does not exist: its task (--run_poison {number}) has not run "
            f"or failed; see '{log}'"
        )
        return {
            "step": "poison",
            "command": shell_line(self.layout.poison_command(cell) or []),
            "returncode": None,
            "output": "\n".join([message, *tail]),
        }

    def _make_poison(self, cell: Cell, poison: Path) -> dict | None:
        if poison in self._poison_errors:  # failed once in this run: not tried again
            return dict(self._poison_errors[poison])
        command = self.layout.poison_command(cell)
        assert command is not None
        self.echo(f"  generating poison {poison.name}")
        marker = str(poison.resolve())
        kill_marked(marker)  # a killed runner's leftovers must not write next to this run
        log = self.layout.poison_log(poison)
        earlier = _earlier_meta(poison)
        start = time.perf_counter()
        code, tail = run_logged(command, log, self.timeout, marker)
        if code != 0 or not _poison_ready(poison):
            error = {
                "step": "poison",
                "command": shell_line(command),
                "returncode": code,
                "output": tail,
                "log": str(log),
            }
            self._poison_errors[poison] = error
            return dict(error)
        write_json_atomic(
            self.layout.poison_timing(poison), {"seconds": time.perf_counter() - start}
        )
        if earlier is not None:
            self._record_remake(poison, earlier)
        return None

    def _record_remake(self, poison: Path, earlier: dict) -> None:
        """Compare a poison made again with the ``meta.json`` an earlier make left.

        A later session on a fresh machine makes a poison again (``poison.pt`` is not
        committed, its ``meta.json`` is): the cells finished before used the earlier one. The
        record ``<poison>.remade.json`` holds the earlier digest and whether the two match;
        the runner warns when they differ or cannot be compared.
        """
        meta = json.loads((poison / META_FILE).read_text())
        before, now = earlier.get("delta_sha256"), meta.get("delta_sha256")
        identical = None if before is None or now is None else before == now
        # beside the store, not in meta.json: that must equal the meta inside poison.pt
        record = {
            "earlier_created": earlier.get("created"),
            "earlier_delta_sha256": before,
            "identical": identical,
        }
        write_json_atomic(poison.parent / f"{poison.name}.remade.json", record)
        when = earlier.get("created", "an unknown time")
        if identical is None:
            self.echo(
                f"  WARNING: poison {poison.name} was made again; the earlier one (made "
                f"{when}) recorded no delta_sha256, so whether the cells finished with it "
                "used the same perturbation cannot be told"
            )
        elif not identical:
            self.echo(
                f"  WARNING: poison {poison.name} was made again and differs from the one "
                f"made {when} (delta_sha256 {before[:12]} -> {now[:12]}): the cells "
                "finished before used the earlier perturbation"
            )

    def _fit(self, cell: Cell) -> dict | None:
        poison = self.layout.poison_dir(cell)
        # read before the fit: the poison the fit loads (a poison is never remade under it)
        used = None if poison is None else poison_record(poison)
        marker = str(self.layout.cell_dir(cell).resolve())
        kill_marked(marker)  # a killed runner's leftovers must not write next to this run
        run_dir = self.layout.run_dir(cell)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        command = srun_prefix(self.check.fit_footprint(cell)) + self.layout.fit_command(cell)
        code, tail = run_logged(command, self.layout.fit_log(cell), self.timeout, marker)
        if code != 0 or not self.layout.metrics_file(cell).is_file():
            return {
                "step": "fit",
                "command": shell_line(command),
                "returncode": code,
                "output": tail,
            }
        if used is not None:
            write_json_atomic(self.layout.poison_used_file(cell), used)
        return None


def poison_record(poison: Path) -> dict:
    """What a cell records of the poison it trains on, from the poison's ``meta.json``.

    Keys: ``poison`` (the directory's name), ``delta_sha256`` (``None`` for a poison made
    before stores held it) and ``created``. A grid that spans machines makes its poisons
    again on each (``poison.pt`` is not committed), and a poison made again on another
    machine can differ, so each cell says which one it used.
    """
    meta = load_json(poison / META_FILE) or {}
    return {
        "poison": poison.name,
        "delta_sha256": meta.get("delta_sha256"),
        "created": meta.get("created"),
    }


def _poison_ready(poison: Path) -> bool:
    return (poison / POISON_FILE).is_file() and (poison / META_FILE).is_file()


def _earlier_meta(poison: Path) -> dict | None:
    """The ``meta.json`` of an earlier make whose ``poison.pt`` is gone, else ``None``."""
    if (poison / POISON_FILE).is_file():
        return None
    try:
        meta = load_json(poison / META_FILE)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _numbered(items: list[Cell], number: int, flag: str, what: str) -> Cell:
    if not 1 <= number <= len(items):
        raise UnlearnError(
            f"benchmark: {flag} {number}: the grid has {len(items)} {what} "
            f"(numbered 1-{len(items)})"
        )
    return items[number - 1]


def load_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` if the file does not exist."""
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
