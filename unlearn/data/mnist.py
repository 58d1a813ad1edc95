"""MNIST from the IDX files torchvision downloads (plain or gzipped).

The IDX reader is our own rather than torchvision's ``read_sn3_pascalvincent_tensor``: that
one opens plain files only (the Debian packages ship the files gzipped) and checks the
header with bare ``assert`` statements, where a user needs a message naming the file.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from unlearn.data.base import DataFileError, DataNotFoundError
from unlearn.data.classification import ImageClassificationDataModule
from unlearn.data.datasets import TensorImageSource

_IDX_TYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) of unsigned bytes into an array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise DataFileError(f"{path}: cannot be read as an IDX file ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataFileError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataFileError(f"{path}: header says shape {shape} but holds {body.size} values")
    return body.reshape(shape)


class MNISTDataModule(ImageClassificationDataModule):
    """MNIST: 1 x 28 x 28, 10 classes, 60k/10k, no augmentation.

    Reads ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, plain or ``.gz``, from
    ``{root}/MNIST/raw/`` (the layout torchvision writes) or from ``{root}`` itself (a flat
    folder of the four files, as Debian's data set packages install them).
    """

    name = "mnist"
    num_classes = 10
    image_shape = (1, 28, 28)
    #: torchvision's folder name under ``root`` (``root/{folder}/raw/``)
    folder = "MNIST"
    #: torchvision's data set class that ``download: true`` fetches with
    torchvision_class = datasets.MNIST

    def fetch(self) -> None:
        """Download with torchvision."""
        self.torchvision_class(str(self.root), train=True, download=True)

    def _find(self, stem: str) -> Path:
        raw = self.root / self.folder / "raw"
        for folder in (raw, self.root):
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.is_file():
                    return candidate
        raise DataNotFoundError(
            f"{type(self).__name__}: expected file '{raw / stem}' (or '.gz', or the same in "
            f"'{self.root}') was not found. Set `download: true` or place the four IDX files "
            f"under root/{self.folder}/raw/ or in root."
        )

    def load_split(self, train: bool) -> TensorImageSource:
        """Read the images and labels IDX files of one split."""
        prefix = "train" if train else "t10k"
        images = read_idx(self._find(f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(self._find(f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.shape != (images.shape[0],):
            raise DataFileError(
                f"{type(self).__name__} {prefix}: images {images.shape} and labels "
                f"{labels.shape} do not match"
            )
        return TensorImageSource(
            torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
        )
