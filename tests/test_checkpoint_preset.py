"""The checkpoint preset keeps the best weights and a ``last.ckpt`` of the latest epoch."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import REPO
from unlearn.cli import run_lightning


def test_last_checkpoint_follows_every_epoch_even_without_improvement(tmp_path: Path) -> None:
    # lr 0: val/acc never improves after the first epoch, so a `last.ckpt` that moved only
    # with the best checkpoint would still hold epoch 0
    epochs, batches = 3, 2
    cli = run_lightning(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "quickstart.yaml"),
            "--config",
            str(REPO / "callbacks" / "checkpoint.yaml"),
            "--model.init_args.lr=0.0",
            f"--trainer.max_epochs={epochs}",
            f"--trainer.limit_train_batches={batches}",
            "--trainer.limit_val_batches=1",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    checkpoints = Path(cli.trainer.log_dir) / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == epochs * batches
    (best,) = checkpoints.glob("best-*.ckpt")
    assert best.name.startswith("best-epoch000-")  # no later epoch improved on it
