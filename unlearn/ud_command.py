"""``python -m unlearn ud``: Unlearnable Distance of poisoned runs against a clean run.

    python -m unlearn ud --clean runs/clean/sal.csv --poisoned runs/em/sal.csv [runs/x/sal.csv]
        [--checkpoints T] [--json out.json]
    python -m unlearn ud --clean clean_s0.csv clean_s1.csv clean_s2.csv --poisoned em_s0.csv
        [em_s1.csv em_s2.csv] [--pair_by_order true] [--alternative less] [--alpha 0.05]

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

Noise floor (several ``--clean`` files, single-task runs): the floor is the UD of every clean
run against every other (all ordered pairs, :mod:`unlearn.sharpness.floor`); the command
prints its values, mean, min and max, then the rows (a ``clean`` column says which reference),
then a verdict per condition: ``below floor (p=...)``, ``above floor (p=...)`` or ``within
floor (p=...)``, from the exact permutation test of the difference of means of the
condition's UDs and the floor's (``--alternative`` ``two-sided`` (default), ``less`` or
``greater``; at ``--alpha``, default 0.05). A condition is, by default, each poisoned file
with its UDs against every clean run; with ``--pair_by_order true`` the poisoned files are
the seeds of one condition, poisoned file ``i`` is scored against clean file ``i`` only (the
benchmark's convention: the same seed) and there is one verdict for all of them. ``--json``
then writes an object: ``floor`` (``pairs``, ``values``, ``mean``, ``min``, ``max``),
``rows`` and ``verdicts``. One ``--clean`` file: no floor, the output is as above.

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
from typing import Any, cast

from jsonargparse import ActionConfigFile, ArgumentParser

from unlearn.errors import ConfigError, UnlearnError, check_choice, check_number, exit_usage
from unlearn.io import write_text_atomic
from unlearn.sharpness.floor import ALTERNATIVES, Alternative, floor_pairs, verdict
from unlearn.sharpness.sidecar import read_sidecar, require_same_settings, unchecked_note
from unlearn.sharpness.ud import (
    SAL_VALUES,
    SalDivergedError,
    SalTable,
    SalTableError,
    sal_tasks,
    ud,
)

#: Exit code where a poisoned run diverged (every row is still printed).
EXIT_DIVERGED = 1
#: The key of a diverged run's row (the place of its UD values).
DIVERGED = "diverged"


def build_parser() -> ArgumentParser:
    """The subcommand's parser (jsonargparse, so ``--config`` YAML works as for ``fit``)."""
    parser = ArgumentParser(prog="unlearn ud", description=__doc__.split("\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with these options")
    # untyped: a config file may give one path (a string) or a list
    parser.add_argument(
        "--clean",
        nargs="+",
        required=True,
        help="the clean run's sal.csv; several (one per seed): also the noise floor",
    )
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
    parser.add_argument(
        "--pair_by_order",
        type=bool,
        default=False,
        help="several --clean: score poisoned file i against clean file i only (same seed); "
        "one verdict for all poisoned files",
    )
    parser.add_argument(
        "--alternative",
        type=str,
        default="two-sided",
        help=f"direction of the floor test, one of {ALTERNATIVES}",
    )
    parser.add_argument("--alpha", type=float, default=0.05, help="level of the floor test")
    parser.add_argument(
        "--sal_value",
        type=str,
        default="sal",
        help=f"what UD counts, one of {list(SAL_VALUES)}: the paper's SAL, or the exploratory "
        "scale-free SAL / (L0 + 1) (its own beta and floor)",
    )
    return parser


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.4g}")


def _columns(lines: Sequence[Sequence[str]]) -> str:
    """Lines of cells as left-aligned columns two spaces apart."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table (one line per poisoned run, or run and task).

    A diverged run's row shows ``-`` for the clean run's figures and ``diverged`` for its own.
    Where the rows have more than one clean reference, a ``clean`` column names each row's.
    """
    keys = dict.fromkeys(k for row in rows for k in row)
    variants = [k[3:] for k in keys if k.startswith("ud_") and k != "ud_weighted"]
    tasks = any("task" in row for row in rows)
    cleans = len({row["clean"] for row in rows}) > 1
    header = ["poisoned", *(["clean"] if cleans else []), *(["task"] if tasks else [])]
    header += ["T", "beta", "#LP clean"]
    header += ["#LP poisoned", "UD", "UD weighted", *(f"UD {v}" for v in variants)]
    lines = [header]
    for row in rows:
        line = [str(row["poisoned"]), *([str(row["clean"])] if cleans else [])]
        line += [str(row.get("task", ""))] if tasks else []
        line.append(str(row["checkpoints"]))
        if DIVERGED in row:
            line += ["-", "-"] + [DIVERGED] * (3 + len(variants))
        else:
            line += [_fmt(row[k]) for k in ("beta", "lp_clean", "lp_poisoned", "ud", "ud_weighted")]
            line += [_fmt(row.get(f"ud_{v}", math.nan)) for v in variants]
        lines.append(line)
    return _columns(lines)


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth) as its string ``inf``/``nan``."""
    if isinstance(value, float) and not math.isfinite(value):
        return _fmt(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_json(path: Path, rows: list[dict[str, Any]] | dict[str, Any]) -> None:
    """Write atomically (temporary file, then rename); inf/nan become strings."""
    write_text_atomic(path, json.dumps(_json_safe(rows), indent=2) + "\n")


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
    value: str = "sal",
) -> list[dict]:
    """UD rows of each poisoned run against the clean run (see :func:`unlearn.sharpness.ud.ud`).

    ``value`` is what UD counts (:data:`unlearn.sharpness.ud.SAL_VALUES`).

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
            pairs = [(SalTable.read(clean, value=value), SalTable.read(path, value=value))]
        else:
            if set(tasks) != set(clean_tasks):
                raise SalTableError(
                    f"different task sets: only in {clean}: "
                    f"{[t for t in clean_tasks if t not in tasks]}; only in {path}: "
                    f"{[t for t in tasks if t not in clean_tasks]}"
                )
            references = SalTable.read_tasks(clean, value)
            tables = SalTable.read_tasks(path, value)
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


def _single_task(path: str, value: str = "sal") -> SalTable:
    """The table of a single-task run's file (the noise floor takes no multi-task runs)."""
    tasks = sal_tasks(path)
    if len(tasks) > 1:
        raise SalTableError(
            f"{path} is a multi-task run's SAL table (tasks {tasks}); the noise floor (several "
            "--clean files) takes single-task runs: give one --clean file per task instead"
        )
    return SalTable.read(path, value=value)


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def run_floor(
    cleans: Sequence[str],
    poisoned: Sequence[str],
    checkpoints: int | None = None,
    pair_by_order: bool = False,
    alternative: str = "two-sided",
    alpha: float = 0.05,
    warn: Callable[[str], None] = _warn,
    value: str = "sal",
) -> dict[str, Any]:
    """The noise floor of the clean runs, the poisoned runs' UD rows and their verdicts.

    Args:
        cleans: Clean runs' ``sal.csv`` (at least 2, distinct; single-task runs).
        poisoned: Poisoned runs' ``sal.csv``.
        checkpoints: ``UD(T)`` of the first ``T`` checkpoints everywhere (floor included).
        pair_by_order: Score poisoned ``i`` against clean ``i`` only (as many of each); one
            verdict for all of them. Otherwise each poisoned file against every clean run,
            one verdict per poisoned file.
        alternative: ``two-sided``, ``less`` or ``greater`` (:func:`~unlearn.sharpness.floor.
            permutation_test`).
        alpha: The test's level.
        warn: Told about files without settings and runs of different lengths.
        value: What UD counts (:data:`unlearn.sharpness.ud.SAL_VALUES`); the floor too.

    Returns:
        ``{"floor": {"pairs": [{"poisoned", "clean", "ud"}], "values", "mean", "min",
        "max"}, "rows": [UD rows as in :func:`run`], "verdicts": [{"poisoned": [files],
        "n", "values", "mean", "alternative", "alpha", "verdict", "p"}]}``; a condition whose
        runs all diverged has the verdict ``diverged`` and ``p`` None.

    Raises:
        UnlearnError: Fewer than 2 or repeated clean files, unequal counts where paired, a
            multi-task file, a clean file with a non-finite value, a non-finite floor UD,
            different settings or layers (each naming the file or option).
    """
    check_number("", "--alpha", alpha, above=0, below=1)
    if alternative not in ALTERNATIVES:
        raise ConfigError(f"--alternative: expected one of {ALTERNATIVES}; found {alternative!r}")
    if len(cleans) < 2:
        raise ConfigError(
            f"--clean: a noise floor needs at least 2 clean files; found {len(cleans)}"
        )
    seen: dict[Path, str] = {}
    for path in cleans:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise ConfigError(
                f"--clean: {path} is the same file as {seen[resolved]}; the floor needs distinct "
                "clean runs"
            )
        seen[resolved] = path
    if pair_by_order and len(poisoned) != len(cleans):
        raise ConfigError(
            f"--pair_by_order: pairs poisoned file i with clean file i; expected as many "
            f"--poisoned as --clean files ({len(cleans)}); found {len(poisoned)}"
        )
    references = [_single_task(path, value) for path in cleans]
    for table in references[1:]:
        check_lengths(references[0], table, checkpoints, warn)
    pairs = floor_pairs(references, checkpoints)
    values = [v for _, _, v in pairs]
    floor = {
        "pairs": [{"poisoned": cleans[i], "clean": cleans[j], "ud": v} for i, j, v in pairs],
        "values": values,
        **_summary(values),
    }
    tables = [_single_task(path, value) for path in poisoned]
    if pair_by_order:
        groups = [list(zip(tables, references, strict=True))]
    else:
        groups = [[(table, reference) for reference in references] for table in tables]
    rows: list[dict[str, Any]] = []
    verdicts = []
    for group in groups:
        scored = []
        for table, reference in group:
            check_lengths(reference, table, checkpoints, warn)
            try:
                row = ud(reference, table, t=checkpoints)
            except SalDivergedError as err:
                used = checkpoints if checkpoints is not None else len(table.checkpoints)
                row = _diverged_row(err, reference.source, used)
            else:
                scored.append(float(row["ud"]))
            rows.append(row)
        found: dict[str, Any] = {
            "poisoned": list(dict.fromkeys(table.source for table, _ in group)),
            "n": len(scored),
            "values": scored,
            "mean": sum(scored) / len(scored) if scored else math.nan,
            "alternative": alternative,
            "alpha": alpha,
        }
        if scored:
            test = cast(Alternative, alternative)  # checked above
            found["verdict"], found["p"] = verdict(scored, values, test, alpha)
        else:
            found["verdict"], found["p"] = DIVERGED, None
        verdicts.append(found)
    check_settings(cleans[0], [*cleans[1:], *poisoned], warn)
    return {"floor": floor, "rows": rows, "verdicts": verdicts}


