"""The interface a training-time defense implements; the tasks call these hooks in order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from unlearn.errors import ConfigError
from unlearn.loss_types import MeanLoss, PerSampleLoss


class Defense(nn.Module):
    """A training-time defense against unlearnable examples.

    A task applies its defenses to each *training* batch only (validation and test images are
    never transformed), in this order:

    1. :meth:`transform_images` of every defense (image-space defenses: JPEG, grayscale, ...);
    2. :meth:`mix` of every defense (batch mixing: CutMix, Mixup), which may turn the integer
       labels into soft targets ``[B, num_classes]``;
    3. :meth:`training_loss` of the first defense that returns a loss (adversarial training,
       UEraser); otherwise the task's plain loss.

    :func:`apply_defenses` does exactly this. Defaults are identities, so a defense overrides
    only what it changes. Images are never modified in place, so the data a batch came from
    (clean or poisoned) is never touched.

    Attributes:
        pixel_aligned: ``True`` when the defense keeps every pixel where it was and leaves the
            targets alone, so it is also correct for dense-prediction batches (segmentation,
            depth, normals), whose labels are images. Geometric and label-mixing defenses set
            it to ``False``.
    """

    pixel_aligned: bool = True

    def transform_images(self, images: Tensor) -> Tensor:
        """Transform a training batch ``float [B, C, H, W]`` in ``[0, 1]``; same shape/range."""
        return images

    def mix(self, images: Tensor, targets: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
        """Mix a batch; ``targets`` are ``int64 [B]`` or soft ``float [B, num_classes]``."""
        return images, targets

    def training_loss(
        self, model: nn.Module, images: Tensor, targets: Tensor, loss_fn: PerSampleLoss, epoch: int
    ) -> tuple[Tensor, Any] | None:
        """Return ``(loss, outputs)`` computed the defense's way, or ``None`` for the plain loss.

        Args:
            model: maps images ``[B, C, H, W]`` to outputs (logits ``[B, num_classes]`` for
                classification; anything ``loss_fn`` accepts for other tasks).
            images: the (transformed, mixed) batch ``[B, C, H, W]`` in ``[0, 1]``.
            targets: integer ``[B]`` or soft ``[B, num_classes]`` targets (or dense targets).
            loss_fn: ``loss_fn(outputs, targets)`` -> per-sample losses ``[B]``.
            epoch: current epoch (0-based), for schedules such as UEraser's repeat_epochs.

        Returns:
            The scalar loss to minimise and the model outputs it was computed from.
        """
        return None


def apply_defenses(
    defenses: Sequence[Defense],
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    loss_fn: PerSampleLoss,
    epoch: int,
    num_classes: int | None = None,
    batch_loss: MeanLoss | None = None,
) -> tuple[Tensor, Any, Tensor]:
    """Run the three hooks of ``defenses`` on one training batch and return its loss.

    Args:
        defenses: the defenses, in the configured order (may be empty).
        model: maps images to outputs.
        images: training images ``float [B, C, H, W]`` in ``[0, 1]``.
        targets: ``int64 [B]`` labels (or soft/dense targets).
        loss_fn: per-sample loss ``loss_fn(outputs, targets) -> [B]``.
        epoch: current epoch (0-based).
        num_classes: number of classes; needed only when a defense mixes labels.
        batch_loss: the scalar loss of a batch when no defense computes one; default: the
            mean of ``loss_fn``.

    Returns:
        ``(loss, outputs, targets)``: the scalar loss, the outputs it came from and the targets
        after mixing (soft ``[B, num_classes]`` when a mixing defense ran).
    """
    for defense in defenses:
        images = defense.transform_images(images)
    for defense in defenses:
        if type(defense).mix is not Defense.mix:
            if num_classes is None:
                raise ConfigError(f"{type(defense).__name__} mixes labels: pass num_classes")
            images, targets = defense.mix(images, targets, num_classes)
    for defense in defenses:
        result = defense.training_loss(model, images, targets, loss_fn, epoch)
        if result is not None:
            loss, outputs = result
            return loss, outputs, targets
    outputs = model(images)
    if batch_loss is not None:
        return batch_loss(outputs, targets), outputs, targets
    return loss_fn(outputs, targets).mean(), outputs, targets


def to_uint8(images: Tensor) -> Tensor:
    """``float [..., C, H, W]`` in ``[0, 1]`` -> ``uint8`` (rounded)."""
    return images.detach().clamp(0, 1).mul(255).round().to(torch.uint8)


def to_float(images: Tensor, like: Tensor) -> Tensor:
    """``uint8`` images -> floats in ``[0, 1]`` with ``like``'s dtype and device."""
    return images.to(device=like.device, dtype=like.dtype).div(255)
