"""Gaussian blur of every training image."""

from __future__ import annotations

import torchvision.transforms.v2.functional as TF
from torch import Tensor

from unlearn.defenses.base import Defense
from unlearn.errors import ConfigError


class GaussianBlur(Defense):
    """Blur with a Gaussian kernel (APBench default: kernel 3, sigma 0.1), reflect padding.

    Note that at sigma 0.1 the off-centre weights of a 3-tap kernel are ``exp(-50)``, so the
    published default leaves images unchanged to float precision; raise ``sigma`` (e.g. 1.0)
    for a blur that does something.

    Args:
        kernel_size: odd kernel side, pixels.
        sigma: standard deviation, pixels.
    """

    def __init__(self, kernel_size: int = 3, sigma: float = 0.1) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd and positive, got {kernel_size}")
        if sigma <= 0:
            raise ConfigError(f"sigma must be positive, got {sigma}")
        self.kernel_size = kernel_size
        self.sigma = sigma

    def transform_images(self, images: Tensor) -> Tensor:
        """Blur ``float [B, C, H, W]`` images."""
        return TF.gaussian_blur(images.detach(), [self.kernel_size] * 2, [self.sigma] * 2)

    def extra_repr(self) -> str:
        """The settings, as printed with the module."""
        return f"kernel_size={self.kernel_size}, sigma={self.sigma}"
