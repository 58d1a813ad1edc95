"""Projected gradient steps and the norm-ball projections they use.

One loop serves every place that perturbs within a budget: adversarial training
(:mod:`unlearn.defenses.adversarial`), the error-minimising and adversarial noise of the
poisons (:mod:`unlearn.poisons.pgd`), and the weight balls of SAL
(:mod:`unlearn.sharpness.sal`) use :func:`project_to_ball`.

Images are ``float [B, C, H, W]`` in ``[0, 1]``; a perturbation ``delta`` has the same shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

Norm = Literal["linf", "l2"]
#: ``gradient(delta) -> d objective / d delta``, same shape as ``delta``
Gradient = Callable[[Tensor], Tensor]


def sample_norms(x: Tensor) -> Tensor:
    """L2 norm of each sample of ``[B, ...]``, shaped ``[B, 1, ..., 1]`` for broadcasting.

    Clamped below at 1e-12 so that dividing by it is safe.
    """
    return x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))


def project_to_ball(
    x: Tensor, center: Tensor | float, radius: Tensor | float, norm: Norm, per_sample: bool
) -> Tensor:
    """Project ``x`` onto the ``norm`` ball of ``radius`` around ``center``.

    Args:
        x: the tensor to project, ``[B, ...]`` when ``per_sample``.
        center: centre of the ball (broadcastable to ``x``).
        radius: radius of the ball, in the units of ``x``.
        norm: ``"linf"`` (clip each element) or ``"l2"`` (scale the difference down).
        per_sample: one ball per sample (the first dimension) or one for the whole tensor
            (L2 only; L_inf is element-wise either way).

    Returns:
        The projection, same shape as ``x``. For L2, a point inside the ball is returned
        bit-exact (not recomputed as ``center + (x - center)``).
    """
    if norm == "linf":
        return torch.clamp(x, center - radius, center + radius)
    diff = x - center
    distance = sample_norms(diff) if per_sample else diff.norm()
    return torch.where(distance > radius, center + diff * (radius / distance), x)


def clip_to_images(images: Tensor, delta: Tensor) -> Tensor:
    """The effective perturbation: ``delta`` with ``images + delta`` clipped to ``[0, 1]``."""
    return (images + delta).clamp(0.0, 1.0) - images


def project_perturbation(images: Tensor, delta: Tensor, eps: float, norm: Norm) -> Tensor:
    """Project ``delta`` onto the ``eps`` ball (per sample) and keep ``images + delta`` valid."""
    return clip_to_images(images, project_to_ball(delta, 0.0, eps, norm, per_sample=True))


def pgd(
    gradient: Gradient,
    images: Tensor,
    delta: Tensor,
    eps: float,
    step_size: float,
    steps: int,
    norm: Norm = "linf",
    minimize: bool = False,
) -> Tensor:
    """Projected gradient steps on a perturbation of ``images``.

    Each step moves ``delta`` by ``step_size`` along the signed gradient (L_inf) or the
    per-sample normalised gradient (L2) of the objective, ascending or descending, then
    projects it onto the ``eps`` ball and clips ``images + delta`` to ``[0, 1]``.

    Args:
        gradient: ``gradient(delta)``: the objective's gradient with respect to ``delta``
            (the caller decides the objective: a loss, an average over augmentations, ...).
        images: clean ``[B, C, H, W]`` in ``[0, 1]``.
        delta: starting perturbation ``[B, C, H, W]`` (already within the budget).
        eps: radius of the ball, in pixel units of ``[0, 1]`` (L_inf) or L2 over a sample.
        step_size: size of each step, same units.
        steps: number of steps.
        norm: ``"linf"`` or ``"l2"``.
        minimize: descend (error-minimising noise) instead of ascend (adversarial).

    Returns:
        The effective perturbation after ``steps`` steps, detached.
    """
    sign = -1.0 if minimize else 1.0
    delta = delta.detach()
    for _ in range(steps):
        grad = gradient(delta)
        direction = grad.sign() if norm == "linf" else grad / sample_norms(grad)
        delta = project_perturbation(images, delta + sign * step_size * direction, eps, norm)
    return delta.detach()
