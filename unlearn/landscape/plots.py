"""Figures of loss surfaces and trajectories (matplotlib), and TensorBoard logging.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot's global
state, so the user's matplotlib backend is never selected or switched (``savefig`` renders
with Agg on its own); :func:`save_figure` writes it as PNG and :func:`log_figures` adds PNG
files to TensorBoard.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from unlearn.io import atomic_path
from unlearn.landscape.trajectory import ParameterComparison

COLOURS = ["tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown"]


def _log10(values: Tensor | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return np.log10(np.clip(array, 1e-12, None))


def plot_surface_1d(
    alphas: Tensor,
    losses: Mapping[str, Tensor],
    accuracies: Mapping[str, Tensor] | None = None,
    title: str = "loss along a filter-normalised random direction",
) -> Figure:
    """Loss (log scale), its rise above the centre, and accuracy of several runs in 1-D.

    Args:
        alphas: step sizes ``[N]`` along each run's own direction (0 is the checkpoint).
        losses: run name -> loss ``[N]``.
        accuracies: run name -> accuracy ``[N]`` in ``[0, 1]``; a third panel when given.
        title: the figure's title.
    """
    panels = 3 if accuracies else 2
    fig = Figure(figsize=(3.6 * panels, 3.3), layout="constrained")
    axes = fig.subplots(1, panels)
    x = np.asarray(alphas, dtype=np.float64)
    centre = int(np.argmin(np.abs(x)))
    for k, (name, loss) in enumerate(losses.items()):
        colour = COLOURS[k % len(COLOURS)]
        values = np.asarray(loss, dtype=np.float64)
        axes[0].plot(x, values, color=colour, label=name)
        axes[1].plot(x, values - values[centre], color=colour)
        if accuracies:
            axes[2].plot(x, 100 * np.asarray(accuracies[name]), color=colour)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize="small")
    at = 0.0 if abs(x[centre]) < 1e-9 else x[centre]  # linspace leaves -5e-17 for 0
    axes[1].set_ylabel(f"loss - loss at alpha = {at:.3g}")
    if accuracies:
        axes[2].set_ylabel("accuracy (%)")
        axes[2].set_ylim(0, 100)
    for ax in axes:
        ax.set_xlabel("alpha")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize="medium")
    return fig


def _draw_paths(ax: object, paths: Mapping[str, Tensor]) -> None:
    for k, (name, coords) in enumerate(paths.items()):
        xy = np.asarray(coords)
        colour = COLOURS[k % len(COLOURS)]
        ax.plot(xy[:, 0], xy[:, 1], "-o", color=colour, markersize=2.5, linewidth=1.2, label=name)
        ax.plot(xy[0, 0], xy[0, 1], "s", color=colour, markersize=5)
        ax.plot(xy[-1, 0], xy[-1, 1], "*", color=colour, markersize=10, markeredgecolor="k")


def plot_contours(
    xs: Tensor,
    ys: Tensor,
    grids: Mapping[str, Tensor],
    paths: Mapping[str, Tensor] | None = None,
    axis_labels: tuple[str, str] = ("x", "y"),
    title: str = "",
    levels: int = 20,
) -> Figure:
    """Contours of ``log10(loss)`` on one or more planes, with a shared colour scale.

    Args:
        xs: coordinates ``[NX]``.
        ys: coordinates ``[NY]``.
        grids: panel title -> loss ``[NY, NX]``.
        paths: run name -> trajectory coordinates ``[T, 2]``, drawn on every panel (a square
            marks the first checkpoint, a star the last).
        axis_labels: labels of the x and y axes.
        title: the figure's title.
        levels: number of contour levels.
    """
    n = len(grids)
    fig = Figure(figsize=(3.9 * n + 0.8, 3.7), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    logs = {name: _log10(grid) for name, grid in grids.items()}
    low = min(float(v.min()) for v in logs.values())
    high = max(float(v.max()) for v in logs.values())
    bounds = np.linspace(low, high if high > low else low + 1e-6, levels + 1)
    x, y = np.asarray(xs), np.asarray(ys)
    filled = None
    for ax, (name, value) in zip(axes, logs.items(), strict=True):
        filled = ax.contourf(x, y, value, levels=bounds, cmap="viridis")
        ax.contour(x, y, value, levels=bounds, colors="k", linewidths=0.3, alpha=0.5)
        if paths:
            _draw_paths(ax, paths)
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel(axis_labels[0])
        ax.set_xlim(x[0], x[-1])
        ax.set_ylim(y[0], y[-1])
    axes[0].set_ylabel(axis_labels[1])
    if paths:
        axes[0].legend(fontsize="small", loc="upper left")
    fig.colorbar(filled, ax=list(axes), label="log10 loss", shrink=0.9)
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def plot_surface_3d(xs: Tensor, ys: Tensor, grid: Tensor, title: str = "") -> Figure:
    """A 3-D surface of ``log10(loss)`` over a plane ``[NY, NX]``."""
    fig = Figure(figsize=(4.6, 4.0), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    gx, gy = np.meshgrid(np.asarray(xs), np.asarray(ys))
    ax.plot_surface(gx, gy, _log10(grid), cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("log10 loss")
    if title:
        ax.set_title(title, fontsize="medium")
    return fig


def plot_parameter_paths(
    comparison: ParameterComparison, name_a: str, name_b: str, columns: int = 4
) -> Figure:
    """The values of the most differently moving coordinates along both runs.

    Args:
        comparison: the result of :func:`~unlearn.landscape.trajectory.compare_parameters`.
        name_a: label of the first run.
        name_b: label of the second run.
        columns: panels per row.
    """
    k = len(comparison.names)
    rows = max(1, math.ceil(k / columns))
    fig = Figure(figsize=(2.6 * min(k, columns) + 0.4, 2.2 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, min(k, columns), squeeze=False).reshape(-1)
    steps = np.asarray(comparison.steps)
    for i, name in enumerate(comparison.names):
        axes[i].plot(steps, np.asarray(comparison.paths_a[:, i]), color=COLOURS[0], label=name_a)
        axes[i].plot(steps, np.asarray(comparison.paths_b[:, i]), color=COLOURS[1], label=name_b)
        axes[i].set_title(name, fontsize="x-small")
        axes[i].tick_params(labelsize="x-small")
    for ax in axes[k:]:
        ax.set_visible(False)
    axes[0].legend(fontsize="x-small")
    fig.supxlabel("global step", fontsize="small")
    fig.suptitle(
        f"coordinates that moved most differently: {name_a} vs {name_b}", fontsize="medium"
    )
    return fig


def plot_difference_concentration(
    comparisons: Mapping[str, ParameterComparison], tensor_names: list[str]
) -> Figure:
    """How concentrated the path difference is: cumulative share, and share per tensor.

    Args:
        comparisons: label (``"clean vs em"``) -> comparison.
        tensor_names: the parameter tensors' names (the order of ``tensor_share``).
    """
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    width = 0.8 / max(1, len(comparisons))
    for k, (label, comp) in enumerate(comparisons.items()):
        share = np.asarray(comp.cumulative_share)
        fraction = np.arange(1, share.size + 1) / share.size
        colour = COLOURS[(k + 1) % len(COLOURS)]
        left.plot(fraction, share, color=colour, label=label)
        position = np.arange(len(tensor_names)) + (k - (len(comparisons) - 1) / 2) * width
        right.bar(position, np.asarray(comp.tensor_share), width=width, color=colour, label=label)
    left.set_xscale("log")
    left.set_xlabel("fraction of coordinates (highest score first)")
    left.set_ylabel("share of squared path difference")
    left.set_ylim(0, 1.02)
    left.grid(alpha=0.3)
    left.legend(fontsize="small")
    right.set_xticks(np.arange(len(tensor_names)))
    right.set_xticklabels(tensor_names, rotation=45, ha="right", fontsize="x-small")
    right.set_ylabel("share per parameter tensor")
    fig.suptitle("where the clean and poisoned paths differ", fontsize="medium")
    return fig


def plot_input_weight_maps(score: Tensor, title: str = "") -> Figure:
    """Per-class maps of a path-difference score on a linear layer that reads raw pixels.

    Args:
        score: ``[K, C, H, W]``, the score of the weight connecting pixel ``(c, h, w)`` to
            output ``k`` (channels are summed in quadrature for display).
        title: the figure's title.
    """
    maps = np.sqrt(np.square(np.asarray(score, dtype=np.float64)).sum(axis=1))
    classes = maps.shape[0]
    columns = min(classes, 5)
    rows = math.ceil(classes / columns)
    fig = Figure(figsize=(1.6 * columns + 0.8, 1.7 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).reshape(-1)
    image = None
    for k in range(classes):
        image = axes[k].imshow(maps[k], cmap="magma", vmin=0, vmax=float(maps.max()))
        axes[k].set_title(f"output {k}", fontsize="x-small")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[classes:]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="score")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


def log_figures(log_dir: str | Path, images: Mapping[str, str | Path], step: int = 0) -> None:
    """Add PNG files (as written by :func:`save_figure`) to TensorBoard as ``landscape/<name>``.

    Args:
        log_dir: a TensorBoard log directory (a run's own, or a new one).
        images: figure name -> PNG path; logged from the file, so nothing is drawn twice.
        step: the global step the images are logged at.
    """
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for name, path in images.items():
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            writer.add_image(f"landscape/{name}", pixels, global_step=step, dataformats="HWC")
    finally:
        writer.close()
