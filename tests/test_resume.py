"""A fit resumed from ``last.ckpt`` reproduces the uninterrupted fit exactly (unlearn.resume).

Weights, ``sal.csv`` (bar its timing column) and TensorBoard's scalars (as TensorBoard reads
the run's directory) of a run interrupted and resumed equal those of a run never stopped; the
CLI keeps ``last.ckpt`` every epoch; a run SIGKILLed at a random moment and started again
with the same command ends where the uninterrupted run ends.
"""

from __future__ import annotations

import csv
import io
import random
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, sigkill_after_file, small_sal_preset
from lightning import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tb import read_scalars

from unlearn.callbacks import SharpnessCallback
from unlearn.cli import run_lightning
from unlearn.data import DigitsDataModule
from unlearn.defenses import AdversarialTraining, Cutout, Mixup
from unlearn.models import SmallCNN
from unlearn.tasks import ClassificationTask

SMALL_SAL = {"probe_size": 48, "probe_batch_size": 16, "steps_per_iter": 2, "iters": 2}


class Interrupt(Exception):
    pass


class InterruptAfterValidation(Callback):
    """Raise when epoch ``epoch``'s validation ends: its SAL and validation are logged, its
    checkpoint is not written yet (``last.ckpt`` is the previous epoch's)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_end(self, trainer: Trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            raise Interrupt


def sal_values(path: Path) -> list[dict[str, str]]:
    """The rows of a ``sal.csv`` without its wall-clock ``seconds`` column."""
    rows = csv.DictReader(io.StringIO(path.read_text()))
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def tensorboard_view(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of ``log_dir`` as TensorBoard shows it, sorted by step."""
    return {tag: sorted(points) for tag, points in read_scalars(log_dir).items()}


