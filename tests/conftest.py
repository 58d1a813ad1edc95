from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# One thread: on a 2-core runner, 2 threads per process spin-wait against the subprocesses
# and DDP ranks the tests start (a 20x slowdown was measured under load).
torch.set_num_threads(1)


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m unlearn ARGS`` in a subprocess; return the completed process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "unlearn", *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def tiny_backbones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Swap the heavy backbones for the small CNN so configs run in seconds."""
    from unlearn import models

    for name in ("resnet18", "resnet50", "senet18", "vit_small"):
        monkeypatch.setitem(
            models.MODELS, name, lambda classes, shape: models.SmallCNN(classes, shape, 4)
        )


def write_random_poison(datamodule, directory: Path, eps: float = 8 / 255) -> Path:
    """Store uniform L_inf noise for ``datamodule``'s training split (a stand-in poison)."""
    from unlearn.poisons.store import save_poison

    info = datamodule.info()
    generator = torch.Generator().manual_seed(0)
    delta = (torch.rand(info.num_samples, *info.image_shape, generator=generator) * 2 - 1) * eps
    meta = {
        "method": "random",
        "norm": "linf",
        "eps": eps,
        "dataset": info.name,
        "split": info.split,
        "num_samples": info.num_samples,
        "image_shape": list(info.image_shape),
        "fingerprint": info.fingerprint,
        "seed": 0,
        "poison_ratio": 1.0,
    }
    save_poison(directory, delta, torch.arange(info.num_samples), meta)
    return directory