def format_floor(result: dict[str, Any]) -> str:
    """The text of :func:`run_floor`'s result: the floor, the rows, the verdicts."""
    floor = result["floor"]
    lines = [f"noise floor: UD of each clean run against each other ({len(floor['values'])} "
             "ordered pairs)"]  # fmt: skip
    lines.append(
        _columns([["clean", "against clean", "UD"]]
                 + [[p["poisoned"], p["clean"], _fmt(p["ud"])] for p in floor["pairs"]])
    )  # fmt: skip
    lines.append(
        f"floor: mean {_fmt(floor['mean'])}, min {_fmt(floor['min'])}, max {_fmt(floor['max'])}"
    )
    lines += ["", format_table(result["rows"]), ""]
    first = result["verdicts"][0]
    lines.append(
        f"verdict: permutation test of mean UD - mean floor ({first['alternative']}, "
        f"alpha {first['alpha']:g})"
    )
    table = [["poisoned", "n", "mean UD", "verdict"]]
    for found in result["verdicts"]:
        text = found["verdict"]
        if found["p"] is not None:
            text += f" (p={found['p']:.3g})"
        table.append([", ".join(found["poisoned"]), str(found["n"]), _fmt(found["mean"]), text])
    lines.append(_columns(table))
    return "\n".join(lines)


def main(args: Sequence[str] | None = None) -> list[dict] | dict[str, Any]:
    """Entry point of ``python -m unlearn ud`` (``args`` without the subcommand name).

    Exits with :data:`unlearn.errors.EXIT_USAGE` on refused input (one line on stderr) and with
    :data:`EXIT_DIVERGED` after the table where a poisoned run diverged.

    Returns:
        The rows (one ``--clean`` file); the result of :func:`run_floor` (several, or
        ``--pair_by_order true``).
    """
    cfg = build_parser().parse_args(list(args) if args is not None else None)
    cleans = [cfg.clean] if isinstance(cfg.clean, str) else [str(c) for c in cfg.clean]
    result: list[dict] | dict[str, Any]
    try:
        check_number("", "--checkpoints", cfg.checkpoints, minimum=1)
        if cfg.json is not None and Path(cfg.json).is_dir():
            raise ConfigError(f"--json: '{cfg.json}' is a directory; expected a file to write")
        check_choice("ud", "--sal_value", cfg.sal_value, SAL_VALUES)
        if len(cleans) == 1 and not cfg.pair_by_order:
            result = rows = run(cleans[0], cfg.poisoned, cfg.checkpoints, value=cfg.sal_value)
        else:
            result = run_floor(cleans, cfg.poisoned, cfg.checkpoints, cfg.pair_by_order,
                               cfg.alternative, cfg.alpha, value=cfg.sal_value)  # fmt: skip
            rows = result["rows"]
    except UnlearnError as err:
        exit_usage("ud", err)
    print(format_table(rows) if isinstance(result, list) else format_floor(result))
    if cfg.json is not None:
        _write_json(Path(cfg.json), result)
    diverged = [row for row in rows if DIVERGED in row]
    for row in diverged:
        _warn(row["message"])
    if diverged:
        sys.exit(EXIT_DIVERGED)
    return result
