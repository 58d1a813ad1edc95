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

Settings: where a file has a ``sal.json`` beside it (written by the SAL callback), the clean
and every poisoned run must record the same SAL settings
(:data:`unlearn.sharpness.sidecar.COMPARED`), else the command refuses; a file without one is
used with a warning that its settings cannot be checked.

Diverged runs: a poisoned file with a ``nan`` or ``inf`` SAL gets no UD. Its row says
``diverged`` in the UD columns (in ``--json``: no UD keys, and ``diverged`` with the epoch,
step and layers), a warning line names the file, the epoch and the layers, and the command
exits 1 after printing every row. A clean file with a non-finite value is refused.

Lengths: without ``--checkpoints``, a poisoned run with another number of checkpoints than
the clean run is scored over all of each (#LP is a mean per checkpoint), and a warning line
names both files and both counts; ``--checkpoints T`` compares the first ``T`` of each.

Exit codes: 0 all rows scored; 1 some poisoned run diverged (the table is complete);
2 refused input (a one-line message naming the file: unreadable or non-finite clean file,
different layers, tasks or settings, too few checkpoints).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

from unlearn.errors import ConfigError, UnlearnError, check_number, exit_usage
from unlearn.io import write_text_atomic
from unlearn.sharpness.sidecar import read_sidecar, require_same_settings, unchecked_note
from unlearn.sharpness.ud import SalDivergedError, SalTable, SalTableError, sal_tasks, ud

#: Exit code where a poisoned run diverged (every row is still printed).
EXIT_DIVERGED = 1
#: The key of a diverged run's row (the place of its UD values).
DIVERGED = "diverged"


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
    """The rows as a fixed-width text table (one line per poisoned run, or run and task).

    A diverged run's row shows ``-`` for the clean run's figures and ``diverged`` for its own.
    """
    keys = dict.fromkeys(k for row in rows for k in row)
    variants = [k[3:] for k in keys if k.startswith("ud_") and k != "ud_weighted"]
    tasks = any("task" in row for row in rows)
    header = ["poisoned", *(["task"] if tasks else []), "T", "beta", "#LP clean"]
    header += ["#LP poisoned", "UD", "UD weighted", *(f"UD {v}" for v in variants)]
    lines = [header]
    for row in rows:
        line = [str(row["poisoned"]), *([str(row.get("task", ""))] if tasks else [])]
        line.append(str(row["checkpoints"]))
        if DIVERGED in row:
            line += ["-", "-"] + [DIVERGED] * (3 + len(variants))
        else:
            line += [_fmt(row[k]) for k in ("beta", "lp_clean", "lp_poisoned", "ud", "ud_weighted")]
            line += [_fmt(row.get(f"ud_{v}", math.nan)) for v in variants]
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


def _warn(message: str) -> None:
    print(f"unlearn ud: warning: {message}", file=sys.stderr)


def check_settings(
    clean: str, poisoned: Sequence[str], warn: Callable[[str], None] = _warn
) -> None:
    """Refuse poisoned runs measured with other SAL settings than the clean run.

    Compares the ``sal.json`` beside each file; ``warn`` is told about each file without one.

    Raises:
        SalSettingsError: Naming both sidecars and every differing field.
    """
    reference = read_sidecar(clean)
    if reference is None:
        warn(unchecked_note(clean, "the poisoned runs"))
    for path in poisoned:
        settings = read_sidecar(path)
        if settings is None:
            warn(unchecked_note(path, clean))
        elif reference is not None:
            require_same_settings(settings, path, reference, clean)


def check_lengths(
    clean: SalTable, table: SalTable, checkpoints: int | None, warn: Callable[[str], None]
) -> None:
    """Say where UD compares runs of different numbers of checkpoints (all of each, no ``T``).

    #LP is a mean over each run's own checkpoints, so runs of different lengths still give a
    number, but it compares a whole training with part of another; ``--checkpoints T`` pairs
    the first ``T`` of each.
    """
    theirs, ours = len(clean.checkpoints), len(table.checkpoints)
    if checkpoints is None and theirs != ours:
        task = "" if table.task is None else f" (task {table.task})"
        warn(
            f"{clean.source} has {theirs} checkpoints, {table.source}{task} {ours}: UD compares "
            f"the mean #LP over different training lengths; --checkpoints {min(theirs, ours)} "
            "compares the first checkpoints of each"
        )


def _diverged_row(err: SalDivergedError, clean: str, checkpoints: int) -> dict[str, Any]:
    """The row of a poisoned run (or task) that diverged: no UD, where it diverged."""
    found = err.divergence
    row: dict[str, Any] = {"poisoned": found.source, "clean": clean}
    if found.task is not None:
        row["task"] = found.task
    row["checkpoints"] = checkpoints
    row[DIVERGED] = {"epoch": found.epoch, "step": found.step, "layers": found.layers}
    row["message"] = str(err)
    return row


def run(
    clean: str,
    poisoned: Sequence[str],
    checkpoints: int | None = None,
    warn: Callable[[str], None] = _warn,
) -> list[dict]:
    """UD rows of each poisoned run against the clean run (see :func:`unlearn.sharpness.ud.ud`).

    Where both files are multi-task runs' (a ``task`` column), one row per poisoned run and
    task, each task against the clean run's same task. The settings are checked once every
    table has been read (:func:`check_settings`). A poisoned run (or task) that diverged gets
    a row with the key :data:`DIVERGED` (epoch, step, layers) and ``message`` instead of UD
    values.

    Raises:
        SalTableError: Also where two multi-task files hold different tasks, the settings
            differ, or the clean file has a non-finite value.
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
            pairs = [(SalTable.read(clean), SalTable.read(path))]
        else:
            if set(tasks) != set(clean_tasks):
                raise SalTableError(
                    f"different task sets: only in {clean}: "
                    f"{[t for t in clean_tasks if t not in tasks]}; only in {path}: "
                    f"{[t for t in tasks if t not in clean_tasks]}"
                )
            references, tables = SalTable.read_tasks(clean), SalTable.read_tasks(path)
            pairs = [(references[t], tables[t]) for t in clean_tasks]
        for reference, table in pairs:
            check_lengths(reference, table, checkpoints, warn)
            try:
                rows.append(ud(reference, table, t=checkpoints))
            except SalDivergedError as err:
                used = checkpoints if checkpoints is not None else len(table.checkpoints)
                rows.append(_diverged_row(err, clean, used))
    check_settings(clean, poisoned, warn)  # every file is readable by now
    return rows


def main(args: Sequence[str] | None = None) -> list[dict]:
    """Entry point of ``python -m unlearn ud`` (``args`` without the subcommand name).

    Exits with :data:`unlearn.errors.EXIT_USAGE` on refused input (one line on stderr) and with
    :data:`EXIT_DIVERGED` after the table where a poisoned run diverged.
    """
    cfg = build_parser().parse_args(list(args) if args is not None else None)
    try:
        check_number("", "--checkpoints", cfg.checkpoints, minimum=1)
        if cfg.json is not None and Path(cfg.json).is_dir():
            raise ConfigError(f"--json: '{cfg.json}' is a directory; expected a file to write")
        rows = run(cfg.clean, cfg.poisoned, cfg.checkpoints)
    except UnlearnError as err:
        exit_usage("ud", err)
    print(format_table(rows))
    if cfg.json is not None:
        _write_json(Path(cfg.json), rows)
    diverged = [row for row in rows if DIVERGED in row]
    for row in diverged:
        _warn(row["message"])
    if diverged:
        sys.exit(EXIT_DIVERGED)
    return rows
