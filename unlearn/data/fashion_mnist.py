"""Fashion-MNIST: Zalando's product photographs in MNIST's format."""

from __future__ import annotations

from torchvision import datasets

from unlearn.data.classification import crop_and_flip
from unlearn.data.datasets import Transform
from unlearn.data.mnist import MNISTDataModule


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: 1 x 28 x 28 gray, 10 classes, 60k/10k.

    Reads the four IDX files, plain or ``.gz``, from ``{root}/FashionMNIST/raw/`` (torchvision's
    layout; ``download: true`` fetches them there) or from ``{root}`` itself (Debian's
    ``dataset-fashion-mnist`` installs them gzipped in ``/usr/share/datasets/fashion-mnist``).
    Augmentation: random crop with 2 pixels of zero padding and a horizontal flip (the
    products are left-right symmetric classes; a flipped shoe is still a shoe).
    """

    name = "fashion_mnist"
    folder = "FashionMNIST"
    torchvision_class = datasets.FashionMNIST

    def train_augmentation(self) -> Transform:
        """Random 28 x 28 crop of the 2-pixel zero-padded image, random horizontal flip."""
        return crop_and_flip((28, 28), padding=2)
