"""SAL per task of a multi-task model, and how alike the tasks' SAL vectors are.

A multi-task module offers each task in the form SAL measures through ``sal_views()``
(:class:`SALView`: the shared encoder with the task's head, its packed targets, its loss);
:func:`per_task_sal` measures every view, :func:`task_similarity` compares the tasks' SAL
over the shared layers. The module is found by duck typing (:class:`HasSALViews`), so this
package never imports the tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from unlearn.sharpness.sal import LayerFilter, LayerSAL, SALSettings, compute_sal

#: Prefix of the shared layers' names in a task's view (the encoder's).
SHARED_PREFIX = "encoder."


@dataclass
class SALView:
    """One task of a multi-task model, in the form SAL measures.

    Attributes:
        model: the shared encoder and the task's head (parameters shared, not copied);
            layer names ``encoder.*`` (shared) and ``head.*``.
        targets: ``targets(batch)``: the task's packed targets ``[B, ...]`` of a dict batch.
        loss_fn: ``loss_fn(outputs, targets)``: the task's mean loss.
        correct_fn: ``correct_fn(outputs, targets)``: summed per-sample success in ``[0, 1]``.
    """

    model: nn.Module
    targets: Callable[[dict[str, Tensor]], Tensor]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    correct_fn: Callable[[Tensor, Tensor], Tensor]

    def pairs(self, batches: Sequence[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """The ``(batch["rgb"], targets)`` pair of each dict batch: the probe set of SAL."""
        return [(batch["rgb"], self.targets(batch)) for batch in batches]


@runtime_checkable
class HasSALViews(Protocol):
    """A multi-task module: ``sal_views()`` gives ``{task: SALView}`` in the task order."""

    def sal_views(self) -> Mapping[str, SALView]:
        """Each task as a single-output model with its targets and loss."""
        ...


def per_task_sal(
    module: HasSALViews,
    batches: Sequence[dict[str, Tensor]],
    layers: LayerFilter = None,
    settings: SALSettings | None = None,
) -> dict[str, list[LayerSAL]]:
    """SAL of each task's layers (shared encoder and own head) on probe batches.

    Args:
        module: the multi-task module at a checkpoint (left unchanged), e.g.
            :class:`~unlearn.tasks.multitask.MultiTaskTask`.
        batches: probe dict batches (unaugmented), on the model's device.
        layers: which layers to measure (see :func:`unlearn.sharpness.measured_layers`;
            names are ``encoder.*`` and ``head.*``).
        settings: the SAL settings (default: the paper's).

    Returns:
        ``{task: [LayerSAL, ...]}`` in the module's task order.
    """
    return {
        name: compute_sal(
            view.model,
            view.pairs(batches),
            layers,
            loss_fn=view.loss_fn,
            correct_fn=view.correct_fn,
            settings=settings,
        )
        for name, view in module.sal_views().items()
    }


def task_similarity(
    results: Mapping[str, Sequence[LayerSAL] | Mapping[str, float]], prefix: str = SHARED_PREFIX
) -> tuple[list[str], list[str], Tensor]:
    """Cosine similarity of the tasks' SAL vectors over the shared layers.

    Args:
        results: Per task, its layers' SAL: ``[LayerSAL, ...]`` from :func:`per_task_sal`,
            or ``{layer: SAL}`` (e.g. from a ``sal.csv``).
        prefix: name prefix of the shared layers.

    Returns:
        Task names, shared layer names (those with ``prefix`` that every task has, in the
        first task's order), and the ``[T, T]`` similarity matrix (a task whose shared SAL
        vector is all zero has similarity 0 with every task, itself included).
    """
    by_task = {
        name: dict(values) if isinstance(values, Mapping) else {r.layer: r.sal for r in values}
        for name, values in results.items()
    }
    names = list(by_task)
    shared = [
        layer
        for layer in by_task[names[0]]
        if layer.startswith(prefix) and all(layer in by_task[n] for n in names)
    ]
    vectors = torch.tensor(
        [[float(by_task[n][layer]) for layer in shared] for n in names], dtype=torch.float64
    ).reshape(len(names), len(shared))
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return names, shared, (unit @ unit.T).float()