def fit_digits(
    root: Path, workers: int = 0, interrupt: int | None = None, ckpt_path: str | None = None
) -> Trainer:
    """3 epochs of 3 batches: augmentation, Cutout, Mixup, one-step AT, SAL every epoch."""
    seed_everything(0, workers=True)
    task = ClassificationTask(
        model=SmallCNN(10, (1, 32, 32), width=4),
        num_classes=10,
        image_shape=(1, 32, 32),
        defenses=[Cutout(size=8), Mixup(), AdversarialTraining(steps=1)],
    )
    callbacks: list[Callback] = [
        SharpnessCallback(**SMALL_SAL),
        ModelCheckpoint(dirpath=root / "checkpoints", save_last=True),
    ]
    if interrupt is not None:
        callbacks.append(InterruptAfterValidation(interrupt))
    trainer = Trainer(
        max_epochs=3,
        limit_train_batches=3,
        limit_val_batches=1,
        accelerator="cpu",
        logger=TensorBoardLogger(root, name="run", version=0, default_hp_metric=False),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    data = DigitsDataModule(batch_size=32, augment=True, num_workers=workers)
    trainer.fit(task, datamodule=data, ckpt_path=ckpt_path)
    return trainer


def test_epoch_seeds_differ_by_seed_epoch_and_rank() -> None:
    from unlearn.resume import epoch_seed

    seeds = {epoch_seed(s, e, r) for s in (0, 1) for e in (0, 1, 2) for r in (0, 1)}
    assert len(seeds) == 12  # DDP ranks draw apart, and so do epochs and runs
    assert epoch_seed(3, 2, 1) == epoch_seed(3, 2, 1)


@pytest.mark.parametrize(
    "workers", [0, pytest.param(2, marks=pytest.mark.slow, id="persistent-workers")]
)
def test_a_resumed_fit_equals_the_uninterrupted_one(tmp_path: Path, workers: int) -> None:
    """Interrupted after epoch 2's SAL and validation (``last.ckpt``: epoch 1), resumed."""
    whole = fit_digits(tmp_path / "whole", workers)
    with pytest.raises(Interrupt):
        fit_digits(tmp_path / "resumed", workers, interrupt=2)
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 1
    resumed = fit_digits(tmp_path / "resumed", workers, ckpt_path=str(last))

    expected, found = whole.lightning_module.state_dict(), resumed.lightning_module.state_dict()
    assert expected.keys() == found.keys()
    assert all(torch.equal(expected[k], found[k]) for k in expected)
    logs = [Path(t.log_dir) for t in (whole, resumed)]
    assert sal_values(logs[1] / "sal.csv") == sal_values(logs[0] / "sal.csv") != []
    # the interrupted run logged epoch 2's SAL and validation: TensorBoard drops them, the
    # resumed run logs them (and epoch 1's SAL, measured before its checkpoint) once more
    view = tensorboard_view(logs[1])
    assert view == tensorboard_view(logs[0])
    assert [step for step, _ in view["val/loss"]] == [2, 5, 8]


def _checkpoint_callbacks(*configs: str) -> list[ModelCheckpoint]:
    args = ["--config", str(REPO / "configs" / "quickstart.yaml")]  # run=False: no subcommand
    for config in configs:
        args += ["--config", str(REPO / "callbacks" / config)]
    cli = run_lightning(args, run=False)
    return cli.trainer.checkpoint_callbacks


def test_cli_checkpoints_keep_last_ckpt_unless_told_otherwise() -> None:
    (default,) = _checkpoint_callbacks()
    assert type(default) is ModelCheckpoint and default.save_last is True
    best, latest = _checkpoint_callbacks("checkpoint.yaml")
    assert (best.monitor, best.save_last) == ("val/acc", False)  # set by the preset: kept
    assert latest.save_last is True
    (trajectory,) = _checkpoint_callbacks("trajectory.yaml")
    assert trajectory.save_weights_only and trajectory.save_last is None  # cannot resume


class LastCheckpointSeen(Callback):
    """Whether ``last.ckpt`` exists at the start of each epoch (checked in its dirpath)."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_train_epoch_start(self, trainer: Trainer, pl_module) -> None:
        directories = {Path(cb.dirpath) for cb in trainer.checkpoint_callbacks}
        self.seen.append(any((d / "last.ckpt").is_file() for d in directories))


@pytest.mark.parametrize("preset", [None, "checkpoint.yaml"])
def test_last_ckpt_is_written_at_every_epoch_end(
    preset: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Default checkpointing and the checkpoint preset; ``ckpt_path="last"`` starts fresh."""
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(REPO / "configs" / "quickstart.yaml")]
    if preset is not None:
        args += ["--config", str(REPO / "callbacks" / preset)]
    args += [
        "--trainer.max_epochs=3",
        "--trainer.limit_train_batches=2",  # "1" would read as 1.0, all batches
        "--trainer.limit_val_batches=2",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = run_lightning(args, run=False)
    seen = LastCheckpointSeen()
    cli.trainer.callbacks.append(seen)
    with pytest.warns(UserWarning, match="no last checkpoint available"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path="last")
    assert seen.seen == [False, True, True]  # from the end of epoch 0 on
    assert cli.trainer.global_step == 6  # started from scratch


def _fit_command(preset: Path, out: Path) -> list[str]:
    """The same command for every attempt: fixed logger version, ``--ckpt_path=last``."""
    return [
        "fit",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--config",
        str(preset),
        "--trainer.max_epochs=4",
        "--trainer.limit_train_batches=6",
        "--trainer.limit_val_batches=2",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={out}",
        "--trainer.logger.init_args.version=run",
        "--ckpt_path=last",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_a_sigkilled_fit_run_again_ends_as_the_uninterrupted_one(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL at a random moment after the first ``last.ckpt``, then the same command.

    The moment is drawn by ``seed`` as a fraction of the uninterrupted run's time for the
    remaining epochs (so it falls in training, SAL, validation or checkpointing alike).
    """
    preset = small_sal_preset(tmp_path, every_n_epochs=1, **SMALL_SAL)
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    run_lightning(_fit_command(preset, tmp_path / "whole"))  # in process: saves a start-up
    seconds_per_epoch = (time.perf_counter() - started) / 4
    whole = tmp_path / "whole" / "quickstart" / "run"

    out = tmp_path / "killed"
    run = out / "quickstart" / "run"
    delay = random.Random(seed).uniform(0.0, 0.7) * 3 * seconds_per_epoch
    last = run / "checkpoints" / "last.ckpt"
    output = sigkill_after_file(_fit_command(preset, out), tmp_path, last, delay)
    assert "no last checkpoint available" in output  # the first start: from scratch

    run_lightning(_fit_command(preset, out))  # the same command again
    expected, found = (
        torch.load(path / "checkpoints" / "last.ckpt", weights_only=False) for path in (whole, run)
    )
    assert found["global_step"] == expected["global_step"] == 24
    assert all(torch.equal(expected["state_dict"][k], v) for k, v in found["state_dict"].items())
    assert sal_values(run / "sal.csv") == sal_values(whole / "sal.csv") != []
    assert tensorboard_view(run) == tensorboard_view(whole)
