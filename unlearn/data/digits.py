"""Built-in data: scikit-learn's bundled handwritten digits, upsampled to 32x32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from unlearn.data.classification import ImageClassificationDataModule, crop_and_flip
from unlearn.data.datasets import TensorImageSource, Transform


def load_digits_split(train: bool, size: int = 32) -> TensorImageSource:
    """The 1,797 UCI digit scans (8x8, 17 grey levels) resized to ``size`` px, one split.

    Every fifth scan (index % 5 == 4) is the test split (359 images), the rest the
    training split (1,438 images): a fixed rule that does not depend on any library's RNG.

    Returns:
        Images ``uint8 [N, 1, size, size]`` and labels ``[N]`` in 0..9.
    """
    bunch = load_digits()
    pixels = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    is_test = torch.arange(labels.numel()) % 5 == 4
    keep = ~is_test if train else is_test
    upsampled = F.interpolate(pixels[keep], size=(size, size), mode="bilinear", align_corners=False)
    images = upsampled.clamp(0, 1).mul(255).round().to(torch.uint8)
    return TensorImageSource(images, labels[keep])


class DigitsDataModule(ImageClassificationDataModule):
    """Built-in real data (no download): handwritten digits, 1 x 32 x 32, 10 classes.

    Training augmentation: random crop with 2 px padding (no flip: digits are not
    mirror-symmetric). See :class:`ImageClassificationDataModule` for the arguments;
    ``root`` and ``download`` are ignored.
    """

    name = "digits"
    num_classes = 10
    image_shape = (1, 32, 32)

    def load_split(self, train: bool) -> TensorImageSource:
        """Build the split from the data bundled with scikit-learn."""
        return load_digits_split(train, size=self.image_shape[-1])

    def train_augmentation(self) -> Transform:
        """Random crop with 2 px padding."""
        return crop_and_flip(self.image_shape[1:], padding=2, flip=False)
