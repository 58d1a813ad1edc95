"""Collect a benchmark's finished cells into ``results.csv``, ``report.md`` and figures.

Each cell has three UD measures (:data:`~unlearn.benchmark.measures.MEASURES`), each against the
clean cell of the same data, model, defense and seed: the headline count UD of ``sal.csv``
(``ud``), and the exploratory count UDs of ``sal_heldout.csv`` (``ud_heldout``: SAL on clean
held-out images) and of SAL / (L0 + 1) from ``sal.csv`` (``ud_scale_free``).

Also the noise floor of each measure and (data, model, defense) with at least two clean
seeds: the UD of every clean seed against every other (:mod:`unlearn.sharpness.floor`), and
per method the permutation test of its seeds' UDs against it, in ``floor.csv`` and the
report's "Noise floor" section; and the answers to the spec's pre-registered hypotheses
(:mod:`unlearn.benchmark.hypotheses`).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from unlearn.benchmark.grid import CLEAN, Cell, Layout
from unlearn.benchmark.hypotheses import (
    Answer,
    evaluate,
    finite_values,
    hypotheses_section,
    ud_accuracy_spearman,
)
from unlearn.benchmark.measures import MEASURES
from unlearn.benchmark.runner import load_json
from unlearn.errors import UnlearnError
from unlearn.io import write_text_atomic
from unlearn.sharpness.floor import noise_floor, permutation_test, verdict
from unlearn.sharpness.ud import SalDivergedError, SalTable, ud

#: UD threshold variants, as ``(column suffix, label)``; "" is the 2-means beta
THRESHOLDS = (("", "2-means"), ("_3means", "3-means"), ("_p50", "p50"), ("_p75", "p75"),
              ("_p90", "p90"))  # fmt: skip
#: results.csv columns of the robustness table, headline first: (column, heading)
VARIANTS = (("ud", "2-means (headline)"), ("ud_weighted", "2-means, parameter-weighted"),
            *((f"ud{suffix}", title) for suffix, title in THRESHOLDS[1:]))  # fmt: skip
KEY_COLUMNS = ["data", "model", "method", "defense", "seed"]
#: The ``ud`` of a cell whose SAL is nan/inf (a diverged training)
DIVERGED = "diverged"
RESULT_COLUMNS = [
    *KEY_COLUMNS,
    "status",
    "test_acc",
    "test_loss",
    "val_acc",
    "epochs",
    "ud",
    "ud_weighted",
    "lp_clean",
    "lp_poisoned",
    "beta",
    *[f"ud{suffix}" for suffix, _ in THRESHOLDS[1:]],
    *[f"beta{suffix}" for suffix, _ in THRESHOLDS[1:]],
    "fit_seconds",
    "poison_seconds",
    "error",
    MEASURES["heldout"].column,
    MEASURES["scale_free"].column,
    "poison_sha256",
    "poison_created",
]

#: Level of the noise-floor test (one-sided "less", the pre-registered direction of H1)
FLOOR_ALPHA = 0.05
FLOOR_COLUMNS = [
    "measure",
    "data",
    "model",
    "defense",
    "method",
    "n",
    "ud_mean",
    "floor_n",
    "floor_mean",
    "floor_min",
    "floor_max",
    "p_less",
    "p_two_sided",
    "verdict",
]


def sal_path(layout: Layout, cell: Cell, measure: str = "headline") -> Path:
    """The SAL file of a cell's measure: ``sal.csv`` or the file beside it."""
    return layout.sal_file(cell).with_name(MEASURES[measure].sal_file)


def _sal_table(layout: Layout, cell: Cell, measure: str = "headline") -> SalTable | None:
    """The cell's table of ``measure``; None where its file is absent or unreadable.

    A diverged run's probe loss L0 may be nan too, which the scale-free values refuse: its
    plain SAL table is returned then, whose nan/inf makes its UD ``diverged`` as the
    headline's is, not missing.
    """
    path = sal_path(layout, cell, measure)
    if not path.is_file():
        return None
    value = MEASURES[measure].value
    try:
        return SalTable.read(path, value=value)
    except UnlearnError:
        if value == "sal":
            return None
    try:
        table = SalTable.read(path)
    except UnlearnError:
        return None
    return table if table.divergence() is not None else None


