"""CIFAR-10 and CIFAR-100 from the files torchvision downloads (python pickles)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from unlearn.data.base import DataFileError, require_files
from unlearn.data.classification import ImageClassificationDataModule, crop_and_flip
from unlearn.data.datasets import TensorImageSource, Transform


def read_cifar_pickles(files: list[Path], label_key: str) -> TensorImageSource:
    """Read CIFAR python-version batch files.

    Args:
        files: the pickles (``data_batch_1`` ... or ``train``/``test``).
        label_key: ``"labels"`` (CIFAR-10) or ``"fine_labels"`` (CIFAR-100).

    Returns:
        Images ``uint8 [N, 3, 32, 32]`` and labels ``[N]``.
    """
    images, labels = [], []
    for path in files:
        try:
            with open(path, "rb") as handle:
                entry = pickle.load(handle, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            target = np.asarray(entry[label_key], dtype=np.int64)
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as err:
            raise DataFileError(
                f"{path} is not a CIFAR batch file with 'data' and '{label_key}': {err}"
            ) from None
        images.append(data)
        labels.append(target)
    return TensorImageSource(
        torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))
    )


class CIFAR10DataModule(ImageClassificationDataModule):
    """CIFAR-10: 3 x 32 x 32, 10 classes, 50k/10k; random crop (4 px) and flip.

    Reads ``{root}/cifar-10-batches-py``. See :class:`ImageClassificationDataModule`.
    """

    name = "cifar10"
    num_classes = 10
    image_shape = (3, 32, 32)
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"
    torchvision_class = datasets.CIFAR10

    def fetch(self) -> None:
        """Download and extract with torchvision."""
        self.torchvision_class(str(self.root), train=True, download=True)

    def load_split(self, train: bool) -> TensorImageSource:
        """Read the pickles of one split."""
        names = [f"{self.folder}/{f}" for f in (self.train_files if train else self.test_files)]
        require_files(
            type(self).__name__,
            self.root,
            names,
            "Set `download: true` (--data.init_args.download=true) or extract the python "
            "version of the archive from https://www.cs.toronto.edu/~kriz/cifar.html into root.",
        )
        return read_cifar_pickles([self.root / n for n in names], self.label_key)

    def train_augmentation(self) -> Transform:
        """Random crop with 4 px padding and horizontal flip."""
        return crop_and_flip(self.image_shape[1:], padding=4)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: 3 x 32 x 32, 100 classes (fine labels); reads ``{root}/cifar-100-python``."""

    name = "cifar100"
    num_classes = 100
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"
    torchvision_class = datasets.CIFAR100
