"""MultiTaskTask and SegmentationTask: heads, losses, metrics, new tasks, CLI, per-task SAL."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning import Trainer

from unlearn.cli import run_lightning
from unlearn.data.synthetic_scenes import generate
from unlearn.data.taskonomy import TaskonomyDataModule
from unlearn.defenses import CutMix, Defense
from unlearn.models.heads import build_encoder
from unlearn.tasks.heads import (
    TASKS,
    DenseRegressionTask,
    DepthTask,
    NormalTask,
    SegmentationSpec,
    register_task,
)
from unlearn.tasks.multitask import MultiTaskTask, SegmentationTask, per_task_sal, task_similarity

REPO = Path(__file__).resolve().parents[1]
DOMAINS = ["rgb", "class_scene", "segment_semantic", "depth_euclidean", "normal", "keypoints2d"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared, overloaded CPU it is many times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