def _add_ud(row: dict[str, Any], measure: str, clean: SalTable | None,
            mine: SalTable | None) -> None:  # fmt: skip
    """Write a measure's UD (and, for the headline, its other counts) into ``row``.

    Nothing where either table is missing; :data:`DIVERGED` where ``mine`` has a nan/inf SAL;
    an error is appended to ``row["error"]`` as ``<column>: <message>``.
    """
    if clean is None or mine is None:
        return
    column = MEASURES[measure].column
    try:
        measured = ud(clean, mine)
    except SalDivergedError as err:  # its SAL is nan/inf: never a UD value
        row[column] = DIVERGED
        row["error"] = "; ".join(filter(None, [row["error"], f"{column}: {err}"]))
        return
    except UnlearnError as err:
        row["error"] = "; ".join(filter(None, [row["error"], f"{column}: {err}"]))
        return
    row[column] = measured["ud"]
    if measure != "headline":
        return
    row.update({k: measured[k] for k in ("ud_weighted", "lp_clean", "lp_poisoned", "beta")})
    for suffix, _ in THRESHOLDS[1:]:
        row[f"ud{suffix}"] = measured.get(f"ud{suffix}", "")
        row[f"beta{suffix}"] = measured.get(f"beta{suffix}", "")


def collect(layout: Layout) -> list[dict[str, Any]]:
    """One row per cell: grid keys, metrics, each measure's UD, seconds, status.

    Each UD is against the clean cell of the same data, model, defense and seed.
    """
    rows = []
    tables = {(cell, measure): _sal_table(layout, cell, measure)
              for cell in layout.cells() for measure in MEASURES}  # fmt: skip
    for cell in layout.cells():
        row: dict[str, Any] = {column: "" for column in RESULT_COLUMNS}
        row.update(cell.keys())
        metrics = load_json(layout.metrics_file(cell))
        error = load_json(layout.error_file(cell))
        if metrics is None:
            row["status"] = "failed" if error else "pending"
            if error:
                last = error.get("output", "").strip().splitlines() or [
                    f"exit {error.get('returncode')}"
                ]
                row["error"] = f"{error.get('step')}: {last[-1]}"
            rows.append(row)
            continue
        row["status"] = "ok"
        row["test_acc"] = metrics["test"].get("test/acc", "")
        row["test_loss"] = metrics["test"].get("test/loss", "")
        row["val_acc"] = metrics["validation"].get("val/acc", "")
        row["epochs"] = metrics.get("epochs", "")
        row["fit_seconds"] = round(metrics.get("fit_seconds", math.nan), 1)
        poison = layout.poison_dir(cell) if cell.method != CLEAN else None
        if poison is not None:
            timing = load_json(poison.parent / f"{poison.name}.seconds.json")
            row["poison_seconds"] = round(timing["seconds"], 1) if timing else ""
            used = load_json(layout.poison_used_file(cell)) or {}
            row["poison_sha256"] = used.get("delta_sha256") or ""
            row["poison_created"] = used.get("created") or ""
        for measure in MEASURES:
            clean = tables.get((cell.reference(), measure))
            _add_ud(row, measure, clean, tables[(cell, measure)])
        rows.append(row)
    return rows


