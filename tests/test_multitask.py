"""MultiTaskTask and SegmentationTask: heads, losses, metrics, new tasks, CLI, per-task SAL."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_rows
from lightning import Trainer

from unlearn.cli import run_lightning
from unlearn.data.synthetic_scenes import generate
from unlearn.data.taskonomy import TaskonomyDataModule
from unlearn.defenses import CutMix, Defense
from unlearn.models.heads import build_encoder
from unlearn.sharpness import per_task_sal, task_similarity
from unlearn.tasks.heads import (
    TASKS,
    DenseRegressionTask,
    DepthTask,
    NormalTask,
    SegmentationSpec,
    register_task,
)
from unlearn.tasks.multitask import MultiTaskTask, SegmentationTask

REPO = Path(__file__).resolve().parents[1]
DOMAINS = ["rgb", "class_scene", "segment_semantic", "depth_euclidean", "normal", "keypoints2d"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mt") / "scenes"
    generate(
        root, ["hanson", "wiconisco", "ihlen"], points_per_building=2, views_per_point=2, size=16
    )
    return root


def data_module(root: Path, domains: list[str] = DOMAINS) -> TaskonomyDataModule:
    return TaskonomyDataModule(
        root=root,
        synthetic=True,
        domains=domains,
        image_size=16,
        batch_size=4,
        train_buildings=["hanson"],
        val_buildings=["wiconisco"],
        test_buildings=["ihlen"],
    )


def small(**kwargs) -> MultiTaskTask:
    return MultiTaskTask(num_classes=4, image_shape=(3, 16, 16), width=4, head_width=4, **kwargs)


def test_heads_output_shapes(scenes: Path) -> None:
    data = data_module(scenes)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    out = small()(batch["rgb"])
    assert out["class_scene"].shape == (4, 4)
    assert out["segment_semantic"].shape == (4, 18, 16, 16)
    assert out["depth_euclidean"].shape == out["keypoints2d"].shape == (4, 1, 16, 16)
    assert out["normal"].shape == (4, 3, 16, 16)
    for name in ("resnet18", "small_cnn"):
        encoder = build_encoder(name, 3, 4)
        features = encoder(torch.rand(2, 3, 16, 16))
        assert [f.shape[1] for f in features] == encoder.channels
        assert [16 // f.shape[-1] for f in features] == encoder.strides


def test_segmentation_ignores_label_zero() -> None:
    spec = SegmentationSpec()
    logits = torch.randn(2, 18, 4, 4)
    target = torch.randint(1, 18, (2, 4, 4))
    target[:, 0] = 0
    changed = logits.clone()
    changed[:, :, 0] += 100 * torch.randn(2, 18, 4)  # only ignored pixels differ
    assert torch.allclose(spec.loss(logits, target), spec.loss(changed, target))
    metrics = spec.metrics()
    perfect = torch.nn.functional.one_hot(target, 18).permute(0, 3, 1, 2).float()
    perfect[:, :, 0] = (
        torch.nn.functional.one_hot(torch.zeros(2, 4, dtype=torch.long), 18)
        .permute(0, 2, 1)
        .float()
    )  # predicts "0" where ignored: does not count
    spec.update(metrics, perfect, target)
    values = metrics.compute()
    assert values["miou"] == pytest.approx(1.0) and values["pixel_acc"] == pytest.approx(1.0)
    assert spec.correct(perfect, target) == pytest.approx(2.0)


def test_depth_and_normal_metrics_respect_masks() -> None:
    depth = DepthTask()
    target = torch.tensor([[[[2.0, 4.0]], [[1.0, 0.0]]]])  # [1, 2, 1, 2]: metres, mask
    pred = torch.tensor([[[[3.0, 100.0]]]])
    assert depth.loss(pred, target) == pytest.approx(1.0)  # invalid pixel ignored, metres
    metrics = depth.metrics()
    depth.update(metrics, pred, target)
    values = metrics.compute()
    assert values["l1"] == pytest.approx(1.0) and values["absrel"] == pytest.approx(0.5)
    normal = NormalTask()
    vec = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2)
    target = torch.cat([vec, torch.tensor([[[[1.0, 0.0]]]])], 1)
    pred = torch.stack(
        [torch.tensor([[0.0, 5.0]]), torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2)]
    ).unsqueeze(0)  # 90 degrees at the valid pixel
    metrics = normal.metrics()
    normal.update(metrics, pred, target)
    assert metrics.compute()["angle"] == pytest.approx(90.0, abs=1e-3)
    normal.update(metrics, vec * 3, target)  # scale does not matter: 0 degrees
    assert metrics.compute()["angle"] == pytest.approx(45.0, abs=1e-2)


def test_loss_weights(scenes: Path) -> None:
    data = data_module(scenes)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    torch.manual_seed(0)
    task = small(loss_weights={"depth_euclidean": 0.0, "normal": 2.0})
    losses, _ = task.task_losses(batch)
    assert task.loss_weights["class_scene"] == 1.0  # equal by default
    total = (
        task.training_step(batch, 0)
        if False
        else sum(task.loss_weights[n] * v for n, v in losses.items())
    )
    expected = (
        losses["class_scene"]
        + losses["segment_semantic"]
        + 2 * losses["normal"]
        + losses["keypoints2d"]
    )
    assert torch.allclose(total, expected)
    total.backward()
    head = task.model.heads["depth_euclidean"]
    assert all(p.grad is None or not p.grad.any() for p in head.parameters())
    with pytest.raises(ValueError, match="not trained"):
        small(tasks=["class_scene"], loss_weights={"normal": 1.0})


def test_added_task_edge_texture_trains(scenes: Path) -> None:
    @register_task
    class EdgeTextureTask(DenseRegressionTask):
        name = "edge_texture"

    try:
        data = data_module(scenes, ["rgb", "class_scene", "edge_texture"])
        task = small(tasks=["class_scene", "edge_texture"])
        assert task.model.heads["edge_texture"].out.out_channels == 1
        trainer = Trainer(
            accelerator="cpu",
            fast_dev_run=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(task, datamodule=data)
        assert math.isfinite(float(trainer.callback_metrics["train/edge_texture/loss"]))
        assert "val/edge_texture/l1" in trainer.callback_metrics
    finally:
        TASKS.pop("edge_texture", None)


def test_segmentation_task_fits(scenes: Path) -> None:
    data = data_module(scenes, ["rgb", "segment_semantic"])
    task = SegmentationTask(num_classes=4, image_shape=(3, 16, 16), width=4, head_width=4)
    assert task.monitor == "val/segment_semantic/miou"
    trainer = Trainer(
        accelerator="cpu",
        fast_dev_run=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=data)
    assert 0.0 <= float(trainer.callback_metrics["val/segment_semantic/miou"]) <= 1.0
    assert "val/segment_semantic/pixel_acc" in trainer.callback_metrics


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    ["multitask_quickstart.yaml", "taskonomy/segmentation.yaml", "taskonomy/multitask_clean.yaml"],
)
def test_configs_run(scenes: Path, config: str) -> None:
    args = [
        "fit",
        "--config",
        str(REPO / "configs" / config),
        "--trainer.fast_dev_run",
        "1",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--data.init_args.root",
        str(scenes),
        "--data.init_args.image_size",
        "16",
        "--data.init_args.train_buildings",
        "[hanson]",
        "--data.init_args.val_buildings",
        "[wiconisco]",
        "--data.init_args.test_buildings",
        "[ihlen]",
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.num_workers",
        "0",
        "--model.init_args.width",
        "4",
    ]
    cli = run_lightning(args)
    assert cli.trainer.state.finished


def test_per_task_sal_and_similarity(scenes: Path) -> None:
    from unlearn.sharpness import SALSettings

    data = data_module(scenes)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    task = small(tasks=["class_scene", "segment_semantic", "depth_euclidean"])
    with torch.no_grad():  # batch-norm statistics of real inputs (SAL runs in eval mode)
        for _ in range(3):
            task.model(batch["rgb"])
    before = {k: v.clone() for k, v in task.state_dict().items()}
    views = task.sal_views()
    assert views["class_scene"].model.encoder is task.model.encoder  # shared, not copied
    layers = lambda name: name.startswith("encoder.") or name in ("head.fc2", "head.out")  # noqa: E731
    results = per_task_sal(task, [batch], layers, SALSettings(iters=1))
    assert all(torch.equal(v, task.state_dict()[k]) for k, v in before.items())
    names, shared, sim = task_similarity(results)
    assert names == ["class_scene", "segment_semantic", "depth_euclidean"]
    assert len(shared) == 8 and all(s.startswith("encoder.") for s in shared)
    assert sim.shape == (3, 3) and torch.allclose(sim, sim.T)
    assert torch.allclose(sim.diagonal(), torch.ones(3), atol=1e-5)
    assert all(len(r) == 9 for r in results.values())  # 8 shared layers + head.fc2 or out


@pytest.mark.parametrize(
    "config",
    sorted(REPO.glob("configs/multitask_quickstart*.yaml"))
    + sorted(REPO.glob("configs/taskonomy/multitask_*.yaml"))
    + [REPO / "configs/taskonomy/segmentation.yaml"],
    ids=lambda p: p.name,
)
def test_fit_configs_validate(config: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_lightning(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "TaskonomyDataModule" in printed and "Task" in printed


class _RecordingDefense(Defense):
    """Halves the images and records what it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def transform_images(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        return images * 0.5


def test_image_defenses_transform_training_rgb_only(scenes: Path) -> None:
    data = data_module(scenes)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    defense = _RecordingDefense()
    task = small(defenses=[defense])
    task.training_step(batch, 0)
    assert len(defense.seen) == 1 and torch.equal(defense.seen[0], batch["rgb"])
    task.validation_step(batch, 0)
    assert len(defense.seen) == 1  # evaluation never calls the defense
    assert "defenses" not in task.hparams


def test_defenses_that_move_pixels_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\['CutMix'\] move pixels"):
        small(defenses=[CutMix()])


# ---------------------------------------------------------------- SharpnessCallback, per task
SAL_TASKS = ["class_scene", "segment_semantic", "depth_euclidean"]
SAL_SMALL = {
    "probe_size": 4,
    "probe_batch_size": 2,
    "steps_per_iter": 1,
    "iters": 1,
    "eps": 0.5,
    "lr_min": 2.0,
    "lr_max": 2.0,
}
SAL_COMPARED = ("sal", "s_max", "s_min", "sal_acc", "loss0", "acc0")


def fit_with_sal(
    root: Path,
    scenes: Path,
    callbacks: list,
    epochs: int = 2,
    ckpt_path: str | None = None,
    version: int = 0,
) -> tuple[Trainer, MultiTaskTask]:
    from lightning import seed_everything
    from lightning.pytorch.loggers import TensorBoardLogger

    seed_everything(0)
    task = small(tasks=SAL_TASKS)
    trainer = Trainer(
        max_epochs=epochs,
        limit_val_batches=1,
        accelerator="cpu",
        logger=TensorBoardLogger(root, name="run", version=version),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(task, datamodule=data_module(scenes, ["rgb", *SAL_TASKS]), ckpt_path=ckpt_path)
    return trainer, task


@pytest.fixture(scope="module")
def sal_run(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-epoch multi-task run with per-task SAL at both epochs and a last checkpoint."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from unlearn.callbacks import SharpnessCallback

    root = tmp_path_factory.mktemp("sal_run")
    checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
    callback = SharpnessCallback(first_order=True, **SAL_SMALL)
    trainer, _ = fit_with_sal(root, scenes, [callback, checkpoint])
    log_dir = Path(trainer.log_dir)
    return {"root": root, "log_dir": log_dir, "csv": log_dir / "sal.csv"}


def test_sal_callback_per_task_rows_equal_per_task_sal(scenes: Path, sal_run: dict) -> None:
    from torch.utils.data import default_collate

    from unlearn.sharpness import SALSettings
    from unlearn.sharpness.sal_csv import TASK_CSV_COLUMNS
    from unlearn.sharpness.ud import sal_tasks

    rows = read_rows(sal_run["csv"])
    assert list(rows[0]) == list(TASK_CSV_COLUMNS)
    assert sal_tasks(sal_run["csv"]) == SAL_TASKS
    assert sorted({int(r["step"]) for r in rows}) == [1, 2]  # one batch per epoch
    # the final checkpoint's weights, reloaded, measured on the same probe draw
    model = MultiTaskTask.load_from_checkpoint(sal_run["root"] / "ckpt" / "last.ckpt")
    dataset = data_module(scenes, ["rgb", *SAL_TASKS]).probe_dataset()
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:4]
    items = [dataset[i] for i in chosen.tolist()]
    batches = [default_collate(items[:2]), default_collate(items[2:])]
    expected = per_task_sal(
        model,
        batches,
        None,
        SALSettings(iters=1, steps_per_iter=1, eps=0.5, lr_min=2.0, lr_max=2.0),
    )
    assert list(expected) == SAL_TASKS
    for name, records in expected.items():
        written = [r for r in rows if r["task"] == name and int(r["step"]) == 2]
        assert [r["layer"] for r in written] == [r.layer for r in records]
        assert sum(r["layer"].startswith("encoder.") for r in written) == 8
        assert all(r["layer"].startswith(("encoder.", "head.")) for r in written)
        for row, record in zip(written, records, strict=True):
            for key in SAL_COMPARED:
                assert float(row[key]) == getattr(record, key), (name, row["layer"], key)


def test_sal_callback_logs_per_task_scalars_and_similarity(sal_run: dict) -> None:
    from tb import read_scalars
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from unlearn.sharpness import two_means_threshold

    rows = read_rows(sal_run["csv"])
    scalars = read_scalars(sal_run["log_dir"])
    for step in (1, 2):
        now = [r for r in rows if int(r["step"]) == step]
        sal = {t: {r["layer"]: float(r["sal"]) for r in now if r["task"] == t} for t in SAL_TASKS}
        for name, values in sal.items():
            logged = dict(scalars[f"sal/{name}/mean"])[step]
            assert logged == pytest.approx(np.mean(list(values.values())), rel=1e-6)
            for layer, value in values.items():
                assert dict(scalars[f"sal/{name}/{layer}"])[step] == pytest.approx(value, rel=1e-6)
            count = np.array(list(values.values())) > two_means_threshold(list(values.values()))
            assert dict(scalars[f"lp/{name}/count"])[step] == count.sum()  # no reference: own
            assert -1.0 <= dict(scalars[f"sal/{name}/first_order_rho"])[step] <= 1.0
        names, shared, matrix = task_similarity(sal)
        assert names == SAL_TASKS and len(shared) == 8
        for i, j in ((0, 1), (0, 2), (1, 2)):
            logged = dict(scalars[f"similarity/{names[i]}/{names[j]}"])[step]
            assert logged == pytest.approx(float(matrix[i, j]), abs=1e-6)
            a = np.array([sal[names[i]][layer] for layer in shared])
            b = np.array([sal[names[j]][layer] for layer in shared])
            cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
            assert logged == pytest.approx(cosine, abs=1e-5)
    assert not any(tag.startswith("similarity/") and tag.count("/") != 2 for tag in scalars)
    assert "similarity/segment_semantic/class_scene" not in scalars  # a before b only
    assert "ud/class_scene" not in scalars and "sal/mean" not in scalars
    (events,) = sal_run["log_dir"].glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "histograms": 0})
    accumulator.Reload()
    images = set(accumulator.Tags()["images"])
    assert {"sal/task_similarity", *(f"sal/{t}/heatmap" for t in SAL_TASKS)} <= images


