"""Fashion-MNIST: torchvision's layout and Debian's flat folder, plain or gzipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fake_data import write_mnist
from unlearn.data import DataNotFoundError, FashionMNISTDataModule


def _arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(
        np.uint8
    )


@pytest.mark.parametrize("folder", ["FashionMNIST", None], ids=["torchvision", "flat"])
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_reads_both_layouts(tmp_path: Path, folder: str | None, gz: bool) -> None:
    images, labels = _arrays(12, 0)
    test_images, test_labels = _arrays(4, 1)
    write_mnist(tmp_path, images, labels, test_images, test_labels, gz=gz, folder=folder)
    dm = FashionMNISTDataModule(root=tmp_path)
    assert torch.equal(dm.train_source.images[:, 0], torch.from_numpy(images))
    assert torch.equal(dm.train_source.labels, torch.from_numpy(labels).long())
    assert torch.equal(dm.test_source.images[:, 0], torch.from_numpy(test_images))
    assert dm.info().name == "fashion_mnist"


def test_mnist_files_are_not_taken_for_fashion_mnist(tmp_path: Path) -> None:
    images, labels = _arrays(4, 0)
    write_mnist(tmp_path, images, labels, images, labels, folder="MNIST")
    with pytest.raises(DataNotFoundError, match="FashionMNIST/raw/train-images-idx3-ubyte"):
        FashionMNISTDataModule(root=tmp_path).setup()


def test_augmentation_keeps_shape_and_moves_pixels(tmp_path: Path) -> None:
    images, labels = _arrays(8, 0)
    write_mnist(tmp_path, images, labels, images, labels, folder=None)
    dm = FashionMNISTDataModule(root=tmp_path, augment=True)
    dataset = dm.train_dataset()
    torch.manual_seed(0)
    draws = torch.stack([dataset[3]["image"] for _ in range(8)])
    assert draws.shape == (8, 1, 28, 28)
    clean = torch.from_numpy(images[3]).float() / 255
    assert any(not torch.equal(d[0], clean) for d in draws)  # crops/flips happen
