"""SVHN (cropped digits) from the ``.mat`` files torchvision downloads."""

from __future__ import annotations

import numpy as np
import torch
from scipy.io import loadmat
from scipy.io.matlab import MatReadError
from torchvision import datasets

from unlearn.data.base import DataFileError, require_files
from unlearn.data.classification import ImageClassificationDataModule
from unlearn.data.datasets import TensorImageSource


class SVHNDataModule(ImageClassificationDataModule):
    """SVHN: 3 x 32 x 32, 10 classes (digit 0 is label 0), no augmentation by default recipe.

    Reads ``{root}/train_32x32.mat`` and ``{root}/test_32x32.mat``.
    """

    name = "svhn"
    num_classes = 10
    image_shape = (3, 32, 32)

    def fetch(self) -> None:
        """Download both splits with torchvision."""
        for split in ("train", "test"):
            datasets.SVHN(str(self.root), split=split, download=True)

    def load_split(self, train: bool) -> TensorImageSource:
        """Read one ``.mat`` file: ``X`` is ``[32, 32, 3, N]``, ``y`` is ``[N, 1]`` in 1..10."""
        name = "train_32x32.mat" if train else "test_32x32.mat"
        require_files(
            "SVHNDataModule",
            self.root,
            [name],
            "Set `download: true` or get the cropped-digits files from "
            "http://ufldl.stanford.edu/housenumbers/ into root.",
        )
        path = self.root / name
        try:
            mat = loadmat(path)
            images = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)), dtype=np.uint8)
            labels = mat["y"].astype(np.int64).reshape(-1)
        except (OSError, KeyError, ValueError, MatReadError) as err:
            raise DataFileError(
                f"{path} is not an SVHN .mat file with 'X' and 'y': {err}"
            ) from None
        labels[labels == 10] = 0
        return TensorImageSource(torch.from_numpy(images), torch.from_numpy(labels))
