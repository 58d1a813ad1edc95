"""Loss on 1-D lines and 2-D planes of parameter space, evaluated functionally.

The model is never modified: every point ``origin + a * dx (+ b * dy)`` is a flat vector
split into views and passed to :func:`torch.func.functional_call` with the model's buffers.
Batch norm is handled as in Li et al.'s tools, by a flag: ``"eval"`` uses the running
statistics stored with the checkpoint; ``"recompute"`` re-estimates them at every point from
the probe batches (a cumulative average over the batches, as
:func:`torch.optim.swa_utils.update_bn` does) before the loss is measured in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from tqdm import tqdm

from unlearn.landscape.directions import ParameterSpace
from unlearn.loss_types import MeanLoss

BatchNormMode = Literal["eval", "recompute"]


def _batch_norms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@contextmanager
def _bn_cumulative_train(model: nn.Module) -> Iterable[None]:
    """Batch norms in train mode with a cumulative average (momentum None), then restored."""
    norms = _batch_norms(model)
    saved = [(m, m.training, m.momentum) for _, m in norms]
    try:
        for _, m in norms:
            m.train()
            m.momentum = None
        yield
    finally:
        for m, training, momentum in saved:
            m.train(training)
            m.momentum = momentum


class LossEvaluator:
    """Mean loss (and accuracy) of a model at given flat parameters on fixed probe batches.

    Args:
        model: the architecture; its own parameters are not used or changed.
        space: the layout of the flat parameter vectors.
        batches: ``(inputs, targets)`` pairs, already on the evaluation device.
        buffers: the model's buffers at the checkpoint (running statistics of batch norm);
            defaults to the model's own.
        loss_fn: ``(outputs, targets) -> mean loss``; cross-entropy by default.
        bn: ``"eval"`` or ``"recompute"`` (see the module docstring).
        accuracy: also compute top-1 accuracy (classification outputs ``[B, K]``).
    """

    def __init__(
        self,
        model: nn.Module,
        space: ParameterSpace,
        batches: Sequence[tuple[Tensor, Tensor]],
        buffers: dict[str, Tensor] | None = None,
        loss_fn: MeanLoss = F.cross_entropy,
        bn: BatchNormMode = "eval",
        accuracy: bool = True,
    ) -> None:
        if bn not in ("eval", "recompute"):
            raise ValueError(f"bn must be 'eval' or 'recompute', got {bn!r}")
        if not batches:
            raise ValueError("no probe batches to evaluate the loss on")
        self.model = model.eval()
        self.space = space
        self.batches = list(batches)
        self.buffers = dict(model.named_buffers()) if buffers is None else dict(buffers)
        self.loss_fn = loss_fn
        self.bn = bn
        self.accuracy = accuracy
        self.num_samples = sum(int(x.shape[0]) for x, _ in self.batches)
        self.evaluations = 0

    def _recomputed_buffers(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        buffers = {name: b.clone() for name, b in self.buffers.items()}
        for prefix, _ in _batch_norms(self.model):
            stem = f"{prefix}." if prefix else ""
            buffers[f"{stem}running_mean"].zero_()
            buffers[f"{stem}running_var"].fill_(1.0)
            buffers[f"{stem}num_batches_tracked"].zero_()
        # functional_call swaps these tensors into the modules, so the in-place running
        # statistic updates of the train-mode forward land in ``buffers``
        with _bn_cumulative_train(self.model):
            for inputs, _ in self.batches:
                functional_call(self.model, {**params, **buffers}, (inputs,))
        return buffers

    @torch.no_grad()
    def __call__(self, vector: Tensor) -> tuple[float, float]:
        """Loss and accuracy at the flat parameters ``vector [P]``.

        Returns:
            ``(mean loss over the probe samples, accuracy in [0, 1])``; accuracy is NaN when
            not computed.
        """
        params = self.space.unflatten(vector)
        buffers = self._recomputed_buffers(params) if self.bn == "recompute" else self.buffers
        state = {**params, **buffers}
        total_loss, correct = 0.0, 0
        for inputs, targets in self.batches:
            outputs = functional_call(self.model, state, (inputs,))
            total_loss += float(self.loss_fn(outputs, targets)) * inputs.shape[0]
            if self.accuracy:
                correct += int((outputs.argmax(dim=1) == targets).sum())
        self.evaluations += 1
        accuracy = correct / self.num_samples if self.accuracy else float("nan")
        return total_loss / self.num_samples, accuracy


def grid_coordinates(span: tuple[float, float], steps: int) -> Tensor:
    """``steps`` evenly spaced coordinates from ``span[0]`` to ``span[1]``, ``float64``."""
    if steps < 2:
        raise ValueError(f"a grid needs at least 2 steps per axis, got {steps}")
    if not span[0] < span[1]:
        raise ValueError(f"span must be (low, high) with low < high, got {tuple(span)}")
    return torch.linspace(span[0], span[1], steps, dtype=torch.float64)


def surface_1d(
    evaluate: LossEvaluator,
    origin: Tensor,
    direction: Tensor,
    alphas: Tensor,
    progress: bool = False,
    desc: str = "1-D surface",
) -> tuple[Tensor, Tensor]:
    """Loss and accuracy along ``origin + alpha * direction``.

    Args:
        evaluate: the evaluator.
        origin: flat weights ``[P]``.
        direction: flat direction ``[P]``.
        alphas: coordinates ``[N]``.
        progress: show a progress bar over the points.
        desc: the progress bar's label.

    Returns:
        ``(loss [N], accuracy [N])``, ``float64``.
    """
    loss = torch.empty(len(alphas), dtype=torch.float64)
    acc = torch.empty_like(loss)
    for i in tqdm(range(len(alphas)), desc=desc, unit="point", disable=not progress):
        loss[i], acc[i] = evaluate(origin + float(alphas[i]) * direction)
    return loss, acc


def surface_2d(
    evaluate: LossEvaluator,
    origin: Tensor,
    dx: Tensor,
    dy: Tensor,
    xs: Tensor,
    ys: Tensor,
    progress: bool = False,
    desc: str = "2-D surface",
) -> tuple[Tensor, Tensor]:
    """Loss and accuracy on the plane ``origin + x * dx + y * dy``.

    Args:
        evaluate: the evaluator.
        origin: flat weights ``[P]``.
        dx: first direction ``[P]``.
        dy: second direction ``[P]``.
        xs: coordinates along ``dx``, ``[NX]``.
        ys: coordinates along ``dy``, ``[NY]``.
        progress: show a progress bar over the ``NX * NY`` points.
        desc: the progress bar's label.

    Returns:
        ``(loss [NY, NX], accuracy [NY, NX])``, ``float64``; entry ``[j, i]`` is the point
        ``(xs[i], ys[j])`` (the layout of :func:`matplotlib.pyplot.contour`).
    """
    loss = torch.empty(len(ys), len(xs), dtype=torch.float64)
    acc = torch.empty_like(loss)
    points = [(j, i) for j in range(len(ys)) for i in range(len(xs))]
    for j, i in tqdm(points, desc=desc, unit="point", disable=not progress):
        vector = origin + float(xs[i]) * dx + float(ys[j]) * dy
        loss[j, i], acc[j, i] = evaluate(vector)
    return loss, acc
