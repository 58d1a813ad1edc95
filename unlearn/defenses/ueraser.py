"""UEraser (Qin et al. 2023): adversarial augmentations that erase unlearnable shortcuts.

The augmentations are the authors' kornia pipeline: random plasma brightness, plasma
contrast, a random channel order and kornia's TrivialAugment. For the first
``repeat_epochs`` the loss of each sample is the largest over ``num_draws`` independent
augmentations (an error-maximising augmentation), plainly averaged over one draw afterwards.
``repeat_epochs`` 0 is UEraser-Lite, 50 the standard UEraser, 300 UEraser-Max.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kornia.augmentation as K
import torch
from kornia.augmentation.auto import TrivialAugment
from torch import Tensor, nn

from unlearn.defenses.base import Defense
from unlearn.defenses.iss import jpeg
from unlearn.errors import ConfigError
from unlearn.loss_types import PerSampleLoss

#: kornia's default TrivialAugment policy without its geometric operations (rotate, shear,
#: translate), same magnitude ranges: ``[(op name, low, high)]`` per candidate.
PHOTOMETRIC_POLICY: list[list[tuple[str, float, float]]] = [
    [("auto_contrast", 0, 1)],
    [("equalize", 0, 1)],
    [("posterize", 0.0, 4)],
    [("solarize", 0.0, 1.0)],
    [("contrast", 0.1, 1.9)],
    [("brightness", 0.1, 1.9)],
    [("sharpness", 0.1, 1.9)],
]


class UEraser(Defense):
    """UEraser's augmentations (the authors' kornia pipeline) and its max-over-draws loss.

    One draw of :meth:`augment` is, in this order (as in lafeat/ueraser and APBench's
    ``defense/ueraser.py``): optionally JPEG at one random quality in ``jpeg_quality`` for the
    batch (APBench's ``UEraser_jpeg``), then a ``kornia.augmentation.AugmentationSequential`` of
    ``RandomPlasmaBrightness(roughness, intensity, p=plasma_p)``,
    ``RandomPlasmaContrast(contrast_roughness, p=plasma_p)``,
    ``RandomChannelShuffle(p=shuffle_p)`` and ``kornia.augmentation.auto.TrivialAugment``
    (kornia's 12-operation policy; :data:`PHOTOMETRIC_POLICY` with ``geometric=False``). The
    plasma and shuffle parameters are drawn per image; TrivialAugment, by kornia's convention,
    picks one operation per call for the whole batch and draws its magnitude per image. On
    1-channel images the channel shuffle is the identity; the other operations act on the one
    channel. Randomness comes from torch's global generator (seeded by ``seed_everything``).

    ``plasma_p`` defaults to 0.5, the value in lafeat/ueraser; APBench's ``UEraser`` uses 1.0
    (``plasma_p: 1.0``) and its ``UEraser_jpeg``, for TAP and AR poisons,
    ``jpeg_quality: [10, 99]`` with ``plasma_p: 0.8``.

    With ``repeat_epochs > 0`` the augmentations happen inside :meth:`training_loss` (they
    must be drawn ``num_draws`` times from the same un-augmented images), so
    :meth:`transform_images` is the identity and the task must call :meth:`training_loss`.
    Each of the ``num_draws`` copies is its own call of the pipeline (as in APBench's
    ``train.py``, so each copy has its own TrivialAugment operation). With
    ``repeat_epochs == 0`` (UEraser-Lite) it is a plain image transform: one draw in
    :meth:`transform_images` and the task's own loss, so it also works in tasks that only
    transform images (multi-task; use ``geometric=False`` there).

    Args:
        repeat_epochs: epochs (from 0) that use the max-over-draws loss; 0 = UEraser-Lite,
            50 = UEraser, 300 = UEraser-Max.
        num_draws: augmented copies per image in those epochs (K).
        roughness: range of the plasma-brightness fractal roughness.
        intensity: range of the plasma-brightness strength.
        contrast_roughness: range of the plasma-contrast fractal roughness.
        plasma_p: probability of each plasma transform, per image.
        shuffle_p: probability of a channel shuffle, per image.
        trivial_augment: apply kornia's TrivialAugment.
        geometric: keep TrivialAugment's geometric operations (rotate, shear, translate); set
            ``False`` for dense-prediction tasks, whose labels would have to move too.
        jpeg_quality: inclusive range of a random JPEG quality applied first (one quality per
            draw); ``None``: no JPEG.
    """

    def __init__(
        self,
        repeat_epochs: int = 50,
        num_draws: int = 5,
        roughness: tuple[float, float] = (0.3, 0.7),
        intensity: tuple[float, float] = (0.5, 1.0),
        contrast_roughness: tuple[float, float] = (0.3, 0.7),
        plasma_p: float = 0.5,
        shuffle_p: float = 0.5,
        trivial_augment: bool = True,
        geometric: bool = True,
        jpeg_quality: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if repeat_epochs < 0 or num_draws < 1:
            raise ConfigError(
                f"need repeat_epochs >= 0 and num_draws >= 1, got {repeat_epochs}, {num_draws}"
            )
        for name, (low, high) in {
            "roughness": roughness,
            "intensity": intensity,
            "contrast_roughness": contrast_roughness,
        }.items():
            if not 0 <= low <= high <= 1:
                raise ConfigError(f"{name} must be a range within [0, 1], got {(low, high)}")
        if not (0 <= plasma_p <= 1 and 0 <= shuffle_p <= 1):
            raise ConfigError(
                f"plasma_p and shuffle_p must be in [0, 1], got {plasma_p}, {shuffle_p}"
            )
        if jpeg_quality is not None and not 1 <= jpeg_quality[0] <= jpeg_quality[1] <= 100:
            raise ConfigError(f"jpeg_quality must be a range within 1..100, got {jpeg_quality}")
        self.repeat_epochs = repeat_epochs
        self.num_draws = num_draws
        self.plasma_p = plasma_p
        self.shuffle_p = shuffle_p
        self.geometric = geometric
        self.trivial_augment = trivial_augment
        self.jpeg_quality = tuple(jpeg_quality) if jpeg_quality is not None else None
        steps: list[nn.Module] = [
            K.RandomPlasmaBrightness(
                roughness=tuple(roughness), intensity=tuple(intensity), p=plasma_p, keepdim=True
            ),
            K.RandomPlasmaContrast(roughness=tuple(contrast_roughness), p=plasma_p, keepdim=True),
            K.RandomChannelShuffle(p=shuffle_p, keepdim=True),
        ]
        if trivial_augment:
            steps.append(TrivialAugment(policy=None if geometric else PHOTOMETRIC_POLICY))
        self.pipeline = K.AugmentationSequential(*steps)

    @property
    def pixel_aligned(self) -> bool:  # type: ignore[override]
        """Whether every pixel stays in place (no geometric TrivialAugment operations)."""
        return not self.trivial_augment or not self.geometric

    def augment(self, images: Tensor) -> Tensor:
        """One draw of the augmentations.

        Args:
            images: ``float [B, C, H, W]`` in ``[0, 1]``, ``C`` 1 or 3, on any device.

        Returns:
            New augmented images (no gradient), same shape, dtype, device and range.
        """
        images = images.detach()
        if self.jpeg_quality is not None:
            low, high = self.jpeg_quality
            images = jpeg(images, int(torch.randint(low, high + 1, ()).item()))
        # clamped: kornia's bilinear warps can overshoot [0, 1] by a float rounding (~1e-7)
        return self.pipeline(images).clamp(0, 1)

    def transform_images(self, images: Tensor) -> Tensor:
        """One draw for UEraser-Lite (``repeat_epochs == 0``); otherwise the identity."""
        return self.augment(images) if self.repeat_epochs == 0 else images

    def training_loss(
        self, model: nn.Module, images: Tensor, targets: Any, loss_fn: PerSampleLoss, epoch: int
    ) -> tuple[Tensor, Any] | None:
        """Max-over-draws loss while ``epoch < repeat_epochs``, else the loss of one draw.

        ``None`` (the task's plain loss) for UEraser-Lite, whose draw is already made.
        """
        if self.repeat_epochs == 0:
            return None
        draws = self.num_draws if epoch < self.repeat_epochs else 1
        copies = [self.augment(images) for _ in range(draws)]
        return max_over_draws_loss(model, copies, targets, loss_fn)

    def extra_repr(self) -> str:
        """The settings that are not visible in the kornia pipeline printed below."""
        return (
            f"repeat_epochs={self.repeat_epochs}, num_draws={self.num_draws}, "
            f"jpeg_quality={self.jpeg_quality}, geometric={self.geometric}"
        )


def _tile(targets: Any, draws: int) -> Any:
    """``targets`` repeated ``draws`` times along the batch (a tensor or a dict of them)."""
    if isinstance(targets, Mapping):
        return {key: _tile(value, draws) for key, value in targets.items()}
    return targets.repeat(draws, *([1] * (targets.ndim - 1)))


def _worst(outputs: Any, which: Tensor, draws: int, batch: int) -> Any:
    """Each sample's outputs of its worst copy (a tensor or a dict of them)."""
    if isinstance(outputs, Mapping):
        return {key: _worst(value, which, draws, batch) for key, value in outputs.items()}
    outputs = outputs.view(draws, batch, *outputs.shape[1:])
    return outputs[which, torch.arange(batch, device=which.device)]


def max_over_draws_loss(
    model: nn.Module, copies: list[Tensor], targets: Any, loss_fn: PerSampleLoss
) -> tuple[Tensor, Any]:
    """Mean over samples of each sample's largest loss over its augmented copies.

    The ``K`` copies go through the model as one batch of ``K * B`` images, as in
    lafeat/ueraser's ``adversarial_augmentation_loss`` (batch norm normalises over all copies
    together).

    Args:
        model: maps images to outputs (a tensor ``[B, ...]`` or a dict of them, e.g. one
            output per task of a multi-task model).
        copies: ``K`` augmented versions ``[B, C, H, W]`` of the same batch.
        targets: targets of the batch (``[B]`` or ``[B, ...]``, or a dict of them).
        loss_fn: per-sample loss ``[B]`` (a multi-task model's: the summed task losses).

    Returns:
        The scalar loss and the outputs of each sample's worst copy (same structure as the
        model's outputs, batch ``B``).
    """
    draws, batch = len(copies), copies[0].shape[0]
    outputs = model(torch.cat(copies))
    losses = loss_fn(outputs, _tile(targets, draws)).view(draws, batch)
    worst, which = losses.max(dim=0)
    return worst.mean(), _worst(outputs, which, draws, batch)
