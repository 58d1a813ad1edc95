"""The scalar metrics of one SAL checkpoint during training: SAL, #LP, UD, task similarity.

Keys (``<task>/`` only in a multi-task run): ``sal/<task>/<layer>``, ``sal/<task>/mean``,
``lp/<task>/count`` (layers above the reference's beta, or above this checkpoint's own 2-means
midpoint without a reference); with a reference ``ud`` (``ud/<task>``: UD(t) over the first t
checkpoints of each run) and ``lp/<task>/ratio`` (this checkpoint's count over the clean
run's t-th); with first-order estimates ``sal/<task>/first_order_rho``; with two tasks or more
``similarity/<a>/<b>`` for each pair with ``a`` before ``b``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    """

    metrics: dict[str, float]
    tables: dict[str | None, SalTable]
    similarity: tuple[list[str], np.ndarray] | None


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
    metrics: dict[str, float] = {}
    tables: dict[str | None, SalTable] = {}
    for task in tasks:
        now = [r for r in rows if r.get(TASK_COLUMN) == task]
        tables[task] = SalTable.from_rows(history, "this run", task)
        metrics.update(task_metrics(now, tables[task], references.get(task), task))
        if estimates is not None:
            values = [r["sal"] for r in now]
            guess = [estimates[task][r["layer"]] for r in now]
            metrics[metric_key("sal", "first_order_rho", task)] = spearman(values, guess)
    similarity = None
    if len(tasks) >= 2:
        names, shared, matrix = task_similarity(
            {task: {r["layer"]: r["sal"] for r in rows if r[TASK_COLUMN] == task} for task in tasks}
        )
        if shared:
            similarity = (names, matrix.numpy())
            for i, a in enumerate(names):
                for j in range(i + 1, len(names)):
                    metrics[f"similarity/{a}/{names[j]}"] = float(matrix[i, j])
    return CheckpointReport(metrics, tables, similarity)


def task_metrics(
    rows: Sequence[Row], table: SalTable, reference: SalTable | None, task: str | None
) -> dict[str, float]:
    """SAL, #LP and (with a reference) UD of one task (or the single task) at a checkpoint.

    Args:
        rows: The task's rows of this checkpoint.
        table: The task's history, this checkpoint last.
        reference: The clean run's table of the task.
        task: The task; ``None`` in a single-task run.
    """
    values = np.array([r["sal"] for r in rows])
    metrics: dict[str, float] = {metric_key("sal", r["layer"], task): float(r["sal"]) for r in rows}
    metrics[metric_key("sal", "mean", task)] = float(values.mean())
    count = metric_key("lp", "count", task)
    if reference is not None:
        threshold = beta(reference)
        t = len(table.checkpoints)
        clean = reference.first(min(t, len(reference.checkpoints)))
        metrics[count] = float((values > threshold).sum())
        ud = ratio(lp_count(table, threshold)[0], lp_count(clean, threshold)[0])
        metrics["ud" if task is None else f"ud/{task}"] = ud
        clean_now = clean.aligned(table.layers)[-1]
        metrics[metric_key("lp", "ratio", task)] = ratio(
            metrics[count], float((clean_now > threshold).sum())
        )
    elif len(values) >= 2:
        metrics[count] = float((values > two_means_threshold(values)).sum())
    return metrics
