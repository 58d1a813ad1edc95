"""Write tiny data sets in the real on-disk formats the loaders read (no download)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_cifar10(root: Path, n_per_batch: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """CIFAR-10 python pickles: 5 training batches and a test batch of ``n_per_batch`` each.

    Returns the written training images ``[N, 3, 32, 32]`` and labels for comparison.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3 * 32 * 32), dtype=np.uint8)
        target = rng.integers(0, 10, n_per_batch).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": target, "batch_label": name}, handle)
        if name != "test_batch":
            images.append(data.reshape(-1, 3, 32, 32))
            labels.extend(target)
    return {"images": np.concatenate(images), "labels": np.asarray(labels)}


def write_cifar100(root: Path, n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """CIFAR-100 python pickles ``train`` and ``test`` with fine and coarse labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    out = {}
    for name in ("train", "test"):
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        entry = {"data": data, "fine_labels": fine, "coarse_labels": [f // 5 for f in fine]}
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle)
        if name == "train":
            out = {"images": data.reshape(-1, 3, 32, 32), "labels": np.asarray(fine)}
    return out


def write_svhn(root: Path, n: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """SVHN ``.mat`` files: ``X`` is ``[32, 32, 3, N]``, ``y`` is ``[N, 1]`` with 10 for '0'."""
    root.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    out = {}
    for name in ("train_32x32.mat", "test_32x32.mat"):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        savemat(root / name, {"X": x, "y": y})
        if name.startswith("train"):
            out = {"images": np.transpose(x, (3, 2, 0, 1)), "labels": y.reshape(-1) % 10}
    return out


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    gz: bool = True,
    folder: str | None = "MNIST",
) -> None:
    """MNIST-format IDX files under ``root/{folder}/raw`` (gzipped like the download, or
    plain), or flat in ``root`` when ``folder`` is ``None`` (Debian's layout)."""
    raw = root if folder is None else root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": images,
        "train-labels-idx1-ubyte": labels,
        "t10k-images-idx3-ubyte": test_images,
        "t10k-labels-idx1-ubyte": test_labels,
    }
    for name, array in files.items():
        data = _idx_bytes(array)
        if gz:
            with gzip.open(raw / f"{name}.gz", "wb") as handle:
                handle.write(data)
        else:
            (raw / name).write_bytes(data)


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "fox"),
    per_class: int = 4,
    size: int = 40,
    seed: int = 0,
) -> None:
    """PNG files in ``root/{train,val}/{class}/`` of ``size`` px (loaders resize them)."""
    rng = _rng(seed)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
