"""Cutout (DeVries & Taylor 2017): zero a random square of every training image."""

from __future__ import annotations

import torch
from torch import Tensor

from unlearn.defenses.base import Defense
from unlearn.errors import ConfigError


def cutout_mask(
    batch: int, height: int, width: int, size: int, inside: bool, device: torch.device
) -> Tensor:
    """One random square per image: ``bool [batch, 1, height, width]``, ``True`` in the hole.

    Args:
        batch: number of images.
        height: image height, pixels.
        width: image width, pixels.
        size: side of the square, pixels.
        inside: place the whole square inside the image; otherwise its centre is uniform over
            the image and the square is clipped at the border (DeVries & Taylor, APBench).
        device: where to build the mask.
    """
    if inside:
        top = torch.randint(0, max(height - size, 0) + 1, (batch,), device=device)
        left = torch.randint(0, max(width - size, 0) + 1, (batch,), device=device)
    else:
        top = torch.randint(0, height, (batch,), device=device) - size // 2
        left = torch.randint(0, width, (batch,), device=device) - size // 2
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    top, left = top.view(-1, 1, 1), left.view(-1, 1, 1)
    in_rows = (rows >= top) & (rows < top + size)
    in_cols = (cols >= left) & (cols < left + size)
    return (in_rows & in_cols).unsqueeze(1)


class Cutout(Defense):
    """Zero ``holes`` random ``size`` x ``size`` squares in each training image (default 1 x 16).

    Each image draws its own positions. By default a hole's centre is uniform over the image
    and the hole is clipped at the border, as in the reference implementation; ``inside=True``
    keeps every hole whole.

    Args:
        size: side of a hole, pixels.
        holes: holes per image.
        inside: keep holes entirely inside the image.
    """

    def __init__(self, size: int = 16, holes: int = 1, inside: bool = False) -> None:
        super().__init__()
        if size < 1 or holes < 1:
            raise ConfigError(f"size and holes must be >= 1, got size={size}, holes={holes}")
        self.size = size
        self.holes = holes
        self.inside = inside

    def transform_images(self, images: Tensor) -> Tensor:
        """Cut holes into ``float [B, C, H, W]`` images (returns a new tensor)."""
        batch, _, height, width = images.shape
        keep = torch.ones(batch, 1, height, width, dtype=torch.bool, device=images.device)
        for _ in range(self.holes):
            keep &= ~cutout_mask(batch, height, width, self.size, self.inside, images.device)
        return images.detach() * keep

    def extra_repr(self) -> str:
        """The settings, as printed with the module."""
        return f"size={self.size}, holes={self.holes}, inside={self.inside}"
