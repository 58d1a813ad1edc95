"""Defenses through the classification task and the CLI on the built-in digits."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import write_random_poison
from lightning import Trainer

from unlearn.cli import main
from unlearn.data import DigitsDataModule
from unlearn.defenses import JPEG, Defense
from unlearn.poisons.store import load_poison
from unlearn.tasks import ClassificationTask

REPO = Path(__file__).resolve().parents[1]
DIGIT_CONFIGS = sorted((REPO / "configs" / "digits").glob("defense_*.yaml"))
CIFAR_CONFIGS = sorted((REPO / "configs" / "cifar10").glob("defense_*.yaml"))


@pytest.fixture(scope="module")
def digits_poison(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random +-8/255 poison of the whole digits training split, in the real store format."""
    return write_random_poison(DigitsDataModule(), tmp_path_factory.mktemp("poison"))


class Spy(Defense):
    """Records its calls and blanks the images, so any leak into evaluation would show."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def transform_images(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.zeros_like(images)


def test_defenses_only_touch_training_batches(digits_poison: Path) -> None:
    torch.manual_seed(0)
    spy = Spy()
    task = ClassificationTask(
        "small_cnn", num_classes=10, image_shape=(1, 32, 32), defenses=[spy, JPEG()]
    )
    data = DigitsDataModule(batch_size=32, poison=digits_poison)
    data.setup()
    clean_before = data.train_source.images.clone()
    delta_before = load_poison(digits_poison).delta.clone()
    seen_in_eval: list[torch.Tensor] = []

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor]) -> None:
        if not module.training:
            seen_in_eval.append(inputs[0].detach().clone())

    task.model.register_forward_pre_hook(record)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=3,
        limit_val_batches=1,
        limit_test_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=data)
    assert spy.calls == 3  # once per training step, never in validation
    trainer.test(task, datamodule=data)
    assert spy.calls == 3
    first_test_batch = torch.stack([data.test_dataset()[i]["image"] for i in range(32)])
    assert torch.equal(seen_in_eval[-1], first_test_batch)
    assert torch.equal(data.train_source.images, clean_before)
    assert torch.equal(load_poison(digits_poison).delta, delta_before)


@pytest.mark.parametrize("config", DIGIT_CONFIGS, ids=[p.stem for p in DIGIT_CONFIGS])
def test_digits_defense_config_runs(
    config: Path, digits_poison: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["unlearn"])
    main(
        [
            "fit",
            "--config", str(config),
            "--data.init_args.poison", str(digits_poison),
            "--data.init_args.batch_size", "16",
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.accelerator", "cpu",
            "--trainer.fast_dev_run", "1",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
        ]
    )  # fmt: skip


@pytest.mark.parametrize("config", CIFAR_CONFIGS, ids=[p.stem for p in CIFAR_CONFIGS])
def test_cifar10_defense_config_parses(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["unlearn"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (None, 0)
    printed = capsys.readouterr().out
    assert "poisons/cifar10/em" in printed
    assert ("defenses: []" in printed) == config.stem.endswith("_none")
