"""A checkpoint callback that keeps the points of a training trajectory."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class TrajectoryCheckpoint(ModelCheckpoint):
    """Weights-only checkpoints every N steps or epochs, all kept, plus the initial weights.

    A :class:`~lightning.pytorch.callbacks.ModelCheckpoint` with ``save_weights_only=True``
    (no optimizer state: a LeNet-5 checkpoint is ~0.25 MB), ``save_top_k=-1`` and no
    monitored metric, that also writes the weights before the first step (``step=0``), the
    start of the path that ``python -m unlearn landscape`` draws. Add it with
    ``--config callbacks/trajectory.yaml``.

    Args:
        dirpath: directory of the checkpoints; default ``{log_dir}/checkpoints``.
        filename: file name pattern (ModelCheckpoint's), default ``"{epoch}-{step}"``.
        every_n_train_steps: save every this many optimizer steps.
        every_n_epochs: save at the end of every this many epochs (used, with 1, when
            neither interval is given).
        save_initial: also save the weights at step 0.
        save_last: also keep ``last.ckpt`` (ModelCheckpoint's option).
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        filename: str = "{epoch}-{step}",
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = None,
        save_initial: bool = True,
        save_last: bool | None = None,
    ) -> None:
        if every_n_train_steps is None and every_n_epochs is None:
            every_n_epochs = 1
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=None,
            save_top_k=-1,
            save_weights_only=True,
            save_last=save_last,
            every_n_train_steps=every_n_train_steps,
            every_n_epochs=every_n_epochs,
        )
        self.save_initial = save_initial

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Save the initial weights (not on a resumed run, a fast dev run or a sanity check)."""
        super().on_train_start(trainer, pl_module)
        if not self.save_initial or trainer.global_step != 0 or trainer.fast_dev_run:
            return
        metrics = {"epoch": torch.tensor(0), "step": torch.tensor(0)}
        trainer.save_checkpoint(self.format_checkpoint_name(metrics), weights_only=True)
