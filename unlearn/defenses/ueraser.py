"""UEraser (Qin et al. 2023): adversarial augmentations that erase unlearnable shortcuts.

Each training image gets random plasma brightness and contrast, a random channel order and
TrivialAugment; for the first ``repeat_epochs`` the loss of each sample is the largest over
``num_draws`` independent augmentations (an error-maximising augmentation), plainly
averaged over one draw afterwards. ``repeat_epochs`` 0 is UEraser-Lite, 50 the standard
UEraser, 300 UEraser-Max.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from unlearn.defenses.base import Defense, LossFn, to_float, to_uint8
from unlearn.defenses.iss import jpeg

_CROSS = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
_GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def plasma_fractal(
    count: int, height: int, width: int, roughness: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Plasma fractals by the diamond-square algorithm, each min-max normalised to ``[0, 1]``.

    The grid starts as 2 x 2 random corners and doubles its resolution per level: each new
    centre is the mean of its 4 corners and each new edge point the mean of its 3 or 4
    neighbours, plus uniform noise whose amplitude is multiplied by ``roughness`` per level
    (low roughness: smooth blobs; high: fine texture). The grid is then cropped to size.

    Args:
        count: number of fractals.
        height: rows of each fractal.
        width: columns of each fractal.
        roughness: ``[count]`` values in ``(0, 1)``, on the device wanted for the output.
        generator: random stream (default: torch's global one).

    Returns:
        ``float [count, height, width]``, each map spanning ``[0, 1]``.
    """
    device, dtype = roughness.device, roughness.dtype

    def noise(rows: int, cols: int) -> Tensor:
        uniform = torch.rand(count, rows, cols, generator=generator, device=device, dtype=dtype)
        return 2 * uniform - 1

    levels = max(0, math.ceil(math.log2(max(height, width, 2) - 1)))
    grid = noise(2, 2)
    amplitude = torch.ones(count, 1, 1, device=device, dtype=dtype)
    cross = _CROSS.to(device=device, dtype=dtype).view(1, 1, 3, 3)
    for _ in range(levels):
        amplitude = amplitude * roughness.view(-1, 1, 1)
        n = grid.shape[-1]
        m = 2 * n - 1
        finer = grid.new_zeros(count, m, m)
        finer[:, ::2, ::2] = grid
        corners = grid[:, :-1, :-1] + grid[:, :-1, 1:] + grid[:, 1:, :-1] + grid[:, 1:, 1:]
        finer[:, 1::2, 1::2] = corners / 4 + amplitude * noise(n - 1, n - 1)
        # edge points: every 4-neighbour is a corner or a centre, so a plain sum is right
        sums = F.conv2d(finer.unsqueeze(1), cross, padding=1).squeeze(1)
        counts = F.conv2d(torch.ones_like(finer[:1]).unsqueeze(1), cross, padding=1).squeeze(1)
        edge = torch.zeros(m, m, dtype=torch.bool, device=device)
        edge[::2, 1::2] = True
        edge[1::2, ::2] = True
        finer = torch.where(edge, sums / counts + amplitude * noise(m, m), finer)
        grid = finer
    grid = grid[:, :height, :width]
    low = grid.amin(dim=(1, 2), keepdim=True)
    high = grid.amax(dim=(1, 2), keepdim=True)
    return (grid - low) / (high - low).clamp_min(1e-12)


def _uniform(batch: int, bounds: tuple[float, float], like: Tensor) -> Tensor:
    low, high = bounds
    return torch.rand(batch, device=like.device, dtype=like.dtype) * (high - low) + low


def _chosen(batch: int, p: float, like: Tensor) -> Tensor:
    """``bool [B, 1, 1, 1]``: which samples a transform with probability ``p`` applies to."""
    return (torch.rand(batch, device=like.device) < p).view(-1, 1, 1, 1)


def plasma_brightness(
    images: Tensor, roughness: tuple[float, float], intensity: tuple[float, float], p: float = 1.0
) -> Tensor:
    """Add ``intensity * (2 * plasma - 1)`` (one fractal per image and channel), clipped.

    Args:
        images: ``float [B, C, H, W]`` in ``[0, 1]``.
        roughness: range of the per-image fractal roughness.
        intensity: range of the per-image strength.
        p: probability that an image is changed.
    """
    batch, channels, height, width = images.shape
    rough = _uniform(batch, roughness, images).repeat_interleave(channels)
    plasma = plasma_fractal(batch * channels, height, width, rough).view_as(images)
    strength = _uniform(batch, intensity, images).view(-1, 1, 1, 1)
    changed = (images + strength * (2 * plasma - 1)).clamp(0, 1)
    return torch.where(_chosen(batch, p, images), changed, images)


