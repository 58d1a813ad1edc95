"""SharpnessCallback in real training runs: files, TensorBoard, resume, DDP, no side effects."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import (
    REPO,
    read_rows,
    run_cli,
    run_cli_parallel,
    sal_tables_single_and_ddp,
    small_sal_preset,
)
from lightning import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tb import read_scalars
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from unlearn.callbacks import SharpnessCallback
from unlearn.cli import run_lightning
from unlearn.data import DigitsDataModule
from unlearn.models import SmallCNN
from unlearn.sharpness import SAL_COLUMNS, SalTable
from unlearn.tasks import ClassificationTask

SMALL = {"probe_size": 48, "probe_batch_size": 16, "steps_per_iter": 2, "iters": 2}
LAYERS = 8  # SmallCNN: six convolutions, two linear layers


class LossRecorder(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(
    root: Path,
    callbacks: list[Callback],
    epochs: int = 2,
    ckpt_path: str | None = None,
    version: int = 0,
) -> Trainer:
    seed_everything(0)
    data = DigitsDataModule(batch_size=32, augment=True)
    task = ClassificationTask(
        model=SmallCNN(10, (1, 32, 32), width=4), num_classes=10, image_shape=(1, 32, 32)
    )
    trainer = Trainer(
        max_epochs=epochs,
        limit_train_batches=3,
        limit_val_batches=1,
        accelerator="cpu",
        logger=TensorBoardLogger(root, name="run", version=version),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(task, datamodule=data, ckpt_path=ckpt_path)
    return trainer


def test_writes_sal_csv_and_tensorboard(tmp_path: Path) -> None:
    trainer = fit(tmp_path, [SharpnessCallback(first_order=True, **SMALL)], epochs=2)
    path = Path(trainer.log_dir) / "sal.csv"
    rows = read_rows(path)
    assert list(rows[0])[: len(SAL_COLUMNS)] == list(SAL_COLUMNS)
    assert len(rows) == 2 * LAYERS  # epochs 0 and 1 (the last also covers the end)
    assert [int(r["epoch"]) for r in rows] == [0] * LAYERS + [1] * LAYERS
    assert [int(r["step"]) for r in rows] == [3] * LAYERS + [6] * LAYERS
    table = SalTable.read(path)
    assert table.sal.shape == (2, LAYERS)
    scalars = read_scalars(Path(trainer.log_dir))
    assert {"sal/mean", "lp/count", "sal/features.0.0", "sal/first_order_rho"} <= set(scalars)
    assert all(-1.0 <= v <= 1.0 for _, v in scalars["sal/first_order_rho"])
    assert [step for step, _ in scalars["sal/mean"]] == [3, 6]
    events = next(Path(trainer.log_dir).glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    assert "sal/heatmap" in acc.Tags()["images"]
    assert "sal/histogram" in acc.Tags()["histograms"]


def test_every_n_epochs_and_end(tmp_path: Path) -> None:
    trainer = fit(tmp_path, [SharpnessCallback(every_n_epochs=2, **SMALL)], epochs=3)
    epochs = sorted({int(r["epoch"]) for r in read_rows(Path(trainer.log_dir) / "sal.csv")})
    assert epochs == [1, 2]  # epoch 1 is due, epoch 2 is the last


def test_training_is_unchanged(tmp_path: Path) -> None:
    without, with_sal = LossRecorder(), LossRecorder()
    fit(tmp_path / "a", [without], epochs=2)
    fit(tmp_path / "b", [with_sal, SharpnessCallback(**SMALL)], epochs=2)
    assert len(without.losses) == 6
    assert without.losses == with_sal.losses


def test_reference_gives_ud_curve(tmp_path: Path) -> None:
    clean = fit(tmp_path / "clean", [SharpnessCallback(**SMALL)], epochs=2)
    reference = Path(clean.log_dir) / "sal.csv"
    again = fit(
        tmp_path / "again", [SharpnessCallback(reference=str(reference), **SMALL)], epochs=2
    )
    scalars = read_scalars(Path(again.log_dir))
    # the same seed and data: the same SAL values, so UD(t) is exactly 1 at each checkpoint
    assert [v for _, v in scalars["ud"]] == [1.0, 1.0]
    assert [v for _, v in scalars["lp/ratio"]] == [1.0, 1.0]


def test_reference_with_other_layers_is_refused(tmp_path: Path) -> None:
    reference = tmp_path / "ref.csv"
    with reference.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SAL_COLUMNS)
        writer.writerow([0, 1, "other", 5, 0.1, 0.1, 0.0, 0.0, 2.3, 0.1])
    with pytest.raises(ValueError, match="only in the reference: \\['other'\\]"):
        fit(tmp_path, [SharpnessCallback(reference=str(reference), **SMALL)], epochs=1)


def test_resume_continues_without_duplicates_or_gaps(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1)
    first = fit(tmp_path, [SharpnessCallback(**SMALL), checkpoint], epochs=2)
    first_rows = read_rows(Path(first.log_dir) / "sal.csv")
    resumed = fit(
        tmp_path,
        [SharpnessCallback(**SMALL), ModelCheckpoint(dirpath=tmp_path / "ckpt2")],
        epochs=3,
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
        version=1,  # a new log directory: the history comes from the checkpoint
    )
    rows = read_rows(Path(resumed.log_dir) / "sal.csv")
    assert [int(r["epoch"]) for r in rows] == [0] * LAYERS + [1] * LAYERS + [2] * LAYERS
    assert rows[: 2 * LAYERS] == first_rows


def test_preset_parses_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = small_sal_preset(tmp_path, **SMALL)
    monkeypatch.chdir(tmp_path)
    cli = run_lightning(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "quickstart.yaml"),
            "--config",
            str(small),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert any(isinstance(cb, SharpnessCallback) for cb in cli.trainer.callbacks)
    assert len(read_rows(Path(cli.trainer.log_dir) / "sal.csv")) == LAYERS


@pytest.mark.slow
def test_ddp_two_processes_equal_single_process(tmp_path: Path) -> None:
    """Layers split across 2 CPU processes give the single-process values.

    LeNet-5 has no batch norm and lr 0 keeps its weights at the seeded initialisation, so
    the model at the checkpoint is the same whatever data each process trained on.
    """
    small = small_sal_preset(tmp_path, **SMALL)
    fit_args = [
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--config",
        str(small),
        "--model.init_args.model=lenet5",
        "--model.init_args.lr=0.0",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.accelerator=cpu",
    ]
    paths = sal_tables_single_and_ddp(
        tmp_path, fit_args, ["--trainer.strategy=ddp", "--trainer.devices=2"]
    )
    single, ddp = (read_rows(path) for path in paths)
    assert [r["layer"] for r in ddp] == [r["layer"] for r in single]
    assert len(single) == 5  # LeNet-5: two convolutions, three linear layers
    for a, b in zip(single, ddp, strict=True):
        for key in ("sal", "s_max", "s_min", "sal_acc", "loss0"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-6), (a["layer"], key)


def test_split_layers_balances_cost() -> None:
    from unlearn.sharpness.shard import layer_costs, split_layers

    parts = split_layers(["a", "b", "c", "d", "e"], [10, 1, 7, 3, 3], 2)
    # costliest first, each to the lighter part: a->0, c->1, d->1 (10), e->0 (tie), b->1
    assert parts == [["a", "e"], ["b", "c", "d"]]  # loads 13 and 11
    assert split_layers(["a"], [1.0], 3) == [["a"], [], []]
    model = SmallCNN(10, (1, 32, 32), width=4)
    names = [f"features.{i}.0" for i in (0, 1, 3, 4, 6, 7)] + ["classifier.1", "classifier.3"]
    costs = layer_costs(model, torch.rand(2, 1, 32, 32), names)
    # the first convolution's suffix is the whole network: it costs the most
    assert costs[0] == max(costs) and all(c > 0 for c in costs)


@pytest.mark.slow
def test_em_poisoned_quickstart_flattens_the_layers_after_the_shortcut(tmp_path: Path) -> None:
    """End to end on the built-in digits: EM poison, clean and EM quickstart runs with
    ``callbacks/sal.yaml``, then ``ud``.

    What holds in every measured run (docs/sal_ud.md): the EM model fits its poisoned probe
    to a far lower loss than the clean model fits clean data, and at the last checkpoint
    more of its layers are exactly flat (SAL < 0.01 nats). The count-based UD itself is not
    asserted: on the digits it ranged from 0.64 to 1.29 across seeds and schedules (issue 4
    stays open on that bar). The two runs train at the same time, one thread each.
    """
    poison = tmp_path / "em"
    result = run_cli(
        "poison",
        "--config",
        str(REPO / "configs" / "digits" / "poison_em.yaml"),
        f"--output_dir={poison}",
        cwd=tmp_path,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {"clean": [], "em": [f"--data.init_args.poison={poison}"]}
    commands = [
        [
            "fit",
            "--config",
            str(REPO / "configs" / "quickstart.yaml"),
            "--config",
            str(REPO / "callbacks" / "sal.yaml"),
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path / name}",
            *extra,
        ]
        for name, extra in runs.items()
    ]
    for result in run_cli_parallel(commands, cwd=tmp_path, timeout=1800):
        assert result.returncode == 0, result.stderr[-3000:]
    (clean,) = (tmp_path / "clean").rglob("sal.csv")
    (em,) = (tmp_path / "em").rglob("sal.csv")
    out = tmp_path / "ud.json"
    result = run_cli("ud", "--clean", str(clean), "--poisoned", str(em), "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert row["checkpoints"] == 4  # epochs 2, 4, 6, 8 of the quickstart
    assert 0 < row["ud"] < float("inf") and row["lp_clean"] > 0
    last = {}
    for name, path in (("clean", clean), ("em", em)):
        rows = read_rows(path)
        final = [r for r in rows if r["step"] == rows[-1]["step"]]
        assert len(final) == LAYERS
        last[name] = {
            "loss0": float(final[0]["loss0"]),
            "flat": sum(abs(float(r["sal"])) < 0.01 for r in final),
        }
    assert last["em"]["loss0"] < last["clean"]["loss0"] / 5, last
    assert last["em"]["flat"] >= 3 and last["em"]["flat"] > last["clean"]["flat"], last


#: The SAL numerics among the callback's arguments (``SALSettings`` fields of the same name).
SAL_NUMERICS = "eps iters lr_min lr_max steps_per_iter cache_prefix pair_directions".split()
# Where each flat argument of the presets lands: (object path from the callback, attribute).
PRESET_FIELDS = {
    "every_n_epochs": ("", "every_n_epochs"),
    "first_order": ("monitor", "first_order"),
    "layers": ("monitor", "layers"),
    "reference": ("monitor", "reference"),
    "probe_size": ("monitor.probe", "size"),
    "probe_batch_size": ("monitor.probe", "batch_size"),
    "seed": ("monitor.probe", "seed"),
    "input_key": ("monitor.probe", "input_key"),
    "target_key": ("monitor.probe", "target_key"),
    **{name: ("monitor.settings", name) for name in SAL_NUMERICS},
}


@pytest.mark.parametrize(
    ("config", "preset"),
    [
        ("quickstart.yaml", "sal.yaml"),
        ("quickstart.yaml", "sal_fast.yaml"),
        ("multitask_quickstart.yaml", "sal.yaml"),
    ],
)
def test_presets_build_the_settings_they_name(
    config: str, preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every value of a preset reaches the measurement; the others are the defaults."""
    import inspect

    import yaml

    (entry,) = yaml.safe_load((REPO / "callbacks" / preset).read_text())["trainer"]["callbacks+"]
    given = entry["init_args"]
    assert set(given) <= set(PRESET_FIELDS), set(given) - set(PRESET_FIELDS)
    monkeypatch.chdir(tmp_path)
    cli = run_lightning(
        ["--config", str(REPO / "configs" / config), "--config", str(REPO / "callbacks" / preset)],
        run=False,
    )
    (callback,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, SharpnessCallback)]
    defaults = inspect.signature(SharpnessCallback).parameters
    for name, (where, attribute) in PRESET_FIELDS.items():
        owner = callback
        for part in filter(None, where.split(".")):
            owner = getattr(owner, part)
        expected = given[name] if name in given else defaults[name].default
        assert getattr(owner, attribute) == expected, (preset, name)


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` statement of ``path`` names, function-level ones included."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_layers_point_one_way_callbacks_and_tasks_above_sharpness() -> None:
    """``unlearn.sharpness`` imports neither the tasks, nor the callbacks, nor Lightning, and
    the callback finds multi-task modules by duck typing (it imports no task)."""
    import subprocess
    import sys

    below = {"unlearn.tasks", "unlearn.callbacks", "lightning"}
    for path in sorted((REPO / "unlearn" / "sharpness").glob("*.py")):
        wrong = {m for m in _imported_modules(path) for b in below if f"{m}.".startswith(f"{b}.")}
        assert not wrong, (path.name, wrong)
    for path in sorted((REPO / "unlearn" / "callbacks").glob("*.py")):
        tasks = {m for m in _imported_modules(path) if m.startswith("unlearn.tasks")}
        assert not tasks, (path.name, tasks)
    # and at run time: importing every module of the package loads none of them
    script = (
        "import pkgutil, sys, importlib, unlearn.sharpness as s\n"
        "for m in pkgutil.iter_modules(s.__path__):\n"
        "    importlib.import_module(f'unlearn.sharpness.{m.name}')\n"
        "print([m for m in sys.modules if m.split('.')[0] == 'lightning'\n"
        "       or m.startswith(('unlearn.tasks', 'unlearn.callbacks'))])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", result.stdout


def test_monitor_measures_without_lightning() -> None:
    """The work behind the callback runs on a plain module and a list of samples."""
    from torch import nn

    from unlearn.sharpness import ProbeSettings, SalMonitor, SALSettings, compute_sal
    from unlearn.sharpness.sal_csv import CSV_COLUMNS

    class Holder(nn.Module):  # what the callback gets: a module with a `model`
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))

    torch.manual_seed(0)
    holder = Holder()
    samples = [{"image": torch.rand(1, 4, 4), "label": torch.tensor(i % 3)} for i in range(10)]
    settings = SALSettings(iters=2)
    monitor = SalMonitor(settings, ProbeSettings(size=6, batch_size=None, seed=1))
    rows = monitor.measure(holder, lambda: samples, epoch=0, step=5, device=torch.device("cpu"))
    assert monitor.measured(5) and not monitor.measured(6)
    assert [list(r)[: len(CSV_COLUMNS)] for r in monitor.rows] == [list(CSV_COLUMNS)] * 2
    chosen = torch.randperm(10, generator=torch.Generator().manual_seed(1))[:6].tolist()
    x = torch.stack([samples[i]["image"] for i in chosen])
    y = torch.stack([samples[i]["label"] for i in chosen])
    expected = compute_sal(holder.model, [(x, y)], settings=settings)
    assert [r["sal"] for r in rows] == [r.sal for r in expected]
    report = monitor.report(holder, rows, torch.device("cpu"))
    assert report.metrics["sal/mean"] == pytest.approx(sum(r.sal for r in expected) / 2)
    assert report.tables[None].sal.shape == (1, 2) and report.similarity is None