def noise_floors(layout: Layout, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The noise floor of each measure and (data, model, defense), each method's test against it.

    The floor of a measure: its UD of clean seed ``i`` against clean seed ``j`` for every
    ordered pair of the finished clean cells with that measure's SAL table
    (:func:`unlearn.sharpness.floor.noise_floor`). A method's values: its seeds' UDs of the
    same measure (against the clean cell of the same seed, as in ``results.csv``; diverged
    seeds left out).

    Returns:
        One entry per measure (in the order of :data:`MEASURES`, the headline first) and
        (data, model, defense) with a clean cell: ``measure``, ``data``, ``model``,
        ``defense``, ``seeds`` (the clean seeds used), ``values`` (the floor, ``[]`` where
        there is none), ``note`` (why there is none, else ``""``) and ``methods``: one dict per
        method with UDs, of :data:`FLOOR_COLUMNS` (``p_less``: one-sided, the method's UDs
        below the floor; ``verdict`` at :data:`FLOOR_ALPHA`).
    """
    groups = _groups(rows)
    out = []
    for measure in MEASURES:
        for data, model, method, defense in groups:
            if method == CLEAN:
                out.append(_floor_entry(layout, groups, measure, (data, model, defense)))
    return out


def _floor_entry(
    layout: Layout, groups: dict[tuple, list[dict[str, Any]]], measure: str,
    where: tuple[str, str, str],
) -> dict[str, Any]:  # fmt: skip
    """The floor of one measure and ``where`` = (data, model, defense); see :func:`noise_floors`."""
    data, model, defense = where
    clean = [row for row in groups[(data, model, CLEAN, defense)] if row["status"] == "ok"]
    cells = [Cell(data, model, defense, row["seed"], CLEAN) for row in clean]
    tables = [(cell.seed, _sal_table(layout, cell, measure)) for cell in cells]
    tables = [(seed, table) for seed, table in tables if table is not None]
    entry: dict[str, Any] = {"measure": measure, "data": data, "model": model,
                             "defense": defense, "seeds": [seed for seed, _ in tables],
                             "values": [], "note": "", "methods": []}  # fmt: skip
    if len(tables) < 2:
        entry["note"] = (
            f"the floor needs at least two clean seeds with a SAL table; found {len(tables)}"
        )
        return entry
    try:
        entry["values"] = values = noise_floor([table for _, table in tables])
    except UnlearnError as err:
        entry["note"] = f"no floor: {err}"
        return entry
    for (d, m, name, f), group in groups.items():
        uds = finite_values(group, MEASURES[measure].column)
        if (d, m, f) != where or name == CLEAN or not uds:
            continue
        found, p_less = verdict(uds, values, "less", FLOOR_ALPHA)
        entry["methods"].append({
            "measure": measure, "data": data, "model": model, "defense": defense,
            "method": name, "n": len(uds), "ud_mean": statistics.fmean(uds),
            "floor_n": len(values), "floor_mean": statistics.fmean(values),
            "floor_min": min(values), "floor_max": max(values), "p_less": p_less,
            "p_two_sided": permutation_test(uds, values, "two-sided"), "verdict": found,
        })  # fmt: skip
    return entry


def write_floor_csv(floors: Sequence[dict[str, Any]], path: Path) -> None:
    """One row per (measure, data, model, defense, method) with a floor test (atomically)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FLOOR_COLUMNS)
    writer.writeheader()
    for entry in floors:
        for row in entry["methods"]:
            writer.writerow({k: _fmt_cell(row[k]) for k in FLOOR_COLUMNS})
    write_text_atomic(path, buffer.getvalue())


def floor_section(floors: Sequence[dict[str, Any]]) -> list[str]:
    """The report's "Noise floor" lines (heading included), one part per measure."""
    lines = ["", "## Noise floor: UD of clean seeds against each other", ""]
    lines.append(
        "Floor: UD of clean seed i against clean seed j, every ordered pair i != j, per "
        "measure, data, model and defense (each measure has its own floor). Each method's "
        "seeds' UDs of the same measure against it: exact permutation test of the difference "
        f"of means; verdict one-sided (below the floor) at alpha {FLOOR_ALPHA}, the two-sided p "
        "beside it."
    )
    if not floors:
        lines += ["", "No clean cells: no floor."]
        return lines
    for measure in MEASURES:
        entries = [entry for entry in floors if entry["measure"] == measure]
        lines += ["", f"### {MEASURES[measure].label}"]
        if all(not entry["seeds"] for entry in entries):
            file = MEASURES[measure].sal_file
            lines += ["", f"No finished clean cell has a readable {file}: no floor."]
            continue
        lines += _floor_lines(entries)
    return lines


def _floor_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    """The floors and tests of one measure's entries."""
    lines: list[str] = []
    for entry in entries:
        where = f"{entry['data']}, {entry['model']}, defense {entry['defense']}"
        if entry["note"]:
            lines += ["", f"- {where}: {entry['note']}."]
            continue
        values = entry["values"]
        lines += ["", f"#### {where}", ""]
        lines.append(
            f"Floor over seeds {entry['seeds']}: {len(values)} values "
            f"[{', '.join(f'{v:.3g}' for v in values)}], mean {statistics.fmean(values):.3g}, "
            f"min {min(values):.3g}, max {max(values):.3g}."
        )
        if not entry["methods"]:
            lines += ["", "No method has a UD yet."]
            continue
        lines += ["", "| method | n | mean UD | verdict | p (below) | p (two-sided) |"]
        lines.append("|---|---|---|---|---|---|")
        for row in entry["methods"]:
            lines.append(
                f"| {row['method']} | {row['n']} | {row['ud_mean']:.3g} | {row['verdict']} | "
                f"{row['p_less']:.3g} | {row['p_two_sided']:.3g} |"
            )
    return lines