def plasma_contrast(images: Tensor, roughness: tuple[float, float], p: float = 1.0) -> Tensor:
    """Scale the contrast around 0.5 by ``4 * plasma`` (one fractal per image and channel).

    Args:
        images: ``float [B, C, H, W]`` in ``[0, 1]``.
        roughness: range of the per-image fractal roughness.
        p: probability that an image is changed.
    """
    batch, channels, height, width = images.shape
    rough = _uniform(batch, roughness, images).repeat_interleave(channels)
    plasma = plasma_fractal(batch * channels, height, width, rough).view_as(images)
    changed = ((images - 0.5) * 4 * plasma + 0.5).clamp(0, 1)
    return torch.where(_chosen(batch, p, images), changed, images)


def channel_shuffle(images: Tensor, p: float = 0.5) -> Tensor:
    """Randomly permute the channels of each image with probability ``p`` (1 channel: no-op)."""
    batch, channels = images.shape[:2]
    if channels == 1:
        return images
    order = torch.rand(batch, channels, device=images.device).argsort(dim=1)
    keep = torch.rand(batch, device=images.device) >= p
    order[keep] = torch.arange(channels, device=images.device)
    index = order.view(batch, channels, 1, 1).expand_as(images)
    return images.gather(1, index)


class _PhotometricTrivialAugmentWide(v2.TrivialAugmentWide):
    """TrivialAugmentWide without its geometric operations (pixel-aligned, for dense tasks)."""

    _AUGMENTATION_SPACE = {
        name: op
        for name, op in v2.TrivialAugmentWide._AUGMENTATION_SPACE.items()
        if name not in _GEOMETRIC_OPS
    }


