"""Figures of SAL: a layers x checkpoints heatmap and the tasks' similarity matrix.

Each function returns a :class:`matplotlib.figure.Figure` built without pyplot, so drawing
never selects or switches the user's matplotlib backend (e.g. in a notebook); TensorBoard's
``add_figure`` and ``Figure.savefig`` render it with Agg on their own.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from unlearn.sharpness.ud import SalTable


def sal_heatmap(table: SalTable, task: str | None = None) -> Figure:
    """SAL of every layer (rows) at every checkpoint (columns, labelled by epoch).

    Args:
        table: One run's (or one task's) SAL, ``[T, L]``; ``nan``/``inf`` cells (a diverged
            run) are left blank and do not enter the colour scale.
        task: The task, named in the title of a multi-task run's figure.
    """
    fig = Figure(figsize=(4 + 0.3 * len(table.checkpoints), 1.5 + 0.25 * len(table.layers)))
    ax = fig.subplots()
    values = np.ma.masked_invalid(table.sal.T)
    image = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(table.layers)), table.layers, fontsize=6)
    ax.set_xticks(range(len(table.checkpoints)), [str(e) for e, _ in table.checkpoints])
    ax.set_xlabel("epoch")
    ax.set_title("SAL per layer" if task is None else f"SAL per layer: {task}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def task_similarity_figure(names: list[str], matrix: np.ndarray) -> Figure:
    """The annotated task x task matrix of SAL cosine similarities.

    Args:
        names: The tasks, in the matrix's order.
        matrix: Similarities ``[T, T]`` in ``[-1, 1]`` (from
            :func:`~unlearn.sharpness.multitask.task_similarity`).
    """
    n = len(names)
    fig = Figure(figsize=(2.5 + 0.9 * n, 2 + 0.8 * n))
    ax = fig.subplots()
    image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title("SAL cosine similarity, shared layers")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig
