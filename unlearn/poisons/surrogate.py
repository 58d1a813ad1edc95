"""The surrogate model that optimisation-based poisons (EM, REM, TAP) train and attack.

Plain PyTorch (no Lightning): the loops are short and must be reproducible and resumable, so
everything random comes from the :class:`~unlearn.poisons.base.PoisonContext` generator and
every piece of state has a ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearn.poisons.base import PoisonData


def build_surrogate(name: str, data: PoisonData, device: torch.device) -> nn.Module:
    """A freshly initialised backbone from :func:`unlearn.models.build_model` on ``device``."""
    from unlearn.models import build_model

    return build_model(name, data.num_classes, data.image_shape).to(device)


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD over all parameters (the optimiser every surrogate in the references uses)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


class BatchStream:
    """An endless stream of shuffled mini-batches of row numbers ``0..n-1``.

    Each pass is a fresh permutation drawn from ``generator``; the position within the pass is
    part of the state, so a resumed stream yields exactly the batches it would have.

    Args:
        n: number of rows.
        batch_size: rows per batch (the last batch of a pass may be smaller).
        generator: source of the permutations.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n = n
        self.batch_size = batch_size
        self.generator = generator
        self.order = torch.randperm(n, generator=generator)
        self.position = 0

    def next(self) -> Tensor:
        """The next batch of row numbers, ``int64 [B]``."""
        if self.position >= self.n:
            self.order = torch.randperm(self.n, generator=self.generator)
            self.position = 0
        rows = self.order[self.position : self.position + self.batch_size]
        self.position += rows.numel()
        return rows

    def state_dict(self) -> dict[str, Any]:
        """The current pass and position."""
        return {"order": self.order.clone(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved :meth:`state_dict`."""
        self.order = state["order"]
        self.position = int(state["position"])


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    grad_clip: float | None = None,
) -> float:
    """One SGD step on the cross-entropy of a batch; returns the loss."""
    model.train()
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None and grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def accuracy(
    model: nn.Module,
    data: PoisonData,
    rows: Tensor,
    perturbation: Callable[[Tensor], Tensor] | None,
    batch_size: int,
    device: torch.device,
) -> float:
    """Top-1 accuracy (eval mode) on ``clamp(clean + perturbation(rows), 0, 1)``.

    Args:
        model: the surrogate.
        data: the clean samples.
        rows: which rows of ``data`` to evaluate.
        perturbation: maps a batch of row numbers to ``[B, C, H, W]``; ``None`` for clean.
        batch_size: evaluation batch size.
        device: where to compute.
    """
    model.eval()
    correct = 0
    for start in range(0, rows.numel(), batch_size):
        batch = rows[start : start + batch_size]
        images, labels = data.batch(batch, device)
        if perturbation is not None:
            images = (images + perturbation(batch).to(device)).clamp(0.0, 1.0)
        correct += int((model(images).argmax(dim=1) == labels).sum())
    return correct / max(1, rows.numel())


def surrogate_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, stream: BatchStream, **extra: Any
) -> dict[str, Any]:
    """A resumable checkpoint of surrogate training: weights, optimizer, batch order, ``extra``."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "stream": stream.state_dict(),
        **extra,
    }


def restore_surrogate(
    state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, stream: BatchStream
) -> None:
    """Load what :func:`surrogate_state` saved back into the model, optimizer and stream."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    stream.load_state_dict(state["stream"])
