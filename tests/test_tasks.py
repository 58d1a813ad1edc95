"""BaseTask's optimizer and learning-rate schedule."""

from __future__ import annotations

import math

import pytest
from lightning import Callback, Trainer

from unlearn.data import DigitsDataModule
from unlearn.models.small import SmallCNN
from unlearn.tasks import ClassificationTask


class RecordLR(Callback):
    """The learning rate of the first parameter group at the start of each epoch."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer: Trainer, pl_module) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _epoch_lrs(schedule: str, epochs: int = 4) -> list[float]:
    task = ClassificationTask(
        model=SmallCNN(10, (1, 32, 32), width=4),
        num_classes=10,
        image_shape=(1, 32, 32),
        lr=0.05,
        lr_schedule=schedule,
    )
    record = RecordLR()
    trainer = Trainer(
        max_epochs=epochs,
        limit_train_batches=1,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(task, datamodule=DigitsDataModule(batch_size=16))
    return record.lrs


def test_cosine_schedule_anneals_per_epoch() -> None:
    lrs = _epoch_lrs("cosine")
    expected = [0.05 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-6)


def test_constant_schedule_keeps_the_learning_rate() -> None:
    assert _epoch_lrs("constant") == [0.05] * 4


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="lr_schedule must be 'cosine' or 'constant', got 'step'"):
        ClassificationTask(model="small_cnn", lr_schedule="step")  # type: ignore[arg-type]
