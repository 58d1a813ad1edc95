"""The real loaders read files written here in the real formats and decode them exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import write_cifar10, write_cifar100, write_image_folder, write_mnist, write_svhn
from PIL import Image

from unlearn.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DataNotFoundError,
    DigitsDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    PoisonOverlay,
    SVHNDataModule,
)


def test_cifar10_reads_pickles_exactly(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path, n_per_batch=8)
    dm = CIFAR10DataModule(root=tmp_path, batch_size=16, augment=False)
    source = dm.train_source
    assert len(source) == 40 and len(dm.test_source) == 8
    assert torch.equal(source.images, torch.from_numpy(written["images"]))
    assert torch.equal(source.labels, torch.from_numpy(written["labels"]))
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "index"}
    assert batch["image"].shape == (16, 3, 32, 32) and batch["image"].dtype == torch.float32
    # each item is the stored image scaled to [0, 1], found by its index
    for image, index in zip(batch["image"], batch["index"], strict=True):
        assert torch.allclose(image * 255, source.images[index].float())


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path, n=16)
    dm = CIFAR100DataModule(root=tmp_path)
    assert dm.num_classes == 100
    assert torch.equal(dm.train_source.labels, torch.from_numpy(written["labels"]))


def test_svhn_transposes_and_maps_label_10_to_0(tmp_path: Path) -> None:
    written = write_svhn(tmp_path, n=12)
    dm = SVHNDataModule(root=tmp_path)
    source = dm.train_source
    assert torch.equal(source.images, torch.from_numpy(np.ascontiguousarray(written["images"])))
    assert torch.equal(source.labels, torch.from_numpy(written["labels"]).long())
    assert int(source.labels.max()) <= 9


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 20).astype(np.uint8)
    write_mnist(tmp_path, images, labels, images[:5], labels[:5], gz=gz)
    dm = MNISTDataModule(root=tmp_path)
    assert dm.train_source.images.shape == (20, 1, 28, 28)
    assert torch.equal(dm.train_source.images[:, 0], torch.from_numpy(images))
    assert torch.equal(dm.test_source.labels, torch.from_numpy(labels[:5]).long())


def test_mnist_bad_magic_is_named(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"not an idx file")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte is not an IDX file"):
        MNISTDataModule(root=tmp_path).setup()


def test_image_folder_sorted_classes_and_resize(tmp_path: Path) -> None:
    write_image_folder(tmp_path, per_class=3, size=40)
    dm = ImageFolderDataModule(root=tmp_path, num_classes=3, image_size=32, num_workers=0)
    source = dm.train_source
    assert len(source) == 9
    assert source.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # cat, dog, fox
    image = source.image(4)
    expected = Image.open(tmp_path / "train" / "dog" / "001.png").convert("RGB")
    expected = np.asarray(expected.resize((32, 32), Image.BILINEAR))
    assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1))


def test_image_folder_wrong_class_count(tmp_path: Path) -> None:
    write_image_folder(tmp_path, per_class=1)
    with pytest.raises(ValueError, match=r"num_classes is 10 but .* has 3 class folders"):
        ImageFolderDataModule(root=tmp_path, num_classes=10, image_size=32).setup()


@pytest.mark.parametrize(
    ("module", "missing"),
    [
        (CIFAR10DataModule, "cifar-10-batches-py/data_batch_1"),
        (CIFAR100DataModule, "cifar-100-python/train"),
        (SVHNDataModule, "train_32x32.mat"),
        (MNISTDataModule, "MNIST/raw/train-images-idx3-ubyte"),
    ],
)
def test_missing_files_name_the_file_and_the_fix(
    tmp_path: Path, module: type, missing: str
) -> None:
    with pytest.raises(DataNotFoundError) as info:
        module(root=tmp_path, download=False).setup()
    message = str(info.value)
    assert str(tmp_path / missing) in message
    assert "download: true" in message


def test_digits_fixed_split() -> None:
    dm = DigitsDataModule()
    train, test = dm.train_source, dm.test_source
    assert (len(train), len(test)) == (1438, 359)
    assert train.images.shape[1:] == (1, 32, 32)
    assert set(train.labels.tolist()) == set(range(10)) == set(test.labels.tolist())
    # the split is a fixed rule: a second build is identical
    assert torch.equal(DigitsDataModule().train_source.images, train.images)
    assert train.fingerprint() != test.fingerprint()


def test_validation_split_is_disjoint_and_clean(tmp_path: Path) -> None:
    write_cifar10(tmp_path, n_per_batch=20)
    dm = CIFAR10DataModule(root=tmp_path, val_fraction=0.25, seed=3)
    fit_idx = dm.probe_dataset().indices
    val_idx = dm.val_dataset().indices
    assert len(val_idx) == 25 and len(fit_idx) == 75
    assert set(fit_idx.tolist()).isdisjoint(val_idx.tolist())
    assert dm.val_dataset().poison is None


def test_poison_overlay_perturbs_only_listed_indices() -> None:
    delta = torch.full((2, 1, 2, 2), 0.6, dtype=torch.float16)
    overlay = PoisonOverlay(delta, torch.tensor([1, 3]), num_samples=4)
    clean = torch.full((1, 2, 2), 0.5)
    assert torch.equal(overlay.apply(clean.clone(), 0), clean)
    poisoned = overlay.apply(clean.clone(), 3)
    assert torch.equal(poisoned, torch.ones(1, 2, 2))  # 0.5 + 0.6 clipped to 1