def write_results_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the rows with :data:`RESULT_COLUMNS` (atomically)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt_cell(row.get(k, "")) for k in RESULT_COLUMNS})
    write_text_atomic(path, buffer.getvalue())


def _fmt_cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``"m ± s"`` over seeds (``±`` omitted for one value, ``-`` for none)."""
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _in_spec_order(rows: Sequence[dict[str, Any]], key: str, order: Sequence[str]) -> list[str]:
    """The distinct values of ``key`` in ``rows``, in the order the benchmark config gives."""
    present = {row[key] for row in rows}
    return [name for name in order if name in present]


def _groups(rows: Sequence[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["data"], row["model"], row["method"], row["defense"])].append(row)
    return groups


def _ud_text(group: Sequence[dict[str, Any]], column: str) -> str:
    """A condition's UD ``"m ± s"`` over seeds, with ``(k diverged)`` where seeds diverged."""
    text = mean_std(finite_values(group, column))
    diverged = sum(row.get(column) == DIVERGED for row in group)
    return text + (f" ({diverged} diverged)" if diverged else "")


def exploratory_section(
    rows: Sequence[dict[str, Any]], spec_methods: Sequence[str], defenses: Sequence[str]
) -> list[str]:
    """The report's "Exploratory measures" lines: each condition's UD under every measure."""
    groups = _groups(rows)
    lines = ["", "## Exploratory measures (beside the headline UD, never in its place)", ""]
    lines.append(
        "UD against the clean run of the same data, model, defense and seed, mean ± std over "
        "seeds, under each measure: the headline count UD of sal.csv (as above); held-out, the "
        "same count UD of sal_heldout.csv (SAL on clean held-out images; - where a cell has "
        "none); scale-free, the count UD of SAL / (L0 + 1) from sal.csv. Exploratory: each has "
        "its own noise floor below."
    )
    for data, model in dict.fromkeys((row["data"], row["model"]) for row in rows):
        lines += ["", f"### {data}, {model}", ""]
        headers = " | ".join(m.header for m in MEASURES.values())
        lines.append(f"| method | defense | {headers} |")
        lines.append("|---|---|" + "---|" * len(MEASURES))
        for method in spec_methods:
            for defense in defenses:
                group = groups.get((data, model, method, defense))
                if not group:
                    continue
                texts = [_ud_text(group, m.column) for m in MEASURES.values()]
                lines.append(f"| {method} | {defense} | " + " | ".join(texts) + " |")
    return lines


