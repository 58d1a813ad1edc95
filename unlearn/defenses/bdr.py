"""Bit-depth reduction (BDR): posterize every training image."""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from unlearn.defenses.base import Defense, to_float, to_uint8
from unlearn.errors import ConfigError


class BitDepthReduction(Defense):
    """Keep the ``bits`` most significant bits of each 8-bit pixel (2 bits: 4 levels), p = 1.

    torchvision's ``posterize`` on the 8-bit image, as on a PIL image in APBench: at 2 bits
    the pixel values become ``{0, 64, 128, 192} / 255``.

    Args:
        bits: bits kept per channel, 1..8.
    """

    def __init__(self, bits: int = 2) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise ConfigError(f"bits must be in 1..8, got {bits}")
        self.bits = bits

    def transform_images(self, images: Tensor) -> Tensor:
        """Posterize ``float [B, C, H, W]`` images in ``[0, 1]``."""
        with torch.no_grad():
            return to_float(TF.posterize(to_uint8(images), self.bits), images)

    def extra_repr(self) -> str:
        """The settings, as printed with the module."""
        return f"bits={self.bits}"
