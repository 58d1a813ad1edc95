"""SAL on a second, clean held-out probe: ``probe: test`` and ``name`` on SharpnessCallback.

The held-out data module below serves its test split inverted (white background), so a probe
image tells by its pixels which split it came from.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from lightning import Callback, LightningDataModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tb import read_scalars
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from unlearn.callbacks import SharpnessCallback
from unlearn.cli import run_lightning
from unlearn.data import DigitsDataModule
from unlearn.data.datasets import TensorImageSource
from unlearn.errors import UnlearnError
from unlearn.models import SmallCNN
from unlearn.sharpness import SAL_COLUMNS
from unlearn.sharpness.monitor import ProbeSettings, draw_probe
from unlearn.tasks import ClassificationTask
from unlearn.ud_command import main as ud_main

SMALL = {"probe_size": 48, "probe_batch_size": 16, "steps_per_iter": 2, "iters": 2}
HELDOUT = {"probe": "test", "name": "sal_heldout", "every_n_epochs": 2}
LAYERS = 8  # SmallCNN: six convolutions, two linear layers
BATCHES = 3  # training batches per epoch


class InvertedTestDigits(DigitsDataModule):
    """Digits whose test split is inverted (255 - x): test images are mostly white."""

    def load_split(self, train: bool) -> TensorImageSource:
        source = super().load_split(train)
        return source if train else TensorImageSource(255 - source.images, source.labels)


class Interrupt(Exception):
    pass


class InterruptAfterValidation(Callback):
    """Raise when epoch ``epoch``'s validation ends (its SAL is written, its checkpoint not)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_end(self, trainer: Trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            raise Interrupt


def task() -> ClassificationTask:
    return ClassificationTask(
        model=SmallCNN(10, (1, 32, 32), width=4), num_classes=10, image_shape=(1, 32, 32)
    )


def both() -> list[SharpnessCallback]:
    """The paper's SAL every epoch and the held-out SAL every other epoch."""
    return [SharpnessCallback(**SMALL), SharpnessCallback(**HELDOUT, **SMALL)]


def fit(
    root: Path,
    callbacks: list[Callback],
    epochs: int = 3,
    ckpt_path: str | None = None,
    data: LightningDataModule | None = None,
) -> Trainer:
    seed_everything(0, workers=True)
    trainer = Trainer(
        max_epochs=epochs,
        limit_train_batches=BATCHES,
        limit_val_batches=1,
        accelerator="cpu",
        logger=TensorBoardLogger(root, name="run", version=0, default_hp_metric=False),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    data = data or InvertedTestDigits(batch_size=32, augment=True)
    trainer.fit(task(), datamodule=data, ckpt_path=ckpt_path)
    return trainer


def sal_values(path: Path) -> list[dict[str, str]]:
    """The rows of a SAL table without its wall-clock ``seconds`` column."""
    rows = csv.DictReader(io.StringIO(path.read_text()))
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def probe_images(callback: SharpnessCallback, module) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe set a fitted callback measured on, ``(x [N, C, H, W], y [N])``."""
    (pairs,) = callback.monitor.probe_pairs(module, lambda: None).values()  # drawn already
    return torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])


@pytest.fixture(scope="module")
def two_instances(tmp_path_factory: pytest.TempPathFactory):
    """One 3-epoch fit with both instances: ``(trainer, [train one, held-out one])``."""
    callbacks = both()
    trainer = fit(tmp_path_factory.mktemp("two"), list(callbacks))
    return trainer, callbacks


# ---------------------------------------------------------------------- in a fit
def test_two_instances_write_two_files_at_their_epochs(two_instances) -> None:
    trainer, _ = two_instances
    log_dir = Path(trainer.log_dir)
    paper, heldout = sal_values(log_dir / "sal.csv"), sal_values(log_dir / "sal_heldout.csv")
    assert [int(r["epoch"]) for r in paper] == [0] * LAYERS + [1] * LAYERS + [2] * LAYERS
    # every 2nd epoch (epoch 1) and the last one (epoch 2)
    assert [int(r["epoch"]) for r in heldout] == [1] * LAYERS + [2] * LAYERS
    assert [int(r["step"]) for r in heldout] == [6] * LAYERS + [9] * LAYERS
    # same weights at epoch 1 and 2, other images: other losses
    assert [r["loss0"] for r in heldout] != [r["loss0"] for r in paper[LAYERS:]]
    sidecars = [json.loads((log_dir / f).read_text()) for f in ("sal.json", "sal_heldout.json")]
    keys = ("probe", "name", "every_n_epochs")
    recorded = [{k: s["settings"][k] for k in keys} for s in sidecars]
    assert recorded == [
        {"probe": "train", "name": "sal", "every_n_epochs": 1},
        {"probe": "test", "name": "sal_heldout", "every_n_epochs": 2},
    ]


def test_test_probe_is_a_class_balanced_set_of_clean_test_images(two_instances) -> None:
    trainer, (paper, heldout) = two_instances
    module = trainer.lightning_module
    x, y = probe_images(heldout, module)
    test = trainer.datamodule.test_source
    images = test.images.float().div(255).flatten(1)  # [N_test, C*H*W]
    # each probe image is a (clean, unaugmented) test image with its label, none repeated
    matches = [(images == image.flatten()).all(dim=1).nonzero().flatten() for image in x]
    assert all(m.numel() >= 1 for m in matches)
    assert all(int(y[i]) in test.labels[m].tolist() for i, m in enumerate(matches))
    assert len({tuple(m.tolist()) for m in matches}) == len(x) == SMALL["probe_size"]
    # 48 over 10 classes: 5 of each of the first 8, 4 of the last 2
    assert torch.bincount(y, minlength=10).tolist() == [5] * 8 + [4] * 2
    # the paper's probe stays the training images (black background)
    train_x, _ = probe_images(paper, module)
    assert (train_x.flatten(1).mean(1) < 0.5).all() and (x.flatten(1).mean(1) > 0.5).all()


def test_names_do_not_clash_in_tensorboard(two_instances) -> None:
    trainer, _ = two_instances
    scalars = read_scalars(Path(trainer.log_dir))
    steps = {tag: [s for s, _ in points] for tag, points in scalars.items()}
    assert steps["sal/mean"] == steps["lp/count"] == steps["sal/features.0.0"] == [3, 6, 9]
    assert steps["sal_heldout/mean"] == steps["sal_heldout/lp/count"] == [6, 9]
    assert steps["sal_heldout/features.0.0"] == [6, 9]
    heldout = {tag for tag in scalars if tag.startswith("sal_heldout/")}
    assert len(heldout) == LAYERS + 2  # the layers, mean, lp/count: nothing else moved there
    events = next(Path(trainer.log_dir).glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    assert {"sal/heatmap", "sal_heldout/heatmap"} <= set(acc.Tags()["images"])
    assert {"sal/histogram", "sal_heldout/histogram"} <= set(acc.Tags()["histograms"])


def test_each_instance_has_its_own_checkpoint_state(two_instances, tmp_path: Path) -> None:
    trainer, (paper, heldout) = two_instances
    assert paper.state_key == "SharpnessCallback"  # as before: older checkpoints resume
    assert heldout.state_key != paper.state_key and "sal_heldout" in heldout.state_key
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    states = torch.load(path, weights_only=False)["callbacks"]
    epochs = [sorted({r["epoch"] for r in states[c.state_key]["rows"]}) for c in (paper, heldout)]
    assert epochs == [[0, 1, 2], [1, 2]]


@pytest.mark.slow
def test_resume_with_two_instances_continues_both_files(tmp_path: Path) -> None:
    """Interrupted after epoch 2's SAL and validation (``last.ckpt``: epoch 1), resumed."""

    def callbacks(root: Path, interrupt: int | None = None) -> list[Callback]:
        found: list[Callback] = [*both(), ModelCheckpoint(dirpath=root / "ckpt", save_last=True)]
        return found + ([InterruptAfterValidation(interrupt)] if interrupt is not None else [])

    whole = fit(tmp_path / "whole", callbacks(tmp_path / "whole"))
    run = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        fit(run, callbacks(run, interrupt=2))
    last = run / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 1
    resumed = fit(run, callbacks(run), ckpt_path=str(last))

    logs = [Path(t.log_dir) for t in (whole, resumed)]
    for name, epochs in (("sal.csv", [0, 1, 2]), ("sal_heldout.csv", [1, 2])):
        rows = sal_values(logs[1] / name)
        assert rows == sal_values(logs[0] / name)
        assert [int(r["epoch"]) for r in rows] == [e for e in epochs for _ in range(LAYERS)]
    views = [{t: sorted(p) for t, p in read_scalars(log).items()} for log in logs]
    assert views[1] == views[0]
    assert [s for s, _ in views[1]["sal_heldout/mean"]] == [6, 9]


# ---------------------------------------------------------------------- the probe set
def test_test_probe_is_the_same_under_any_training_seed() -> None:
    """The draw depends on the callback's seed and the data only, not the run's seed."""

    def probe(data_seed: int, probe: str, seed: int = 0) -> torch.Tensor:
        seed_everything(data_seed)
        data = DigitsDataModule(seed=data_seed, val_fraction=0.1)
        callback = SharpnessCallback(probe=probe, seed=seed, **SMALL)
        source = data.heldout_probe_dataset if probe == "test" else data.probe_dataset
        pairs = callback.monitor.probe_pairs(task(), source)[None]
        return torch.cat([x for x, _ in pairs])

    assert torch.equal(probe(0, "test"), probe(1, "test"))
    assert not torch.equal(probe(0, "test"), probe(0, "test", seed=1))  # the callback's seed
    # the paper's probe, by contrast, follows the run's validation split
    assert not torch.equal(probe(0, "train"), probe(1, "train"))


def test_train_probe_draw_is_unchanged() -> None:
    """``probe: train`` keeps the plain draw: the first ``probe_size`` of randperm(seed)."""
    samples = DigitsDataModule().probe_dataset()
    expected = torch.randperm(len(samples), generator=torch.Generator().manual_seed(3))[:48]
    found = draw_probe(samples, ProbeSettings(size=48, seed=3))
    assert found == expected.tolist()


def test_balanced_draw_shares_classes_as_far_as_their_sizes_allow() -> None:
    items = [{"label": torch.tensor(c)} for c in [0] * 3 + [1] * 10 + [2] * 10]
    settings = ProbeSettings(size=12, seed=0, balanced=True)
    chosen = draw_probe(items, settings)
    labels = [int(items[i]["label"]) for i in chosen]
    assert len(set(chosen)) == 12
    assert [labels.count(c) for c in range(3)] == [3, 5, 4]  # class 0 has only 3
    assert labels[:3] == [0, 1, 2]  # round-robin: every batch about balanced
    smaller = draw_probe(items, ProbeSettings(size=6, seed=0, balanced=True))
    assert set(smaller) <= set(chosen)
    everything = draw_probe(items, ProbeSettings(size=100, seed=0, balanced=True))
    assert sorted(everything) == list(range(len(items)))
    # targets that are not class indices: the plain draw
    floats = [{"label": torch.tensor(float(c))} for c in range(23)]
    plain = draw_probe(floats, ProbeSettings(size=12, seed=0))
    assert draw_probe(floats, ProbeSettings(size=12, seed=0, balanced=True)) == plain


class LabelsOnly:
    """A data set whose images cannot be read: only its ``labels``."""

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, i: int) -> dict:
        raise AssertionError("an image was loaded to draw the probe")