def test_sal_callback_per_task_ud_against_itself_is_one(
    scenes: Path, sal_run: dict, tmp_path: Path
) -> None:
    from tb import read_scalars

    from unlearn.callbacks import SharpnessCallback

    callback = SharpnessCallback(reference=str(sal_run["csv"]), **SAL_SMALL)
    trainer, _ = fit_with_sal(tmp_path, scenes, [callback])
    again = read_rows(Path(trainer.log_dir) / "sal.csv")
    first = read_rows(sal_run["csv"])
    # the same seed and data: the same values (timings aside), so UD(t) is exactly 1
    assert [{k: r[k] for k in ("task", "layer", *SAL_COMPARED)} for r in again] == [
        {k: r[k] for k in ("task", "layer", *SAL_COMPARED)} for r in first
    ]
    scalars = read_scalars(Path(trainer.log_dir))
    for name in SAL_TASKS:
        assert [v for _, v in scalars[f"ud/{name}"]] == [1.0, 1.0]
        assert [v for _, v in scalars[f"lp/{name}/ratio"]] == [1.0, 1.0]
    assert "ud" not in scalars


def test_sal_callback_resumed_multitask_run_has_no_duplicates(
    scenes: Path, sal_run: dict, tmp_path: Path
) -> None:
    from unlearn.callbacks import SharpnessCallback

    trainer, _ = fit_with_sal(
        sal_run["root"],
        scenes,
        [SharpnessCallback(**SAL_SMALL)],
        epochs=3,
        ckpt_path=str(sal_run["root"] / "ckpt" / "last.ckpt"),
        version=1,  # a new log directory: the history comes from the checkpoint
    )
    rows = read_rows(Path(trainer.log_dir) / "sal.csv")
    first = read_rows(sal_run["csv"])
    assert rows[: len(first)] == first
    per_step = len(first) // 2
    assert [int(r["epoch"]) for r in rows] == [0] * per_step + [1] * per_step + [2] * per_step
    keys = [(r["step"], r["task"], r["layer"]) for r in rows]
    assert len(set(keys)) == len(keys)