def markdown_report(
    name: str,
    rows: list[dict[str, Any]],
    figures: Sequence[str],
    spec_methods: Sequence[str],
    spec_defenses: Sequence[str],
    floors: Sequence[dict[str, Any]] | None = None,
    answers: Sequence[Answer] = (),
) -> str:
    """The ``report.md`` text.

    ``floors`` (:func:`noise_floors`) adds the "Noise floor" section, ``answers``
    (:func:`unlearn.benchmark.hypotheses.evaluate`) the "Pre-registered hypotheses" section.
    """
    groups = _groups(rows)
    defenses = _in_spec_order(rows, "defense", spec_defenses)
    settings = list(dict.fromkeys((row["data"], row["model"]) for row in rows))
    seeds = sorted({row["seed"] for row in rows})
    done = sum(row["status"] == "ok" for row in rows)
    lines = [f"# Benchmark report: {name}", ""]
    lines.append(
        f"{done} of {len(rows)} cells finished; seeds {seeds}. Test accuracy (%) of the final "
        "model on the clean test split and UD against the clean run of the same data, model, "
        "defense and seed, mean ± std over seeds. UD ~ 1: as learnable as clean data; ~ 0: "
        "unlearnable; > 1: learns, but other (wrong) features."
    )
    for data, model in settings:
        lines += ["", f"## {data}, {model}: test accuracy (%) | UD", ""]
        lines.append("| method | " + " | ".join(defenses) + " |")
        lines.append("|---|" + "---|" * len(defenses))
        for method in spec_methods:
            cells = []
            for defense in defenses:
                group = groups.get((data, model, method, defense), [])
                acc = mean_std(finite_values(group, "test_acc"), scale=100, digits=1)
                cells.append(f"{acc} \\| {_ud_text(group, 'ud')}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += exploratory_section(rows, spec_methods, defenses)
    rho, p, n = ud_accuracy_spearman(rows)
    lines += ["", "## Correlation of UD and test accuracy", ""]
    if math.isnan(rho):
        lines.append(f"Not enough varied cells with both values (n = {n}).")
    else:
        lines.append(
            f"Spearman's rho = {rho:.3f} (p = {p:.3g}, n = {n} cells). A positive rho means "
            "runs that keep more learnable layers also reach higher clean accuracy."
        )
    lines += ["", "## Robustness variants of the headline UD (mean ± std over seeds)", ""]
    lines.append(
        "The headline is the count UD at the 2-means threshold; beside it the same threshold "
        "with each layer weighted by its parameter count, and the count UD under other "
        "thresholds (3-means, percentiles of the clean run's SAL)."
    )
    lines.append("")
    lines.append("| data | model | method | defense | " + " | ".join(t for _, t in VARIANTS) + " |")
    lines.append("|---|---|---|---|" + "---|" * len(VARIANTS))
    for (data, model, method, defense), group in groups.items():
        if method == CLEAN:
            continue
        values = [mean_std(finite_values(group, column)) for column, _ in VARIANTS]
        lines.append(f"| {data} | {model} | {method} | {defense} | " + " | ".join(values) + " |")
    lines += poisons_section(rows)
    if floors is not None:
        lines += floor_section(floors)
    lines += hypotheses_section(answers)
    diverged = [row for row in rows if DIVERGED in (row.get(m.column) for m in MEASURES.values())]
    if diverged:
        lines += ["", "## Diverged runs (SAL nan/inf: no UD of that measure)", ""]
        for row in diverged:
            cell_id = "__".join(str(row[k]) for k in KEY_COLUMNS)
            which = [name for name, m in MEASURES.items() if row.get(m.column) == DIVERGED]
            lines.append(f"- `{cell_id}` ({', '.join(which)}): {row['error']}")
    failed = [row for row in rows if row["status"] == "failed"]
    if failed:
        lines += ["", "## Failed cells", ""]
        for row in failed:
            cell_id = "__".join(str(row[k]) for k in KEY_COLUMNS)
            lines.append(f"- `{cell_id}`: {row['error']}")
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures]
    seconds = finite_values(rows, "fit_seconds")
    if seconds:
        lines += [
            "",
            f"Training time: {sum(seconds) / 60:.1f} min in all (fit incl. SAL and test).",
        ]
    return "\n".join(lines) + "\n"