def test_balanced_draw_takes_a_data_sets_labels_without_loading_images() -> None:
    data = DigitsDataModule().heldout_probe_dataset()
    items = [data[i] for i in range(len(data))]  # the same samples, read one by one
    settings = ProbeSettings(size=48, seed=0, balanced=True)
    chosen = draw_probe(data, settings)
    assert chosen == draw_probe(items, settings)
    assert draw_probe(LabelsOnly(data.labels), settings) == chosen


# ---------------------------------------------------------------------- settings
def write_reference(directory: Path, **settings: object) -> Path:
    """A clean ``sal.csv`` (one checkpoint, two layers) with a ``sal.json`` of ``settings``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "sal.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SAL_COLUMNS)
        for layer in ("a", "b"):
            writer.writerow([0, 3, layer, 100, 0.5, 0.5, 0.0, 0.0, 2.0, 0.1])
    record = {"probe_size": 48, "probe_batch_size": 16, "steps_per_iter": 2, "eps": 0.05}
    record |= {"iters": 2, "lr_min": 0.1, "lr_max": 0.1, "every_n_epochs": 2, **settings}
    sidecar = {"format": 1, "settings": record, "non_finite": []}
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def test_a_reference_measured_on_the_other_probe_is_refused(tmp_path: Path) -> None:
    train_ref = write_reference(tmp_path / "train", probe="train")
    test_ref = write_reference(tmp_path / "test", probe="test")
    older = write_reference(tmp_path / "old")  # written before `probe` existed: train
    message = "this run's settings and {} record different SAL settings: probe {} vs {};"
    for reference, ours, theirs in ((train_ref, "test", "train"), (older, "test", "train")):
        expected = message.format(reference.with_suffix(".json"), ours, theirs)
        with pytest.raises(UnlearnError, match=re.escape(expected)):
            SharpnessCallback(**HELDOUT, **SMALL, reference=str(reference))
    with pytest.raises(UnlearnError, match=re.escape("probe train vs test;")):
        SharpnessCallback(**SMALL, every_n_epochs=2, reference=str(test_ref))
    # the same probe is taken, an older file for the paper's probe too
    SharpnessCallback(**HELDOUT, **SMALL, reference=str(test_ref))
    SharpnessCallback(**SMALL, every_n_epochs=2, reference=str(older))
    # `unlearn ud` compares the same settings
    with pytest.raises(SystemExit) as refused:
        ud_main(["--clean", str(train_ref), "--poisoned", str(test_ref)])
    assert refused.value.code == 2


def test_bad_probe_and_name_are_refused_in_one_line() -> None:
    with pytest.raises(UnlearnError, match=r"^SharpnessCallback: probe must be one of "):
        SharpnessCallback(probe="val")
    with pytest.raises(UnlearnError, match=r"^SharpnessCallback: name must be a file stem"):
        SharpnessCallback(name="sal/heldout")


class NoHeldoutData(LightningDataModule):
    """A data module with the paper's probe but no ``heldout_probe_dataset()``."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = DigitsDataModule(batch_size=32)

    def train_dataloader(self):
        return self.inner.train_dataloader()

    def probe_dataset(self):
        return self.inner.probe_dataset()


