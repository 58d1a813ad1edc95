"""``python -m unlearn benchmark``: run, resume, dry-run or report a grid, or one cell of it.

A run of the whole grid, a SLURM array task (``--run_cell N``, ``--run_poison N``), the SLURM
script (``--dry_run``) and the report (``--report_only``) all start here.

Exit codes: 0 when every cell ran or had finished earlier; 1 when a cell (or the one poison
or cell asked for) failed, after the others ran; 2 when the spec or a config it names is
refused (before anything is written) or another runner holds the output directory, the cell
or the poison (:class:`~unlearn.benchmark.lock.LockHeld`, an input error that
:func:`unlearn.cli.main` reports in one line); 130/143/129 after Ctrl-C, SIGTERM or SIGHUP
(rerun the same command to resume).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace

from unlearn.benchmark.check import GridCheck
from unlearn.benchmark.grid import BenchmarkSpec, Layout, SlurmSpec
from unlearn.benchmark.report import write_report
from unlearn.benchmark.runner import FAILED, Runner
from unlearn.benchmark.slurm import write_dry_run
from unlearn.errors import UnlearnError, check_number


def build_parser() -> ArgumentParser:
    """The subcommand's parser: the grid's fields plus how to run it."""
    parser = ArgumentParser(
        prog="python -m unlearn benchmark",
        description="Run a grid of data x model x poison x defense x seed: poison, train with "
        "SAL, test, and report task metrics next to UD. Finished cells are never rerun.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="benchmark YAML")
    parser.add_class_arguments(BenchmarkSpec, nested_key=None, fail_untyped=False)
    # ``--output_dir`` is the spec's field: where cells, poisons and the report go
    parser.add_argument(
        "--dry_run", action=ActionYesNo, nargs="?", default=False,
        help="only check the configs and write the cells' commands and a SLURM script",
    )  # fmt: skip
    parser.add_argument(
        "--report_only", action=ActionYesNo, nargs="?", default=False,
        help="only collect the finished cells into results.csv and report.md",
    )  # fmt: skip
    parser.add_argument(
        "--run_cell", type=int | None, default=None,
        help="run only cell N (1-based, the order of fit_commands.txt): a SLURM array task",
    )  # fmt: skip
    parser.add_argument(
        "--run_poison", type=int | None, default=None,
        help="generate only poison N (1-based, poison_commands.txt): a SLURM array task",
    )  # fmt: skip
    parser.add_argument(
        "--cell_timeout", type=float | None, default=None,
        help="seconds one poison or fit process may take",
    )  # fmt: skip
    return parser


def spec_from(cfg: Namespace) -> BenchmarkSpec:
    """The :class:`BenchmarkSpec` of a parsed command line."""
    values = {f.name: cfg[f.name] for f in fields(BenchmarkSpec)}
    slurm = values["slurm"]
    values["slurm"] = SlurmSpec(**slurm.as_dict()) if slurm is not None else SlurmSpec()
    return BenchmarkSpec(**values)


def layout_of_config(config: str | Path) -> Layout:
    """The layout of a benchmark config's output directory, for scripts that read a grid.

    The spec is checked; the directory is ``output_dir``, default ``runs/benchmark/<name>``.
    """
    spec = spec_from(build_parser().parse_args(["--config", str(config)]))
    spec.check()
    return _layout(spec)


def _layout(spec: BenchmarkSpec) -> Layout:
    return Layout(Path(spec.output_dir or Path("runs") / "benchmark" / spec.name), spec)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m unlearn benchmark``."""
    cfg = build_parser().parse_args(list(args) if args is not None else None)
    modes = [m for m in ("dry_run", "report_only", "run_cell", "run_poison") if cfg[m]]
    if len(modes) > 1:
        raise UnlearnError(f"benchmark: choose one of --{' / --'.join(modes)}")
    check_number("", "--cell_timeout", cfg.cell_timeout, above=0)
    spec = spec_from(cfg)
    spec.check()
    layout = _layout(spec)
    try:
        _run(cfg, layout)
    except KeyboardInterrupt:
        print("unlearn benchmark: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except SystemExit as stop:
        if stop.code in (128 + signal.SIGTERM, 128 + signal.SIGHUP):  # from exit_on_signals
            print(
                f"unlearn benchmark: stopped by {signal.Signals(stop.code - 128).name}; "
                f"rerun the same command to resume",
                file=sys.stderr,
            )
        raise


def _run(cfg: Namespace, layout: Layout) -> None:
    if cfg.dry_run:
        files = write_dry_run(layout, GridCheck(layout), cfg.cell_timeout)
        print("wrote " + ", ".join(str(f) for f in files))
        return
    runner = Runner(layout, timeout=cfg.cell_timeout)
    if cfg.run_cell is not None or cfg.run_poison is not None:
        if cfg.run_cell is not None:
            outcome = runner.run_cell(cfg.run_cell)
        else:
            outcome = runner.run_poison(cfg.run_poison)
        if outcome == FAILED:
            sys.exit(1)
        return
    failed = 0
    if not cfg.report_only:
        runner.check.check(layout.cells())  # bad configs stop here, before the lock file
        print(f"benchmark '{layout.spec.name}': {len(layout.cells())} cells in {layout.root}")
        counts = runner.run()
        failed = counts[FAILED]
        print(f"cells: {counts['done']} finished earlier, {counts['ran']} ran, {failed} failed")
    report = write_report(layout)
    print(f"report: {report}")
    if failed:
        print(
            f"unlearn benchmark: {failed} cell(s) failed; see error.json in their directories "
            f"(and the report's failed cells); rerun to retry them",
            file=sys.stderr,
        )
        sys.exit(1)
