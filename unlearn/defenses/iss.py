"""ISS (image shortcut squeezing, Liu et al. 2023): JPEG compression and grayscale."""

from __future__ import annotations

import io

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor

from unlearn.defenses.base import Defense, to_float, to_uint8
from unlearn.errors import ConfigError


def _jpeg_round_trip(pixels: Tensor, quality: int) -> Tensor:
    """Encode one ``uint8 [C, H, W]`` CPU image (C 1 or 3) as JPEG with Pillow and decode it."""
    array = pixels.permute(1, 2, 0).numpy()
    # a 1-channel image is encoded as a grayscale JPEG (mode "L"), 3 channels as RGB (4:2:0)
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    stream = io.BytesIO()
    image.save(stream, format="JPEG", quality=quality)
    stream.seek(0)
    with Image.open(stream) as decoded:
        out = np.array(decoded, dtype=np.uint8)
    return torch.from_numpy(out).view(*array.shape).permute(2, 0, 1)


def jpeg(images: Tensor, quality: int) -> Tensor:
    """JPEG-compress and decode each image (Pillow's libjpeg codec, on the CPU).

    Each image is its own JPEG file (8x8 blocks from its top-left corner; RGB with 4:2:0
    chroma subsampling, Pillow's default).

    Args:
        images: ``float [..., C, H, W]`` in ``[0, 1]`` with ``C`` 1 or 3, on any device.
        quality: JPEG quality, 1..100.

    Returns:
        The decoded images, same shape, dtype and device, on the 1/255 grid of ``[0, 1]``.
    """
    if images.shape[-3] not in (1, 3):
        raise ConfigError(f"JPEG needs 1 or 3 channels, got images of shape {tuple(images.shape)}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")
    flat = to_uint8(images).cpu().reshape(-1, *images.shape[-3:])
    if flat.shape[0] == 0:
        return images.detach().clone()
    decoded = torch.stack([_jpeg_round_trip(x, int(quality)) for x in flat])
    return to_float(decoded.reshape(images.shape), images)


def grayscale(images: Tensor) -> Tensor:
    """ITU-R 601 luma, replicated to the input's channels (a no-op for 1-channel images).

    Args:
        images: ``float [..., C, H, W]`` in ``[0, 1]`` with ``C`` 1 or 3.

    Returns:
        Same shape; all channels equal.
    """
    channels = images.shape[-3]
    if channels == 1:
        return images
    if channels != 3:
        raise ConfigError(f"grayscale needs 1 or 3 channels, got shape {tuple(images.shape)}")
    return TF.rgb_to_grayscale(images, num_output_channels=3)


class JPEG(Defense):
    """ISS-JPEG: train on JPEG-compressed images (default quality 10, as in ISS/APBench).

    JPEG's 8x8 DCT quantisation removes most of the high-frequency, low-amplitude
    perturbation that error-minimising noise relies on.

    Args:
        quality: JPEG quality, 1..100 (lower compresses more).
    """

    def __init__(self, quality: int = 10) -> None:
        super().__init__()
        if not 1 <= quality <= 100:
            raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")
        self.quality = quality

    def transform_images(self, images: Tensor) -> Tensor:
        """Compress and decode ``float [B, C, H, W]`` images."""
        with torch.no_grad():
            return jpeg(images, self.quality)

    def extra_repr(self) -> str:
        """The settings, as printed with the module."""
        return f"quality={self.quality}"


class Grayscale(Defense):
    """ISS-grayscale: train on grayscale images replicated to 3 channels.

    A no-op on 1-channel data (the built-in digits, MNIST): there is no colour to remove.
    """

    def transform_images(self, images: Tensor) -> Tensor:
        """Replace every channel by the luma of ``float [B, C, H, W]`` images."""
        return grayscale(images)
