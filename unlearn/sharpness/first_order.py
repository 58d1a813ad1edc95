"""First-order estimate of SAL: one forward and backward pass for all layers at once.

To first order, the largest loss change within the ball ``||W - W0|| <= eps * ||W0||`` is
reached along the gradient: ``L(W0 + r g / ||g||) - L0 ~ r ||g||`` with ``r = eps * ||W0||``
and ``g`` the gradient of the mean probe loss at ``W0``. Ascent and descent give the same
first-order value, so the estimate is the positive number ``eps * ||W0|| * ||g||`` (an
estimate of ``s_max`` and of ``s_min`` alike). It ignores curvature and the SGD path, so it
is reported next to the exact SAL with its rank agreement (:func:`spearman`), never in its
place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn
from torch.func import functional_call

from unlearn.sharpness.sal import (
    Batch,
    LayerFilter,
    MeanLoss,
    cross_entropy,
    measured_layers,
    model_untouched,
)


def first_order_sal(
    model: nn.Module,
    batches: Sequence[Batch],
    layers: LayerFilter = None,
    *,
    loss_fn: MeanLoss = cross_entropy,
    eps: float = 0.05,
) -> dict[str, float]:
    """First-order SAL estimate ``eps * ||W0|| * ||grad||`` of each measured layer.

    Args:
        model: The model; left exactly as found (same guarantees as ``compute_sal``).
        batches: The probe set as (inputs, targets) pairs on the model's device.
        layers: Which layers (see :func:`~unlearn.sharpness.sal.measured_layers`).
        loss_fn: Mean loss of a batch.
        eps: Radius relative to ``||W0||``.

    Returns:
        ``{layer name: estimate}`` in the order of the measured layers.
    """
    if len(batches) == 0:
        raise ValueError("the first-order estimate needs at least one probe batch")
    names = measured_layers(model, layers)
    total = sum(int(y.shape[0]) for _, y in batches)
    with model_untouched(model):
        params = {n: p.detach() for n, p in model.named_parameters(remove_duplicate=False)}
        weights = {f"{n}.weight": params[f"{n}.weight"].clone().requires_grad_() for n in names}
        grads = [torch.zeros_like(w) for w in weights.values()]
        for x, y in batches:
            x = x.clone() if x.is_inference() else x
            loss = loss_fn(functional_call(model, {**params, **weights}, (x,)), y)
            batch_grads = torch.autograd.grad(loss * (y.shape[0] / total), list(weights.values()))
            for g, bg in zip(grads, batch_grads, strict=True):
                g += bg
    return {
        n: float(eps * params[f"{n}.weight"].norm() * g.norm())
        for n, g in zip(names, grads, strict=True)
    }


def spearman(a: Sequence[float] | Tensor | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation of two equally long sequences (``scipy.stats.spearmanr``).

    Ties get their average rank. Returns ``nan`` where either sequence is constant (or has
    fewer than two values): no ranking, no correlation. That case is caught here rather than
    left to scipy, which would return ``nan`` too but emit a ``ConstantInputWarning`` at every
    checkpoint where, e.g., every layer is flat (all SAL 0).
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman needs two 1-D sequences of one length: {x.shape}, {y.shape}")
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    return float(spearmanr(x, y).statistic)
