"""The command line, driven as a user would: subprocesses and the LightningCLI in-process."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli, write_random_poison
from fake_data import write_cifar10, write_cifar100, write_mnist, write_svhn
from tb import read_scalars

import unlearn
import unlearn.data
from unlearn.cli import run_lightning
from unlearn.data import DigitsDataModule
from unlearn.data.synthetic_scenes import generate as generate_scenes


def test_help_lists_every_subcommand() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("fit", "validate", "test", "predict", "poison", "ud", "benchmark", "landscape"):
        assert f"  {name} " in result.stdout


def test_version_matches_package() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"unlearn {unlearn.__version__}"


def test_fit_help_shows_lightning_options() -> None:
    result = run_cli("fit", "--help")
    assert result.returncode == 0
    assert "--print_config" in result.stdout and "--data" in result.stdout


def _fit_configs() -> list[Path]:
    configs = []
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        content = yaml.safe_load(path.read_text())
        if isinstance(content, dict) and {"trainer", "model", "data"} <= set(content):
            configs.append(path)
    return configs


def _fake_root(data_class: str, root: Path, init_args: dict) -> list[str]:
    """Write a few samples in the format the config's data module reads; return extra args."""
    name = data_class.rsplit(".", 1)[-1]
    if name == "TaskonomyDataModule":
        generate_scenes(root, points_per_building=4, views_per_point=1, size=32)
        extra = ["--data.init_args.image_size=32", "--data.init_args.synthetic=false"]
        if init_args.get("rgb_root"):  # a poisoned-rgb root: the clean rgb stands in
            shutil.copytree(root, root.with_name("rgb"))
            extra.append(f"--data.init_args.rgb_root={root.with_name('rgb')}")
        return extra
    if name in ("CIFAR10DataModule",):
        write_cifar10(root, n_per_batch=8)
    elif name == "CIFAR100DataModule":
        write_cifar100(root, n=16)
    elif name == "SVHNDataModule":
        write_svhn(root, n=16)
    elif name in ("MNISTDataModule", "FashionMNISTDataModule"):
        images = DigitsDataModule().train_source.images[:40, 0, 2:30, 2:30].numpy()
        labels = DigitsDataModule().train_source.labels[:40].numpy()
        folder = "MNIST" if name == "MNISTDataModule" else None  # Debian's flat layout
        write_mnist(root, images, labels, images[:8], labels[:8], folder=folder)
    return []


@pytest.mark.parametrize("config", _fit_configs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_fits_one_batch(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_backbones: None
) -> None:
    monkeypatch.chdir(tmp_path)
    content = yaml.safe_load(config.read_text())
    data_class = content["data"]["class_path"]
    init_args = content["data"].get("init_args", {})
    extra = _fake_root(data_class, tmp_path / "data", init_args)
    if init_args.get("poison"):
        data_module = getattr(unlearn.data, data_class.rsplit(".", 1)[-1])
        poison = write_random_poison(data_module(root=tmp_path / "data"), tmp_path / "poison")
        extra.append(f"--data.init_args.poison={poison}")
    args = [
        "fit",
        "--config",
        str(config),
        "--trainer.fast_dev_run=2",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        f"--trainer.default_root_dir={tmp_path}",
        f"--data.init_args.root={tmp_path / 'data'}",
        "--data.init_args.num_workers=0",
        "--data.init_args.batch_size=8",
        *extra,
    ]
    cli = run_lightning(args)
    metrics = cli.trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"]))
    assert math.isfinite(float(metrics["val/loss"]))
    accuracies = [float(v) for k, v in metrics.items() if k.startswith("val/") and "acc" in k]
    assert accuracies and all(0.0 <= a <= 1.0 for a in accuracies)
    assert cli.trainer.global_step == 2
    # the number of classes and the image shape were linked from the data module
    assert cli.model.hparams["num_classes"] == cli.datamodule.num_classes
    assert tuple(cli.model.hparams["image_shape"]) == tuple(cli.datamodule.image_shape)


def test_user_module_by_class_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    user_model = {"class_path": "user_models.TinyMLP", "init_args": {"hidden": 8}}
    cli = run_lightning(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "quickstart.yaml"),
            f"--model.init_args.model={yaml.safe_dump(user_model)}",
            "--trainer.fast_dev_run=1",
            "--trainer.accelerator=cpu",
        ]
    )
    assert type(cli.model.model).__name__ == "TinyMLP"
    assert cli.model.model.net[1].out_features == 8
    assert "model" not in cli.model.hparams  # the module lives in the state dict, not hparams


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli(
        "fit",
        "--config",
        "configs/cifar10/clean.yaml",
        f"--data.init_args.root={tmp_path / 'nowhere'}",
        "--data.init_args.download=false",
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}",
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py" / "data_batch_1") in result.stderr
    assert "download: true" in result.stderr


def _quickstart(tmp_path: Path, *extra: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    result = run_cli(
        "fit",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}",
        *extra,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "quickstart"


@pytest.mark.slow
def test_quickstart_reaches_90_percent(tmp_path: Path) -> None:
    log_dir = _quickstart(tmp_path)
    scalars = read_scalars(log_dir)
    final_acc = scalars["val/acc"][-1][1]
    assert final_acc >= 0.90
    assert len(scalars["val/acc"]) == 8  # one validation per epoch
    assert (log_dir / "version_0" / "config.yaml").is_file()  # the resolved config is saved


@pytest.mark.slow
def test_ddp_two_cpu_processes_log_the_same_keys_and_write_metrics(tmp_path: Path) -> None:
    limits = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=4", "--test_after_fit=true"]
    single_dir = _quickstart(tmp_path / "single", *limits)
    ddp_dir = _quickstart(
        tmp_path / "ddp", *limits, "--trainer.strategy=ddp", "--trainer.devices=2"
    )
    single, ddp = read_scalars(single_dir), read_scalars(ddp_dir)
    assert set(single) == set(ddp)
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(ddp)
    assert 0.0 <= ddp["val/acc"][-1][1] <= 1.0
    # after training, the test of the final weights ran on both ranks and rank 0 wrote it down
    for run in (single_dir, ddp_dir):
        record = json.loads((run / "version_0" / "metrics.json").read_text())
        assert 0.0 <= record["test"]["test/acc"] <= 1.0 and record["epochs"] == 1


def test_default_root_dir_is_the_one_place_a_run_writes(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    result = run_cli(
        "fit",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--trainer.accelerator=cpu",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=2",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={elsewhere}",
        "--test_after_fit=true",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = elsewhere / "quickstart" / "version_0"
    assert (run / "metrics.json").is_file() and (run / "checkpoints").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["elsewhere"]  # nothing under ./runs
    scalars = read_scalars(elsewhere / "quickstart")
    assert "val/acc" in scalars
    assert "hp_metric" not in scalars  # TensorBoard's placeholder -1 is off


def test_checkpoint_preset_adds_callbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = run_lightning(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "quickstart.yaml"),
            "--config",
            str(REPO / "callbacks" / "checkpoint.yaml"),
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=2",
            "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    names = {type(cb).__name__ for cb in cli.trainer.callbacks}
    assert {"ModelCheckpoint", "EarlyStopping"} <= names
    checkpoints = sorted(p.name for p in tmp_path.rglob("*.ckpt"))
    assert "last.ckpt" in checkpoints
    assert any(name.startswith("best-epoch") for name in checkpoints)
