"""Answers to a benchmark's pre-registered hypotheses (the spec's ``hypotheses:``).

Each entry of :attr:`~unlearn.benchmark.grid.BenchmarkSpec.hypotheses` (checked by
:meth:`~unlearn.benchmark.grid.BenchmarkSpec.check`) is answered from the finished cells'
``results.csv`` rows and the noise floors of the report: **yes**, **no**, or **not yet** (a
cell it needs has not finished, or has no UD to test). The UDs are those of the entry's
``measure`` (:data:`~unlearn.benchmark.measures.MEASURES`, the headline count UD by default);
the floor of a (data, model, defense) is that measure's clean-vs-clean floor. Kinds:

- ``below_floor`` (``methods``): per method, the one-sided ("less") exact permutation test of
  its seeds' UDs against its defense's clean floor; yes iff ``p < alpha`` for every method.
- ``not_below_floor`` (``methods``): the same test; yes iff ``p >= alpha`` for every method.
- ``above_one_and_floor`` (``methods``): yes iff the mean UD is above 1 and the one-sided
  ("greater") test against the floor has ``p < alpha``, for every method.
- ``defense_raises`` (``defense``, ``methods``): per method, the one-sided ("greater") exact
  permutation test of its UDs under ``defense`` (each against that defense's clean cell)
  against its UDs without a defense; yes iff ``p <= alpha`` for every method. At most, not
  below: with 3 + 3 values the smallest attainable p is 1/20 = 0.05, and the pre-registration
  (docs/fashion_mnist.md, H4) counts that split, every defended UD above every undefended one,
  as a yes.
- ``spearman_above`` (``threshold``): Spearman's rho of UD vs test accuracy over the cells
  with ``defense`` (clean cells included, UD 1), one-sided p for rho > 0; yes iff
  ``rho > threshold`` and ``p < alpha``.

A hypothesis over several methods (or several data x model settings of the grid) is no as
soon as one of them is a final no; else not yet while one is not yet; else yes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy.stats import spearmanr

from unlearn.benchmark.grid import CLEAN, HYPOTHESIS_DEFAULTS, NO_DEFENSE, BenchmarkSpec
from unlearn.benchmark.measures import MEASURES
from unlearn.sharpness.floor import permutation_test, verdict

YES, NO, NOT_YET = "yes", "no", "not yet"


@dataclass
class Line:
    """One method's (or one setting's) part of an answer.

    Attributes:
        label: The method (with its data and model where the grid has several settings).
        answer: ``yes``, ``no`` or ``not yet``.
        text: The line of the report: the answer with its numbers (or why it waits).
        numbers: The numbers of the line by name (``p``, ``mean``, ``n``, ``rho`` ...).
    """

    label: str
    answer: str
    text: str
    numbers: dict[str, float] = field(default_factory=dict)


@dataclass
class Answer:
    """A hypothesis answered: ``answer`` is ``yes``, ``no`` or ``not yet``; one line per part."""

    id: str
    kind: str
    claim: str
    answer: str
    lines: list[Line]


def finite_values(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    """The finite numbers of column ``key`` of ``rows`` (``""``, ``diverged``, nan left out)."""
    out = []
    for row in rows:
        value = row.get(key, "")
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.append(float(value))
    return out


def ud_accuracy_spearman(
    rows: Sequence[dict[str, Any]],
    column: str = "ud",
    defense: str | None = None,
    alternative: str = "two-sided",
) -> tuple[float, float, int]:
    """Spearman's rho between UD and test accuracy over the cells with both, its p-value, n.

    Args:
        rows: ``results.csv`` rows (:func:`unlearn.benchmark.report.collect`).
        column: The UD column (a :class:`~unlearn.benchmark.measures.Measure`'s ``column``).
        defense: Only the cells with this defense; every cell where None.
        alternative: Of :func:`scipy.stats.spearmanr`: ``"two-sided"``, ``"greater"``
            (rho > 0) or ``"less"``.

    ``nan`` for rho and p where fewer than 3 cells have both or either is constant (checked
    here, so scipy never warns about constant input).
    """
    pairs = [
        (row[column], row["test_acc"])
        for row in rows
        if (defense is None or row["defense"] == defense)
        and isinstance(row.get(column), float) and math.isfinite(row[column])
        and isinstance(row.get("test_acc"), float)
    ]  # fmt: skip
    if len(pairs) < 3:
        return math.nan, math.nan, len(pairs)
    ud_values, acc_values = zip(*pairs, strict=True)
    if len(set(ud_values)) < 2 or len(set(acc_values)) < 2:
        return math.nan, math.nan, len(pairs)
    result = spearmanr(ud_values, acc_values, alternative=alternative)
    return float(result.statistic), float(result.pvalue), len(pairs)


@dataclass
class _Context:
    """What every entry is answered from: the rows, the floors and the grid's settings."""

    rows: Sequence[dict[str, Any]]
    floors: Sequence[dict[str, Any]]
    settings: list[tuple[str, str]]

    def cells(self, setting: tuple[str, str], method: str, defense: str) -> list[dict]:
        """The rows of one condition (every seed)."""
        return [row for row in self.rows if (row["data"], row["model"]) == setting
                and row["method"] == method and row["defense"] == defense]  # fmt: skip

    def floor(self, measure: str, setting: tuple[str, str], defense: str) -> dict | None:
        """The floor entry of ``measure`` for a setting and defense (None: no clean cell)."""
        for entry in self.floors:
            key = (entry["measure"], (entry["data"], entry["model"]), entry["defense"])
            if key == (measure, setting, defense):
                return entry
        return None

    def label(self, name: str, setting: tuple[str, str]) -> str:
        """``name``, with its data and model where the grid has several settings."""
        return name if len(self.settings) < 2 else f"{name} ({setting[0]}, {setting[1]})"


def _waiting(groups: dict[str, list[dict]]) -> str | None:
    """Why a line is not yet answerable (``"2 of 3 em cells finished"``), or None."""
    parts = []
    for name, rows in groups.items():
        done = sum(row["status"] == "ok" for row in rows)
        if done < len(rows) or not rows:
            parts.append(f"{done} of {len(rows)} {name} cells finished")
    return "; ".join(parts) or None


def _not_yet(label: str, why: str) -> Line:
    return Line(label, NOT_YET, f"{label}: not yet ({why})")


def _floor_line(
    ctx: _Context, entry: dict, method: str, setting: tuple[str, str],
    decide: Callable[[list[float], list[float]], tuple[bool, dict[str, float], str]],
) -> Line:  # fmt: skip
    """A method's line of a test against its defense's floor.

    ``decide(uds, floor)`` gives (yes?, numbers, the test's part of the text).
    """
    measure, defense = entry["measure"], entry["defense"]
    label = ctx.label(method, setting)
    own, clean = ctx.cells(setting, method, defense), ctx.cells(setting, CLEAN, defense)
    why = _waiting({method: own, CLEAN: clean})
    if why:
        return _not_yet(label, why)
    uds = finite_values(own, MEASURES[measure].column)
    floor = ctx.floor(measure, setting, defense)
    if not uds:
        return _not_yet(label, f"no {MEASURES[measure].name} of a finished {method} cell")
    if floor is None or not floor["values"]:
        return _not_yet(label, floor["note"] if floor else "no clean cell")
    values = floor["values"]
    yes, numbers, test = decide(uds, values)
    numbers = {"mean": statistics.fmean(uds), "n": len(uds), "floor_mean":
               statistics.fmean(values), "floor_n": len(values), **numbers}  # fmt: skip
    answer = YES if yes else NO
    text = (
        f"{label}: {answer}: mean {MEASURES[measure].name} {numbers['mean']:.3g} "
        f"(n = {len(uds)}) against the floor's {numbers['floor_mean']:.3g} "
        f"(n = {len(values)}), {test}"
    )
    return Line(label, answer, text, numbers)


def _below(alpha: float) -> Callable:
    def decide(uds: list[float], floor: list[float]) -> tuple[bool, dict[str, float], str]:
        found, p = verdict(uds, floor, "less", alpha)
        return found == "below floor", {"p": p}, f"p (below) = {p:.3g}"

    return decide


def _not_below(alpha: float) -> Callable:
    def decide(uds: list[float], floor: list[float]) -> tuple[bool, dict[str, float], str]:
        _, p = verdict(uds, floor, "less", alpha)
        return p >= alpha, {"p": p}, f"p (below) = {p:.3g}"

    return decide


def _above_one(alpha: float) -> Callable:
    def decide(uds: list[float], floor: list[float]) -> tuple[bool, dict[str, float], str]:
        found, p = verdict(uds, floor, "greater", alpha)
        above_one = statistics.fmean(uds) > 1
        return above_one and found == "above floor", {"p": p}, f"p (above) = {p:.3g}"

    return decide


_FLOOR_TESTS = {"below_floor": _below, "not_below_floor": _not_below,
                "above_one_and_floor": _above_one}  # fmt: skip


def _raises_line(ctx: _Context, entry: dict, method: str, setting: tuple[str, str]) -> Line:
    """A method's line of ``defense_raises``: its UDs under the defense against those without."""
    measure, defense, alpha = entry["measure"], entry["defense"], entry["alpha"]
    label = ctx.label(method, setting)
    groups = {f"{m} ({name})": ctx.cells(setting, m, name)
              for m in (method, CLEAN) for name in (defense, NO_DEFENSE)}  # fmt: skip
    why = _waiting(groups)
    if why:
        return _not_yet(label, why)
    column = MEASURES[measure].column
    raised = finite_values(ctx.cells(setting, method, defense), column)
    base = finite_values(ctx.cells(setting, method, NO_DEFENSE), column)
    if not raised or not base:
        return _not_yet(label, f"no {MEASURES[measure].name} of finished {method} cells")
    p = permutation_test(raised, base, "greater")
    answer = YES if p <= alpha else NO
    numbers = {"mean": statistics.fmean(raised), "n": len(raised),
               "base_mean": statistics.fmean(base), "base_n": len(base), "p": p}  # fmt: skip
    text = (
        f"{label}: {answer}: mean {MEASURES[measure].name} {numbers['mean']:.3g} with {defense} "
        f"(n = {len(raised)}) against {numbers['base_mean']:.3g} without (n = {len(base)}), "
        f"p (above) = {p:.3g}"
    )
    return Line(label, answer, text, numbers)


def _spearman_line(ctx: _Context, entry: dict, setting: tuple[str, str]) -> Line:
    """A setting's line of ``spearman_above``."""
    measure, defense, alpha = entry["measure"], entry["defense"], entry["alpha"]
    label = ctx.label(f"cells with defense {defense}", setting)
    rows = [row for row in ctx.rows
            if (row["data"], row["model"]) == setting and row["defense"] == defense]  # fmt: skip
    why = _waiting({f"defense {defense}": rows})
    if why:
        return _not_yet(label, why)
    rho, p, n = ud_accuracy_spearman(rows, MEASURES[measure].column, defense, "greater")
    if math.isnan(rho):
        text = f"{label}: no: rho undefined (n = {n} cells with both; fewer than 3 or constant)"
        return Line(label, NO, text, {"n": n})
    answer = YES if rho > entry["threshold"] and p < alpha else NO
    text = f"{label}: {answer}: rho = {rho:.3f} (p (rho > 0) = {p:.3g}, n = {n} cells)"
    return Line(label, answer, text, {"rho": rho, "p": p, "n": n})


def _claim(entry: dict) -> str:
    """The hypothesis in words."""
    kind, alpha, defense = entry["kind"], entry["alpha"], entry["defense"]
    what = MEASURES[entry["measure"]].name
    methods = ", ".join(entry.get("methods", []))
    if kind == "below_floor":
        return (f"{what} of {methods} below the clean floor (defense {defense}), each: "
                f"one-sided permutation test, p < {alpha}")  # fmt: skip
    if kind == "not_below_floor":
        return f"{what} of {methods} not below the clean floor (defense {defense}): p >= {alpha}"
    if kind == "above_one_and_floor":
        return (f"{what} of {methods} above 1 and above the clean floor (defense {defense}), "
                f"each: mean > 1 and one-sided p < {alpha}")  # fmt: skip
    if kind == "defense_raises":
        return (f"{defense} raises the {what} of {methods}, each: its {defense} {what}s above "
                f"those without a defense, one-sided exact permutation test, "
                f"p <= {alpha}")  # fmt: skip
    return (f"Spearman's rho of {what} vs test accuracy over the cells with defense {defense} "
            f"(clean included) above {entry['threshold']}, one-sided p < {alpha}")  # fmt: skip


def combine(answers: Sequence[str]) -> str:
    """No if any part is no; else not yet if any is not yet (or there is none); else yes."""
    if NO in answers:
        return NO
    if NOT_YET in answers or not answers:
        return NOT_YET
    return YES


def answer(entry: dict, rows: Sequence[dict[str, Any]], floors: Sequence[dict[str, Any]]) -> Answer:
    """One hypothesis (an entry checked by :meth:`BenchmarkSpec.check`) answered.

    Args:
        entry: The entry, e.g. ``{"id": "H1", "kind": "below_floor", "methods": ["em"]}``.
        rows: ``results.csv`` rows of every cell (:func:`unlearn.benchmark.report.collect`).
        floors: The floors of every measure (:func:`unlearn.benchmark.report.noise_floors`).
    """
    entry = {**HYPOTHESIS_DEFAULTS, **entry}
    ctx = _Context(rows, floors, list(dict.fromkeys((r["data"], r["model"]) for r in rows)))
    kind = entry["kind"]
    if kind in _FLOOR_TESTS:
        decide = _FLOOR_TESTS[kind](entry["alpha"])
        lines = [_floor_line(ctx, entry, method, setting, decide)
                 for setting in ctx.settings for method in entry["methods"]]  # fmt: skip
    elif kind == "defense_raises":
        lines = [_raises_line(ctx, entry, method, setting)
                 for setting in ctx.settings for method in entry["methods"]]  # fmt: skip
    else:
        lines = [_spearman_line(ctx, entry, setting) for setting in ctx.settings]
    found = combine([line.answer for line in lines])
    return Answer(str(entry["id"]), kind, _claim(entry), found, lines)


def evaluate(
    spec: BenchmarkSpec, rows: Sequence[dict[str, Any]], floors: Sequence[dict[str, Any]]
) -> list[Answer]:
    """Every hypothesis of ``spec``, in its order (see :func:`answer`)."""
    return [answer(entry, rows, floors) for entry in spec.hypotheses]


def hypotheses_section(answers: Sequence[Answer]) -> list[str]:
    """The report's "Pre-registered hypotheses" lines (heading included; none without any)."""
    if not answers:
        return []
    lines = ["", "## Pre-registered hypotheses", ""]
    lines.append(
        "Each entry of the spec's `hypotheses:`, answered from the finished cells: **yes**, "
        "**no**, or **not yet** (a cell it needs has not finished, or has no UD). A hypothesis "
        "over several methods is no as soon as one method's answer is no."
    )
    lines.append("")
    for item in answers:
        lines.append(f"- **{item.id}** ({item.kind}): {item.claim}: **{item.answer}**")
        lines += [f"  - {line.text}" for line in item.lines]
    return lines