def test_sal_callback_refuses_a_reference_of_other_tasks(scenes: Path, tmp_path: Path) -> None:
    import csv

    from unlearn.callbacks import SharpnessCallback
    from unlearn.sharpness import SAL_COLUMNS

    single, other = tmp_path / "single.csv", tmp_path / "other.csv"
    row = [0, 1, "encoder.stem", 5, 0.1, 0.1, 0.0, 0.0, 2.3, 0.1]
    with single.open("w", newline="") as f:
        csv.writer(f).writerows([SAL_COLUMNS, row])
    with other.open("w", newline="") as f:
        csv.writer(f).writerows([[*SAL_COLUMNS, "task"], [*row, "class_scene"], [*row, "normal"]])
    with pytest.raises(ValueError, match="only in this model: \\['segment_semantic', 'depth"):
        fit_with_sal(tmp_path, scenes, [SharpnessCallback(reference=str(other), **SAL_SMALL)])
    with pytest.raises(ValueError, match=r"single\.csv has no task column"):
        fit_with_sal(tmp_path, scenes, [SharpnessCallback(reference=str(single), **SAL_SMALL)])


@pytest.mark.slow
def test_sal_callback_ddp_two_processes_equal_single_process(scenes: Path, tmp_path: Path) -> None:
    """(task, layer) units split across 2 CPU processes give the single-process values.

    lr 0 keeps the weights at the seeded initialisation; without augmentation and without
    the distributed sampler every process trains on the single process's one batch (all 4
    training samples), so batch norm's running statistics, and the model at the checkpoint,
    are the same.
    """
    from conftest import sal_tables_single_and_ddp, small_sal_preset

    small_preset = small_sal_preset(tmp_path, **SAL_SMALL)
    fit_args = [
        "--config",
        str(REPO / "configs" / "multitask_quickstart.yaml"),
        "--config",
        str(small_preset),
        f"--model.init_args.tasks={SAL_TASKS}",
        "--model.init_args.width=4",
        "--model.init_args.head_width=4",
        "--model.init_args.lr=0.0",
        f"--data.init_args.root={scenes}",
        f"--data.init_args.domains={['rgb', *SAL_TASKS]}",
        "--data.init_args.image_size=16",
        "--data.init_args.train_buildings=[hanson]",
        "--data.init_args.val_buildings=[wiconisco]",
        "--data.init_args.test_buildings=[ihlen]",
        "--data.init_args.batch_size=4",
        "--data.init_args.augment=false",
        "--trainer.max_epochs=1",
        "--trainer.limit_val_batches=1",
    ]
    ddp_args = [
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.use_distributed_sampler=false",
    ]
    single, ddp = (
        read_rows(path) for path in sal_tables_single_and_ddp(tmp_path, fit_args, ddp_args)
    )
    assert [(r["task"], r["layer"]) for r in ddp] == [(r["task"], r["layer"]) for r in single]
    assert [r["task"] for r in single[:: len(single) // 3]] == SAL_TASKS
    for a, b in zip(single, ddp, strict=True):
        for key in SAL_COMPARED:
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-5), (a["layer"], key)
