"""Tiny data in real on-disk formats for the poison tests (written at test time)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np

#: methods with settings small enough for a few seconds on CPU (3 x 32 x 32, 40 images)
FAST_METHODS: dict[str, tuple[str, dict]] = {
    "random": ("RandomNoise", {}),
    "random_classwise": ("RandomNoise", {"classwise": True}),
    "em": (
        "EM",
        {"model": "linear", "train_steps": 2, "pgd_steps": 2, "max_rounds": 2, "batch_size": 16},
    ),
    "em_classwise": (
        "EM",
        {"classwise": True, "model": "linear", "train_steps": 2, "max_rounds": 2},
    ),
    "rem": (
        "REM",
        {
            "model": "linear",
            "train_steps": 2,
            "batch_size": 20,
            "pgd_steps": 2,
            "adv_steps": 1,
            "eot_samples": 2,
        },
    ),
    "tap": (
        "TAP",
        {"model": "linear", "epochs": 1, "steps": 2, "restarts": 2, "batch_size": 20},
    ),
    "lsp": ("LSP", {}),
    "lsp_classwise": ("LSP", {"classwise": True}),
    "ops": ("OPS", {}),
    "ar": ("AR", {"batch_size": 16}),
}


def write_cifar10(root: Path, per_batch: int = 8, test: int = 10, seed: int = 0) -> Path:
    """Write ``{root}/cifar-10-batches-py`` with 5 x ``per_batch`` training images.

    Images are random smooth-ish uint8 pictures, labels cycle through the 10 classes.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int, offset: int) -> dict:
        data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        data[: n // 4] = 0  # some black and white pixels so the clamp matters
        data[n // 4 : n // 2, :512] = 255
        return {"data": data, "labels": [(offset + i) % 10 for i in range(n)]}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as handle:
            pickle.dump(batch(per_batch, (i - 1) * per_batch), handle)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump(batch(test, 0), handle)
    return folder


def tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (relative path -> digest)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }
