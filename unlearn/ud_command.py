"""``python -m unlearn ud``: Unlearnable Distance of poisoned runs against a clean run.

    python -m unlearn ud --clean runs/clean/sal.csv --poisoned runs/em/sal.csv [runs/x/sal.csv]
        [--checkpoints T] [--json out.json]

Prints one row per poisoned run: beta (from the clean run), #LP clean, #LP poisoned, UD,
the parameter-weighted UD, and UD under the robustness thresholds (3-means upper boundary,
50/75/90th percentiles of the clean SAL values). ``--json`` writes the same rows as a list
of objects (keys ``poisoned``, ``beta``, ``lp_clean``, ``lp_poisoned``, ``ud``,
``ud_weighted`` and the rest of :func:`unlearn.sharpness.ud.ud`).

Multi-task runs: where the clean and the poisoned files both have a ``task`` column, each
task is scored against the same task of the clean run (its own beta), one row per poisoned
file and task, with the key ``task``; the two files must hold the same tasks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

from unlearn.io import write_text_atomic
from unlearn.sharpness.ud import SalTable, SalTableError, sal_tasks, ud


def build_parser() -> ArgumentParser:
    """The subcommand's parser (jsonargparse, so ``--config`` YAML works as for ``fit``)."""
    parser = ArgumentParser(prog="unlearn ud", description=__doc__.split("\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with these options")
    parser.add_argument("--clean", type=str, required=True, help="the clean run's sal.csv")
    parser.add_argument(
        "--poisoned", type=str, required=True, nargs="+", help="poisoned runs' sal.csv"
    )
    parser.add_argument(
        "--checkpoints",
        type=int | None,
        default=None,
        help="use the first T checkpoints of each run (UD(T)); default: all",
    )
    parser.add_argument("--json", type=str | None, default=None, help="also write rows here")
    return parser


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.4g}")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table (one line per poisoned run, or run and task)."""
    variants = [k[3:] for k in rows[0] if k.startswith("ud_") and k != "ud_weighted"]
    tasks = any("task" in row for row in rows)
    header = ["poisoned", *(["task"] if tasks else []), "T", "beta", "#LP clean"]
    header += ["#LP poisoned", "UD", "UD weighted", *(f"UD {v}" for v in variants)]
    lines = [header]
    for row in rows:
        line = [str(row["poisoned"]), *([str(row.get("task", ""))] if tasks else [])]
        line.append(str(row["checkpoints"]))
        line += [_fmt(row[k]) for k in ("beta", "lp_clean", "lp_poisoned", "ud", "ud_weighted")]
        line += [_fmt(row[f"ud_{v}"]) for v in variants]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )


def _write_json(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write atomically (temporary file, then rename); inf/nan become strings."""
    clean = [
        {k: (_fmt(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        for r in rows
    ]
    write_text_atomic(path, json.dumps(clean, indent=2) + "\n")


def run(clean: str, poisoned: Sequence[str], checkpoints: int | None = None) -> list[dict]:
    """UD rows of each poisoned run against the clean run (see :func:`unlearn.sharpness.ud.ud`).

    Where both files are multi-task runs' (a ``task`` column), one row per poisoned run and
    task, each task against the clean run's same task.

    Raises:
        SalTableError: Also where two multi-task files hold different tasks.
    """
    clean_tasks = sal_tasks(clean)
    rows = []
    for path in poisoned:
        tasks = sal_tasks(path)
        if not (clean_tasks and tasks):
            for multi, other, found in ((clean, path, clean_tasks), (path, clean, tasks)):
                if len(found) > 1:
                    raise SalTableError(
                        f"{multi} is a multi-task run's SAL table (tasks {found}), {other} a "
                        "single-task run's: compare multi-task runs with multi-task runs"
                    )
            rows.append(ud(SalTable.read(clean), SalTable.read(path), t=checkpoints))
            continue
        if set(tasks) != set(clean_tasks):
            raise SalTableError(
                f"different task sets: only in {clean}: "
                f"{[t for t in clean_tasks if t not in tasks]}; only in {path}: "
                f"{[t for t in tasks if t not in clean_tasks]}"
            )
        references, tables = SalTable.read_tasks(clean), SalTable.read_tasks(path)
        rows += [ud(references[t], tables[t], t=checkpoints) for t in clean_tasks]
    return rows


def main(args: Sequence[str] | None = None) -> list[dict]:
    """Entry point of ``python -m unlearn ud`` (``args`` without the subcommand name)."""
    cfg = build_parser().parse_args(list(args) if args is not None else None)
    rows = run(cfg.clean, cfg.poisoned, cfg.checkpoints)
    print(format_table(rows))
    if cfg.json is not None:
        _write_json(Path(cfg.json), rows)
    return rows