class UEraser(Defense):
    """UEraser's augmentations and its max-over-draws loss.

    Per image and draw: (optionally) JPEG at a random quality in ``jpeg_quality``, plasma
    brightness and plasma contrast (each with probability ``plasma_p``), a channel shuffle
    with probability ``shuffle_p``, then torchvision's ``TrivialAugmentWide`` on the 8-bit
    image. For TAP and AR poisons use ``jpeg_quality: [10, 99]`` and ``plasma_p: 0.8``.

    ``plasma_p`` defaults to 0.5, the value in the authors' public code (lafeat/ueraser and
    APBench's ``defense/ueraser.py``, which produced the APBench numbers); descriptions of
    UEraser that give p = 1 are reachable with ``plasma_p: 1.0``. At 1.0 the max-over-5 loss does
    not converge on the built-in digits in 15 epochs (see ``docs/defenses.md``).

    With ``repeat_epochs > 0`` the augmentations happen inside :meth:`training_loss` (they
    must be drawn ``num_draws`` times from the same un-augmented images), so
    :meth:`transform_images` is the identity and the task must call :meth:`training_loss`.
    With ``repeat_epochs == 0`` (UEraser-Lite) it is a plain image transform: one draw in
    :meth:`transform_images` and the task's own loss, so it also works in tasks that only
    transform images (multi-task; use ``geometric=False`` there). :meth:`augment` is the
    single draw as a function.

    Args:
        repeat_epochs: epochs (from 0) that use the max-over-draws loss; 0 = UEraser-Lite,
            50 = UEraser, 300 = UEraser-Max.
        num_draws: augmented copies per image in those epochs (K).
        roughness: range of the plasma-brightness fractal roughness.
        intensity: range of the plasma-brightness strength.
        contrast_roughness: range of the plasma-contrast fractal roughness.
        plasma_p: probability of each plasma transform.
        shuffle_p: probability of a channel shuffle.
        trivial_augment: apply TrivialAugmentWide.
        geometric: keep TrivialAugment's geometric operations (shear, translate, rotate); set
            ``False`` for dense-prediction tasks, whose labels would have to move too.
        jpeg_quality: inclusive range of a random JPEG quality applied first; ``None``: no JPEG.
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
            raise ValueError(
                f"need repeat_epochs >= 0 and num_draws >= 1, got {repeat_epochs}, {num_draws}"
            )
        for name, (low, high) in {
            "roughness": roughness,
            "intensity": intensity,
            "contrast_roughness": contrast_roughness,
        }.items():
            if not 0 <= low <= high <= 1:
                raise ValueError(f"{name} must be a range within [0, 1], got {(low, high)}")
        if not (0 <= plasma_p <= 1 and 0 <= shuffle_p <= 1):
            raise ValueError(
                f"plasma_p and shuffle_p must be in [0, 1], got {plasma_p}, {shuffle_p}"
            )
        if jpeg_quality is not None and not 1 <= jpeg_quality[0] <= jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality must be a range within 1..100, got {jpeg_quality}")
        self.repeat_epochs = repeat_epochs
        self.num_draws = num_draws
        self.roughness = tuple(roughness)
        self.intensity = tuple(intensity)
        self.contrast_roughness = tuple(contrast_roughness)
        self.plasma_p = plasma_p
        self.shuffle_p = shuffle_p
        self.geometric = geometric
        self.jpeg_quality = tuple(jpeg_quality) if jpeg_quality is not None else None
        self.trivial_augment: v2.Transform | None = None
        if trivial_augment:
            kind = v2.TrivialAugmentWide if geometric else _PhotometricTrivialAugmentWide
            self.trivial_augment = kind()

    @property
    def pixel_aligned(self) -> bool:  # type: ignore[override]
        """Whether every pixel stays in place (no geometric TrivialAugment operations)."""
        return self.trivial_augment is None or not self.geometric

    def augment(self, images: Tensor) -> Tensor:
        """One independent augmentation per image of ``float [B, C, H, W]`` in ``[0, 1]``."""
        images = images.detach()
        if self.jpeg_quality is not None:
            low, high = self.jpeg_quality
            qualities = torch.randint(low, high + 1, (images.shape[0],)).tolist()
            images = torch.cat([jpeg(x[None], q) for x, q in zip(images, qualities, strict=True)])
        images = plasma_brightness(images, self.roughness, self.intensity, self.plasma_p)
        images = plasma_contrast(images, self.contrast_roughness, self.plasma_p)
        images = channel_shuffle(images, self.shuffle_p)
        if self.trivial_augment is not None:
            pixels = to_uint8(images)
            pixels = torch.stack([self.trivial_augment(x) for x in pixels])
            images = to_float(pixels, images)
        return images

    def transform_images(self, images: Tensor) -> Tensor:
        """One draw for UEraser-Lite (``repeat_epochs == 0``); otherwise the identity."""
        return self.augment(images) if self.repeat_epochs == 0 else images

    def training_loss(
        self, model: nn.Module, images: Tensor, targets: Tensor, loss_fn: LossFn, epoch: int
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
        """The settings, as printed with the module."""
        return (
            f"repeat_epochs={self.repeat_epochs}, num_draws={self.num_draws}, "
            f"jpeg_quality={self.jpeg_quality}, plasma_p={self.plasma_p}, "
            f"shuffle_p={self.shuffle_p}, geometric={self.geometric}"
        )


def max_over_draws_loss(
    model: nn.Module, copies: list[Tensor], targets: Tensor, loss_fn: LossFn
) -> tuple[Tensor, Any]:
    """Mean over samples of each sample's largest loss over its augmented copies.

    The ``K`` copies go through the model as one batch of ``K * B`` images, as in the
    authors' code (batch norm normalises over all copies together).

    Args:
        model: maps images to outputs.
        copies: ``K`` augmented versions ``[B, C, H, W]`` of the same batch.
        targets: targets of the batch (``[B]`` or ``[B, ...]``).
        loss_fn: per-sample loss ``[B]``.

    Returns:
        The scalar loss and the outputs of each sample's worst copy (logits ``[B, classes]``;
        for non-tensor outputs, those of all ``K * B`` images).
    """
    draws, batch = len(copies), copies[0].shape[0]
    outputs = model(torch.cat(copies))
    tiled = targets.repeat(draws, *([1] * (targets.ndim - 1)))
    losses = loss_fn(outputs, tiled).view(draws, batch)
    worst, which = losses.max(dim=0)
    if isinstance(outputs, Tensor):
        outputs = outputs.view(draws, batch, *outputs.shape[1:])
        outputs = outputs[which, torch.arange(batch, device=which.device)]
    return worst.mean(), outputs
