"""The cross-entropy objectives of EM, REM and TAP on top of the shared PGD loop.

Images are ``float [B, C, H, W]`` in ``[0, 1]``; a perturbation ``delta`` has the same shape.
Every function here keeps ``images + delta`` inside ``[0, 1]`` (``delta`` is the effective
perturbation, so the clamp at training time changes nothing). The loop and the projections
are :mod:`unlearn.pgd`'s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearn.pgd import pgd, project_perturbation

#: a differentiable random augmentation ``(images [B, C, H, W]) -> images``
Augment = Callable[[Tensor], Tensor]


def project_linf(images: Tensor, delta: Tensor, eps: float) -> Tensor:
    """Clip ``delta`` to ``[-eps, eps]`` and ``images + delta`` to ``[0, 1]``."""
    return project_perturbation(images, delta, eps, "linf")


def random_start(images: Tensor, eps: float, generator: torch.Generator) -> Tensor:
    """Uniform noise in the L_inf ball (drawn on the CPU from ``generator``), projected."""
    noise = torch.rand(images.shape, generator=generator).mul_(2).sub_(1).mul_(eps)
    return project_linf(images, noise.to(images.device), eps)


def pgd_linf(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    delta: Tensor,
    eps: float,
    step_size: float,
    steps: int,
    minimize: bool,
    augment: Augment | None = None,
    eot_samples: int = 1,
) -> Tensor:
    """Signed-gradient steps on the cross-entropy w.r.t. ``delta`` in an L_inf ball.

    Args:
        model: images -> logits; its mode (train/eval) is left as the caller set it.
        images: clean ``[B, C, H, W]``.
        labels: ``int64 [B]`` labels the loss is computed for (targets, for a targeted attack).
        delta: starting perturbation ``[B, C, H, W]``.
        eps: L_inf radius.
        step_size: size of each signed step.
        steps: number of steps.
        minimize: descend (error-minimising, targeted) or ascend (adversarial).
        augment: random differentiable augmentation applied before the model (EOT).
        eot_samples: augmentation draws whose gradients are summed per step.

    Returns:
        The perturbation after ``steps`` steps, detached.
    """

    def gradient(delta: Tensor) -> Tensor:
        # one backward per draw (not one of the summed losses): memory stays that of one draw
        delta = delta.detach().requires_grad_(True)
        grad = torch.zeros_like(delta)
        for _ in range(eot_samples):
            inputs = images + delta
            if augment is not None:
                inputs = augment(inputs)
            loss = F.cross_entropy(model(inputs), labels)
            grad += torch.autograd.grad(loss, delta)[0]
        return grad

    return pgd(gradient, images, delta, eps, step_size, steps, "linf", minimize=minimize)


@torch.no_grad()
def per_sample_loss(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of each sample, ``[B]``."""
    return F.cross_entropy(model(images), labels, reduction="none")


class ShiftFlip:
    """Differentiable random translation (zero padding) and horizontal flip, per sample.

    The differentiable counterpart of random crop + flip: gradients flow to the input pixels.

    Args:
        max_shift: largest translation in pixels (the crop's padding); 0 disables it.
        flip: flip half of the samples horizontally.
        generator: source of the random draws (CPU).
    """

    def __init__(self, max_shift: int, flip: bool, generator: torch.Generator) -> None:
        self.max_shift = max_shift
        self.flip = flip
        self.generator = generator

    def __call__(self, images: Tensor) -> Tensor:
        """Augment ``[B, C, H, W]``; same shape."""
        batch, _, height, width = images.shape
        if self.flip:
            flips = torch.rand(batch, generator=self.generator) < 0.5
            images = torch.where(flips.to(images.device).view(-1, 1, 1, 1), images.flip(-1), images)
        p = self.max_shift
        if p > 0:
            shifts = torch.randint(0, 2 * p + 1, (2, batch), generator=self.generator)
            padded = F.pad(images, (p, p, p, p))
            rows = (torch.arange(height).view(1, -1) + shifts[0].view(-1, 1)).to(images.device)
            cols = (torch.arange(width).view(1, -1) + shifts[1].view(-1, 1)).to(images.device)
            sample = torch.arange(batch, device=images.device).view(-1, 1, 1)
            # [B, H, W, C] -> [B, C, H, W]
            images = padded.permute(0, 2, 3, 1)[sample, rows[:, :, None], cols[:, None, :]]
            images = images.permute(0, 3, 1, 2)
        return images


def make_augment(max_shift: int, flip: bool, generator: torch.Generator) -> Augment | None:
    """A :class:`ShiftFlip`, or ``None`` when it would do nothing."""
    if max_shift <= 0 and not flip:
        return None
    return ShiftFlip(max_shift, flip, generator)
