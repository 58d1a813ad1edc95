"""The scalar metrics of one SAL checkpoint during training: SAL, #LP, UD, task similarity.

Keys (``<task>/`` only in a multi-task run): ``sal/<task>/<layer>``, ``sal/<task>/mean``,
``lp/<task>/count`` (layers above the reference's beta, or above this checkpoint's own 2-means
midpoint without a reference); with a reference ``ud`` (``ud/<task>``: UD(t) over the first t
checkpoints of each run) and ``lp/<task>/ratio`` (this checkpoint's count over the clean
run's t-th); with first-order estimates ``sal/<task>/first_order_rho``; with two tasks or more
``similarity/<a>/<b>`` for each pair with ``a`` before ``b``.

Never a non-finite value: at a checkpoint whose SAL is ``nan`` or ``inf`` in some layer (a
diverged run) only the finite ``sal/<layer>`` values are given (no mean, #LP, UD, ratio, rank
agreement or similarity: a count would read ``nan`` as "not learnable"); after such a
checkpoint no ``ud`` (UD(t) would include it); and a ``ud`` or ``lp/ratio`` that is ``inf``
or ``nan`` (the clean run counts no layer) is left out. Each left-out key is in
:attr:`CheckpointReport.skipped` with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unlearn.sharpness.first_order import spearman
from unlearn.sharpness.multitask import task_similarity
from unlearn.sharpness.threshold import two_means_threshold
from unlearn.sharpness.ud import TASK_COLUMN, SalTable, beta, lp_count, ratio

Row = Mapping[str, Any]


@dataclass
class CheckpointReport:
    """What one measurement gives the loggers.

    Attributes:
        metrics: The scalars, by key (see the module docstring).
        tables: Each task's history up to this checkpoint (``None``: the single task), for
            the heatmaps; the last row is this checkpoint.
        similarity: The task names and their ``[T, T]`` similarity matrix, where two tasks
            or more share layers; else ``None``.
        non_finite: The layers whose SAL is ``nan`` or ``inf`` at this checkpoint, per task
            (``None``: the single task); empty for a finite checkpoint.
        skipped: The metric keys not given, each with the reason.
    """

    metrics: dict[str, float]
    tables: dict[str | None, SalTable]
    similarity: tuple[list[str], np.ndarray] | None
    non_finite: dict[str | None, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def metric_key(kind: str, name: str, task: str | None) -> str:
    """``kind/name``, or ``kind/task/name`` in a multi-task run."""
    return f"{kind}/{name}" if task is None else f"{kind}/{task}/{name}"


def checkpoint_report(
    rows: Sequence[Row],
    history: Sequence[Row],
    references: Mapping[str | None, SalTable],
    estimates: Mapping[str | None, Mapping[str, float]] | None = None,
) -> CheckpointReport:
    """The metrics and tables of the checkpoint whose ``sal.csv`` rows are ``rows``.

    Args:
        rows: This checkpoint's rows (every task's, every layer's).
        history: Every row so far, this checkpoint's included.
        references: The clean run's table of each task (none: no UD).
        estimates: Per task, each layer's first-order estimate (none: no rank agreement).
    """
    tasks = list(dict.fromkeys(r.get(TASK_COLUMN) for r in rows))
    report = CheckpointReport({}, {}, None)
    for task in tasks:
        now = [r for r in rows if r.get(TASK_COLUMN) == task]
        report.tables[task] = SalTable.from_rows(history, "this run", task)
        metrics, skipped = task_metrics(now, report.tables[task], references.get(task), task)
        report.metrics.update(metrics)
        report.skipped.update(skipped)
        bad = [r["layer"] for r in now if not math.isfinite(r["sal"])]
        if bad:
            report.non_finite[task] = bad
        if estimates is not None:
            key = metric_key("sal", "first_order_rho", task)
            if bad:
                report.skipped[key] = _non_finite_reason(bad)
                continue
            values = [r["sal"] for r in now]
            guess = [estimates[task][r["layer"]] for r in now]
            report.metrics[key] = spearman(values, guess)
    if len(tasks) >= 2:
        if report.non_finite:
            report.skipped["similarity"] = _non_finite_reason(
                [f"{t}/{layer}" for t, layers in report.non_finite.items() for layer in layers]
            )
            return report
        names, shared, matrix = task_similarity(
            {task: {r["layer"]: r["sal"] for r in rows if r[TASK_COLUMN] == task} for task in tasks}
        )
        if shared:
            report.similarity = (names, matrix.numpy())
            for i, a in enumerate(names):
                for j in range(i + 1, len(names)):
                    report.metrics[f"similarity/{a}/{names[j]}"] = float(matrix[i, j])
    return report


def task_metrics(
    rows: Sequence[Row], table: SalTable, reference: SalTable | None, task: str | None
) -> tuple[dict[str, float], dict[str, str]]:
    """SAL, #LP and (with a reference) UD of one task (or the single task) at a checkpoint.

    Args:
        rows: The task's rows of this checkpoint.
        table: The task's history, this checkpoint last.
        reference: The clean run's table of the task (finite).
        task: The task; ``None`` in a single-task run.

    Returns:
        The metrics (all finite), and the keys left out with the reason (see the module
        docstring).
    """
    values = np.array([r["sal"] for r in rows], dtype=np.float64)
    finite = np.isfinite(values)
    metrics: dict[str, float] = {
        metric_key("sal", r["layer"], task): float(r["sal"])
        for r, ok in zip(rows, finite, strict=True)
        if ok
    }
    count = metric_key("lp", "count", task)
    ud_key = "ud" if task is None else f"ud/{task}"
    ratio_key = metric_key("lp", "ratio", task)
    if not finite.all():
        bad = [r["layer"] for r, ok in zip(rows, finite, strict=True) if not ok]
        keys = [metric_key("sal", name, task) for name in bad]
        keys += [metric_key("sal", "mean", task), count]
        keys += [ud_key, ratio_key] if reference is not None else []
        return metrics, dict.fromkeys(keys, _non_finite_reason(bad))
    skipped: dict[str, str] = {}
    metrics[metric_key("sal", "mean", task)] = float(values.mean())
    if reference is not None:
        threshold = beta(reference)
        t = len(table.checkpoints)
        clean = reference.first(min(t, len(reference.checkpoints)))
        metrics[count] = float((values > threshold).sum())
        diverged = table.divergence()
        if diverged is not None:
            skipped[ud_key] = (
                f"UD(t) would count this run's non-finite SAL at epoch {diverged.epoch} as "
                "not learnable"
            )
        else:
            ud = ratio(lp_count(table, threshold)[0], lp_count(clean, threshold)[0])
            _keep(metrics, skipped, ud_key, ud, "the clean run's first t checkpoints")
        clean_now = clean.aligned(table.layers)[-1]
        lp_ratio = ratio(metrics[count], float((clean_now > threshold).sum()))
        _keep(metrics, skipped, ratio_key, lp_ratio, "the clean run's t-th checkpoint")
    elif len(values) >= 2:
        metrics[count] = float((values > two_means_threshold(values)).sum())
    return metrics, skipped


def _keep(
    metrics: dict[str, float], skipped: dict[str, str], key: str, value: float, where: str
) -> None:
    """Put a finite ratio into ``metrics``; record why a non-finite one is left out."""
    if math.isfinite(value):
        metrics[key] = value
    else:
        skipped[key] = f"it is {value}: {where} count(s) no layer above beta"


def _non_finite_reason(layers: Sequence[str]) -> str:
    return f"SAL is nan/inf in {list(layers)} at this checkpoint"