def poisons_section(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The "Poisons the cells trained on" lines of the report.

    Per data and method, the distinct poisons (content hash and creation time) of its
    finished cells. A method whose cells trained on more than one, or on one whose hash was
    not recorded, is flagged: its spread over seeds then holds the poison's too.
    """
    # one poison per content hash; without a hash, one per creation time
    used: dict[tuple[str, str], dict[str, tuple[set[str], list[str]]]] = defaultdict(dict)
    for row in rows:
        if row["method"] == CLEAN or row["status"] != "ok":
            continue
        sha, created = row["poison_sha256"], row["poison_created"]
        made, labels = used[(row["data"], row["method"])].setdefault(
            sha or f"unrecorded {created}", (set(), [])
        )
        made.add(created or "at an unrecorded time")
        labels.append(f"s{row['seed']} {row['defense']}")
    if not used:
        return []
    lines = ["", "## Poisons the cells trained on", ""]
    lines.append(
        "Each poisoned cell records the poison it trained on (`run/poison.json`: the content "
        "hash of the stored perturbation and when it was made). A grid run over several "
        "machines makes its poisons again on each, and a poison made again elsewhere can "
        "differ (floating-point results differ between CPUs)."
    )
    lines.append("")
    for (data, method), groups in used.items():
        parts = []
        for key, (made, labels) in groups.items():
            what = "hash not recorded" if key.startswith("unrecorded") else f"`{key[:12]}`"
            parts.append(f"{what} made {', '.join(sorted(made))} ({', '.join(labels)})")
        if len(groups) == 1:
            lines.append(f"- {data}, {method}: one poison, {parts[0]}")
        else:
            lines.append(
                f"- **{data}, {method}: {len(groups)} poisons, not known to be the same** "
                "(the spread over its seeds holds the poisons' too): " + "; ".join(parts)
            )
    return lines


def make_figures(
    layout: Layout, rows: list[dict[str, Any]], out_dir: Path, spec_defenses: Sequence[str]
) -> list[str]:
    """Write ``ud_bars.png``, ``ud_curves.png`` and ``sal_heatmaps.png``; return their names.

    Drawn on :class:`~matplotlib.figure.Figure` objects, without pyplot: the caller's
    matplotlib backend is never selected or switched.
    """
    names = []
    groups = _groups(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != CLEAN))
    defenses = _in_spec_order(rows, "defense", spec_defenses)
    settings = list(dict.fromkeys((r["data"], r["model"]) for r in rows))
    if not methods or not any(finite_values(rows, "ud")):
        return names
    data, model = settings[0]

    fig = Figure(figsize=(1.2 + 1.1 * len(methods), 3.2))
    ax = fig.subplots()
    width = 0.8 / len(defenses)
    for j, defense in enumerate(defenses):
        means, stds = [], []
        for method in methods:
            values = finite_values(groups.get((data, model, method, defense), []), "ud")
            means.append(statistics.fmean(values) if values else np.nan)
            stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        x = np.arange(len(methods)) + (j - (len(defenses) - 1) / 2) * width
        ax.bar(x, means, width, yerr=stds, capsize=3, label=defense)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(methods)), methods)
    ax.set_ylabel("UD")
    ax.set_title(f"UD per method ({data}, {model})")
    ax.legend(title="defense", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "ud_bars.png", dpi=120)
    names.append("ud_bars.png")

    reference = [
        c for c in layout.cells() if c.method == CLEAN and (c.data, c.model) == (data, model)
    ]
    reference = [c for c in reference if layout.sal_file(c).is_file()]
    reference.sort(key=lambda c: (spec_defenses.index(c.defense), c.seed))
    if not reference:
        return names
    clean_cell = reference[0]
    clean = SalTable.read(layout.sal_file(clean_cell))
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    for method in methods:
        cell = Cell(clean_cell.data, clean_cell.model, clean_cell.defense, clean_cell.seed, method)
        if not layout.sal_file(cell).is_file():
            continue
        poisoned = SalTable.read(layout.sal_file(cell))
        steps = min(len(clean.checkpoints), len(poisoned.checkpoints))
        try:
            curve = [ud(clean, poisoned, t)["ud"] for t in range(1, steps + 1)]
        except UnlearnError:  # a diverged run (or reference) has no curve; the table says why
            continue
        ax.plot(range(1, steps + 1), curve, marker="o", ms=3, label=method)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("UD(t)")
    ax.set_title(f"UD over training (defense {clean_cell.defense}, seed {clean_cell.seed})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "ud_curves.png", dpi=120)
    names.append("ud_curves.png")

    panels = [(CLEAN, clean)]
    for method in methods:
        cell = Cell(clean_cell.data, clean_cell.model, clean_cell.defense, clean_cell.seed, method)
        if layout.sal_file(cell).is_file():
            panels.append((method, SalTable.read(layout.sal_file(cell))))
    values = np.concatenate([t.aligned(clean.layers).ravel() for _, t in panels])
    values = np.abs(values[np.isfinite(values)])  # a diverged run's nan/inf is left blank
    vmax = (float(values.max()) if values.size else 0.0) or 1.0
    fig = Figure(figsize=(1.6 * len(panels) + 1.2, 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (method, table) in zip(axes[0], panels, strict=True):
        image = ax.imshow(np.ma.masked_invalid(table.aligned(clean.layers).T), aspect="auto",
                          cmap="magma", vmin=0, vmax=vmax)  # fmt: skip
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("checkpoint")
        ax.set_yticks([])
    axes[0][0].set_ylabel("layer (input → output)")
    fig.colorbar(image, ax=axes[0].tolist(), label="SAL")
    fig.savefig(out_dir / "sal_heatmaps.png", dpi=120)
    names.append("sal_heatmaps.png")
    return names


def write_report(layout: Layout) -> Path:
    """Collect the cells; write ``results.csv``, ``floor.csv``, the figures and ``report.md``.

    The report answers the spec's hypotheses (:mod:`unlearn.benchmark.hypotheses`).
    """
    rows = collect(layout)
    layout.root.mkdir(parents=True, exist_ok=True)
    write_results_csv(rows, layout.root / "results.csv")
    floors = noise_floors(layout, rows)
    write_floor_csv(floors, layout.root / "floor.csv")
    answers = evaluate(layout.spec, rows, floors)
    defenses = list(layout.spec.defenses)
    figures = make_figures(layout, rows, layout.root, defenses)
    text = markdown_report(layout.spec.name, rows, figures, layout.spec.methods, defenses,
                           floors, answers)  # fmt: skip
    path = layout.root / "report.md"
    write_text_atomic(path, text)
    return path
