"""``python -m unlearn benchmark``: run a grid, resume it, or write its report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from unlearn.benchmark.grid import BenchmarkSpec, Layout
from unlearn.benchmark.report import write_report
from unlearn.benchmark.runner import Runner
from unlearn.benchmark.slurm import write_dry_run


def build_parser() -> ArgumentParser:
    """The subcommand's parser: the grid's fields plus how to run it."""
    parser = ArgumentParser(
        prog="python -m unlearn benchmark",
        description="Run a grid of data x model x poison x defense x seed: poison, train with "
        "SAL, test, and report task metrics next to UD. Finished cells are never rerun.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="benchmark YAML")
    parser.add_class_arguments(BenchmarkSpec, nested_key=None, fail_untyped=False)
    parser.add_argument(
        "--output_dir", type=str | None, default=None,
        help="where cells, poisons and the report go (default runs/benchmark/<name>)",
    )  # fmt: skip
    parser.add_argument(
        "--dry_run", type=bool, default=False,
        help="only write the cells' commands and a SLURM job-array script",
    )  # fmt: skip
    parser.add_argument(
        "--report_only", type=bool, default=False,
        help="only collect the finished cells into results.csv and report.md",
    )  # fmt: skip
    parser.add_argument(
        "--cell_timeout", type=float | None, default=None,
        help="seconds one poison or fit process may take",
    )  # fmt: skip
    return parser


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m unlearn benchmark``."""
    parser = build_parser()
    cfg = parser.parse_args(list(args) if args is not None else None)
    spec = BenchmarkSpec(**{f.name: cfg[f.name] for f in fields(BenchmarkSpec)})
    spec.check()
    root = Path(cfg.output_dir or Path("runs") / "benchmark" / spec.name)
    layout = Layout(root, spec)
    config_name = str(cfg.config[0]) if cfg.get("config") else "<benchmark.yaml>"
    if cfg.dry_run:
        files = write_dry_run(Layout(root, spec, python="python"), config_name)
        print("wrote " + ", ".join(str(f) for f in files))
        return
    if not cfg.report_only:
        cells = layout.cells()
        print(f"benchmark '{spec.name}': {len(cells)} cells in {root}")
        counts = Runner(layout, timeout=cfg.cell_timeout).run()
        print(
            f"cells: {counts['done']} finished earlier, {counts['ran']} ran, "
            f"{counts['failed']} failed"
        )
    report = write_report(layout)
    print(f"report: {report}")