def test_a_data_module_without_a_heldout_split_is_refused(tmp_path: Path) -> None:
    expected = (
        "SharpnessCallback: probe 'test' needs a data module with heldout_probe_dataset() "
        "(the clean test split, without augmentation), found NoHeldoutData"
    )
    batches: list[int] = []

    class CountBatches(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            batches.append(batch_idx)

    callbacks = [SharpnessCallback(**HELDOUT, **SMALL), CountBatches()]
    with pytest.raises(UnlearnError, match=f"^{re.escape(expected)}$"):
        fit(tmp_path, callbacks, epochs=1, data=NoHeldoutData())
    assert batches == []  # refused when the fit starts, before any training


# ---------------------------------------------------------------------- the preset
def test_heldout_preset_matches_the_paper_preset_and_is_in_the_grid() -> None:
    def init_args(name: str) -> dict:
        (entry,) = yaml.safe_load((REPO / "callbacks" / name).read_text())["trainer"]["callbacks+"]
        return entry["init_args"]

    paper = init_args("sal_fashion_mnist.yaml")
    heldout = init_args("sal_fashion_mnist_heldout.yaml")
    assert {k: heldout.pop(k) for k in HELDOUT} == {**HELDOUT, "every_n_epochs": 6}
    paper.pop("every_n_epochs")
    assert heldout == paper  # the same SAL settings and probe size
    grid = yaml.safe_load((REPO / "configs" / "benchmark" / "fashion_mnist.yaml").read_text())
    assert grid["callbacks"] == [
        "callbacks/sal_fashion_mnist.yaml",
        "callbacks/sal_fashion_mnist_heldout.yaml",
    ]
    args = ["--config", str(REPO / "configs" / "quickstart.yaml")]
    for preset in grid["callbacks"]:
        args += ["--config", str(REPO / preset)]
    trainer = run_lightning(args, run=False).trainer  # Lightning refuses clashing state keys
    built = [c for c in trainer.callbacks if isinstance(c, SharpnessCallback)]
    assert [(c.name, c.probe, c.every_n_epochs) for c in built] == [
        ("sal", "train", 3),
        ("sal_heldout", "test", 6),
    ]
