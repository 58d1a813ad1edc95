"""``python -m unlearn landscape`` end to end on two tiny runs (clean and noise-poisoned)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, write_random_poison
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from unlearn import cli
from unlearn.data import DigitsDataModule
from unlearn.errors import UnlearnError
from unlearn.landscape.command import main
from unlearn.landscape.trajectory import load_trajectory


def _fit(tmp: Path, name: str, poison: Path | None) -> Path:
    """Train the landscape linear config for 4 steps, a checkpoint every 2 (plus step 0)."""
    config = yaml.safe_load((REPO / "configs" / "landscape" / "linear_clean.yaml").read_text())
    trajectory = tmp / name / "trajectory"
    config["trainer"].update(
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp / name),
    )
    config["trainer"]["callbacks"][0]["init_args"].update(
        dirpath=str(trajectory), every_n_train_steps=2
    )
    config["data"]["init_args"].update(batch_size=32, poison=str(poison) if poison else None)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    cli.run_lightning(["fit", "--config", str(path)])
    return trajectory


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("landscape")
    poison = write_random_poison(DigitsDataModule(), tmp / "poison", eps=0.1)
    return {
        "root": tmp,
        "poison": poison,
        "clean": _fit(tmp, "clean", None),
        "noise": _fit(tmp, "noise", poison),
    }


def _config(runs: dict[str, Path], out: Path, names: tuple[str, ...] = ("clean", "noise")) -> Path:
    config = {
        "runs": [
            {
                "name": name,
                "checkpoints": str(runs[name]),
                "data": {
                    "class_path": "DigitsDataModule",
                    "init_args": {"poison": str(runs["poison"]) if name == "noise" else None},
                },
            }
            for name in names
        ],
        "output_dir": str(out / "figures"),
        "probe": {"num_samples": 64, "batch_size": 32},
        "surface": {"steps_1d": 5, "steps_2d": 3, "span": [-0.5, 0.5]},
        "trajectory": {"steps": 3},
        "parameters": {"top_k": 4},
    }
    path = out / "landscape.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_trajectory_checkpoints_are_weights_only_and_start_at_step_zero(runs: dict) -> None:
    files = sorted(runs["clean"].glob("*.ckpt"))
    assert [f.name for f in files] == [
        "epoch=0-step=0.ckpt",
        "epoch=0-step=2.ckpt",
        "epoch=0-step=4.ckpt",
    ]
    checkpoint = torch.load(files[1], weights_only=True)
    assert "optimizer_states" not in checkpoint and "state_dict" in checkpoint
    trajectory, _ = load_trajectory("clean", runs["clean"])
    assert trajectory.steps.tolist() == [0, 2, 4]
    assert trajectory.points.shape == (3, 1024 * 10 + 10)
    noise, _ = load_trajectory("noise", runs["noise"])
    torch.testing.assert_close(noise.points[0], trajectory.points[0])  # same seed, same start
    assert not torch.equal(noise.points[-1], trajectory.points[-1])


def test_command_writes_figures_grids_and_tensorboard(
    runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _config(runs, tmp_path)
    cli.main(["landscape", "--config", str(config), f"--log_dir={tmp_path / 'tb'}"])
    captured = capsys.readouterr()
    # a progress bar over the grid points of every surface
    assert "clean: 2-D surface: 100%" in captured.err and "9/9" in captured.err
    assert "noise: trajectory plane: 100%" in captured.err
    assert "wrote " in captured.out and "noise: 3 checkpoints" in captured.out
    out = tmp_path / "figures"
    for name in (
        "surface_1d",
        "surface_2d",
        "surface_3d_clean",
        "surface_3d_noise",
        "trajectory",
        "parameters_clean_vs_noise",
        "parameters_clean_vs_noise_input_map",  # the linear model reads raw pixels
        "parameters_concentration",
    ):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert png.stat().st_size < 400_000
    line = np.load(out / "surface_1d.npz")
    assert line["loss"].shape == (2, 5) and line["alphas"].shape == (5,)
    assert list(line["runs"]) == ["clean", "noise"]
    plane = np.load(out / "surface_2d.npz")
    assert plane["loss"].shape == plane["acc"].shape == (2, 3, 3)
    assert np.all(np.isfinite(plane["loss"])) and np.all((plane["acc"] >= 0) & (plane["acc"] <= 1))
    trajectory = np.load(out / "trajectory.npz")
    assert trajectory["loss"].shape == (2, 3, 3)
    assert trajectory["coords_clean"].shape == trajectory["coords_noise"].shape == (3, 2)
    assert np.allclose(trajectory["coords_clean"][-1], 0, atol=1e-4)  # centred on clean's end
    ratio = trajectory["explained_variance_ratio"]
    assert ratio.shape == (2,) and 0.99 <= ratio.sum() <= 1 + 1e-6  # 6 points, 2 directions
    parameters = np.load(out / "parameters.npz")
    assert parameters["clean_vs_noise_score"].shape == (10250,)
    assert parameters["clean_vs_noise_paths_noise"].shape == (3, 4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["analyses"] == ["surface", "trajectory", "parameters"]
    assert summary["runs"]["noise"]["checkpoints"] == 3
    assert 0 <= summary["runs"]["clean"]["test_acc"] <= 1
    assert yaml.safe_load((out / "config.yaml").read_text())["surface"]["steps_2d"] == 3
    events = next((tmp_path / "tb").glob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    assert {"landscape/surface_2d", "landscape/trajectory"} <= set(accumulator.Tags()["images"])


def test_one_run_skips_the_comparison_and_honours_the_settings(
    runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _config(runs, tmp_path, names=("noise",))
    main(["--config", str(config), "--surface.dims=[1]", "--bn=recompute", "--progress=false"])
    err = capsys.readouterr().err
    assert "skipping 'parameters': needs two runs" in err
    out = tmp_path / "figures"
    names = sorted(p.name for p in out.iterdir())
    assert "surface_2d.npz" not in names and "parameters.npz" not in names
    assert "trajectory_noise.png" in names and "surface_1d.png" in names
    assert np.load(out / "surface_1d.npz")["loss"].shape == (1, 5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--surface.span=[1.0, -1.0]", "surface.span must be (low, high)"),
        ("--analyses=[parameters]", "'parameters' needs two runs"),
    ],
)
def test_bad_input_is_a_clear_error(
    runs: dict, tmp_path: Path, override: str, message: str, capsys: pytest.CaptureFixture
) -> None:
    config = _config(runs, tmp_path, names=("clean",))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["landscape", "--config", str(config), override, "--progress=false"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "figures").exists()  # refused before anything is written


def test_missing_checkpoints_are_a_clear_error(
    runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _config({**runs, "clean": tmp_path / "nowhere"}, tmp_path, names=("clean",))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["landscape", "--config", str(config)])
    assert exit_info.value.code == 2
    (message,) = capsys.readouterr().err.strip().splitlines()
    assert message.startswith("unlearn landscape: error: checkpoints: no .ckpt files found at")
    assert str(tmp_path / "nowhere") in message
    assert not (tmp_path / "figures").exists()  # nothing left behind


def test_checkpoints_of_two_runs_in_one_place_are_refused(runs: dict, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(runs["clean"], mixed)
    shutil.copy(runs["noise"] / "epoch=0-step=4.ckpt", mixed / "epoch=0-step=4-v1.ckpt")
    with pytest.raises(UnlearnError, match="both at step 4 but hold different weights"):
        load_trajectory("mixed", mixed)


def test_help_lists_the_settings(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--runs",
        "--surface.steps_2d",
        "--trajectory.shared_basis",
        "--bn",
        "--log_dir",
    ):
        assert option in text


@pytest.mark.parametrize(
    ("config_name", "name", "runs"),
    [
        ("linear", "linear", ["clean", "em", "ops"]),
        ("lenet5", "lenet5", ["clean", "em", "ops"]),
        ("linear_control", "linear", ["clean", "em", "ops", "random"]),
        ("lenet5_control", "lenet5", ["clean", "em", "ops", "random"]),
    ],
)
def test_repository_configs_parse_and_pair_with_training_configs(
    config_name: str, name: str, runs: list[str], capsys: pytest.CaptureFixture
) -> None:
    config = REPO / "configs" / "landscape" / f"{config_name}.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert [run["name"] for run in printed["runs"]] == runs
    for run in printed["runs"]:
        train = yaml.safe_load(
            (REPO / "configs" / "landscape" / f"{name}_{run['name']}.yaml").read_text()
        )
        callback = train["trainer"]["callbacks"][0]
        assert callback["class_path"] == "unlearn.landscape.TrajectoryCheckpoint"
        assert callback["init_args"]["dirpath"] == run["checkpoints"]
        assert train["model"]["init_args"]["model"] == name
        assert train["data"]["init_args"].get("poison") == run["data"]["init_args"]["poison"]


def test_trajectory_preset_keeps_the_initial_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli.run_lightning(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "quickstart.yaml"),
            "--config",
            str(REPO / "callbacks" / "trajectory.yaml"),
            "--model.init_args.model=linear",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    callbacks = [type(cb).__name__ for cb in result.trainer.callbacks]
    assert callbacks.count("TrajectoryCheckpoint") == 1 and "ModelCheckpoint" not in callbacks
    files = sorted(p.name for p in tmp_path.rglob("*.ckpt"))
    assert files == ["epoch=0-step=0.ckpt"]  # every 20 steps: only the start after 2 steps
    checkpoint = torch.load(next(tmp_path.rglob("*.ckpt")), weights_only=True)
    assert "optimizer_states" not in checkpoint
