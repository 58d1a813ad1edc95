"""Every task applies its defenses through BaseTask: multi-task AT and max-loss, subclasses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearn.data.synthetic_scenes import generate
from unlearn.data.taskonomy import TaskonomyDataModule
from unlearn.defenses import AdversarialTraining, CutMix, Defense, Mixup
from unlearn.tasks import BaseTask
from unlearn.tasks.heads import TASKS, SegmentationSpec, TaskSpec
from unlearn.tasks.multitask import MultiTaskTask, SegmentationTask

TASK_NAMES = ["class_scene", "segment_semantic", "depth_euclidean", "normal", "keypoints2d"]


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tensor]:
    root = tmp_path_factory.mktemp("defended") / "scenes"
    generate(
        root, ["hanson", "wiconisco", "ihlen"], points_per_building=2, views_per_point=2, size=16
    )
    data = TaskonomyDataModule(
        root=root,
        synthetic=True,
        domains=["rgb", *TASK_NAMES],
        image_size=16,
        batch_size=4,
        train_buildings=["hanson"],
        val_buildings=["wiconisco"],
        test_buildings=["ihlen"],
    )
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def small(**kwargs) -> MultiTaskTask:
    torch.manual_seed(0)
    return MultiTaskTask(num_classes=4, image_shape=(3, 16, 16), width=4, head_width=4, **kwargs)


class _InputSpy:
    """Records every input batch a module's forward receives."""

    def __init__(self, module: nn.Module) -> None:
        self.seen: list[Tensor] = []
        module.register_forward_pre_hook(lambda _m, args: self.seen.append(args[0].detach()))


class _LossDefense(Defense):
    """A loss-changing defense: records its calls, returns twice the plain per-sample mean."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def training_loss(self, model, images, targets, loss_fn, epoch):
        self.calls += 1
        outputs = model(images)
        return 2.0 * loss_fn(outputs, targets).mean(), outputs


def test_multitask_training_runs_a_loss_changing_defense(batch) -> None:
    defense = _LossDefense()
    task = small(defenses=[defense])
    loss = task.training_step(batch, 0)
    assert defense.calls == 1
    plain = small()
    targets = plain.task_targets(batch)
    expected = 2.0 * plain.per_sample_loss(plain.model(batch["rgb"]), targets).mean()
    assert torch.allclose(loss, expected)


def test_multitask_adversarial_training_attacks_the_summed_loss(batch) -> None:
    task = small(defenses=[AdversarialTraining(steps=3, random_start="none")])
    spy = _InputSpy(task.model)
    loss = task.training_step(batch, 0)
    trained_on = spy.seen[-1]
    diff = trained_on - batch["rgb"]
    assert 0 < diff.abs().max() <= 8 / 255 + 1e-6  # perturbed, within the budget
    clean = small()
    clean_loss = clean.batch_loss(clean.model(batch["rgb"]), clean.task_targets(batch))
    # same initial weights (seeded): the attack raises the summed per-sample loss
    task_targets = task.task_targets(batch)
    with torch.no_grad():
        task.model.eval()
        attacked = task.per_sample_loss(task.model(trained_on), task_targets).sum()
        original = task.per_sample_loss(task.model(batch["rgb"]), task_targets).sum()
    assert attacked > original
    assert loss.isfinite() and clean_loss.isfinite()


def test_dense_tasks_refuse_defenses_that_move_pixels_and_name_them() -> None:
    for defense in (CutMix(), Mixup()):
        with pytest.raises(
            ValueError, match=rf"MultiTaskTask: defenses \['{type(defense).__name__}'\]"
        ):
            small(defenses=[defense])
    with pytest.raises(ValueError, match=r"SegmentationTask: defenses \['CutMix'\]"):
        SegmentationTask(num_classes=4, image_shape=(3, 16, 16), width=4, defenses=[CutMix()])


def test_segmentation_task_takes_defenses(batch) -> None:
    defense = _LossDefense()
    task = SegmentationTask(num_classes=4, image_shape=(3, 16, 16), width=4, defenses=[defense])
    task.training_step(batch, 0)
    assert defense.calls == 1


class _TinyTask(BaseTask):
    """A user's task: the minimum the BaseTask contract asks for."""

    dense_targets = True

    def configure_models(self) -> None:
        self.model = nn.Conv2d(1, 1, 1)

    def configure_losses(self) -> None:
        pass

    def configure_metrics(self) -> None:
        pass

    def per_sample_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return (outputs - targets).abs().flatten(1).mean(1)

    def training_step(self, batch, batch_idx):
        loss, _, _ = self.defended_loss(batch["x"], batch["y"])
        return loss


def test_a_subclass_gets_the_same_defense_handling() -> None:
    defense = _LossDefense()
    task = _TinyTask(defenses=[defense])
    x = torch.rand(3, 1, 4, 4)
    loss = task.training_step({"x": x, "y": x}, 0)
    assert defense.calls == 1
    assert torch.allclose(loss, 2.0 * (task.model(x) - x).abs().mean())
    with pytest.raises(ValueError, match=r"_TinyTask: defenses \['CutMix'\]"):
        _TinyTask(defenses=[CutMix()])
    with pytest.raises(ValueError, match=r"expected unlearn\.defenses\.Defense objects, found str"):
        _TinyTask(defenses=["JPEG"])


def _outputs_and_targets(spec: TaskSpec, batch: dict[str, Tensor], k: int = 4):
    generator = torch.Generator().manual_seed(3)
    targets = spec.targets(batch)
    if isinstance(spec, SegmentationSpec):
        outputs = torch.randn(targets.shape[0], 18, *targets.shape[1:], generator=generator)
        targets = targets.clone()
        targets[0] = 0  # one sample without any labelled pixel
    elif spec.name == "class_scene":
        outputs = torch.randn(targets.shape[0], k, generator=generator)
        targets = targets.clamp(max=k - 1)
    else:
        channels = {"normal": 3}.get(spec.name, 1)
        outputs = torch.randn(targets.shape[0], channels, *targets.shape[2:], generator=generator)
    return outputs, targets


@pytest.mark.parametrize(
    "name", ["class_scene", "segment_semantic", "depth_euclidean", "normal", "keypoints2d"]
)
def test_vectorised_per_sample_losses_equal_the_one_sample_definition(name, batch) -> None:
    spec = TASKS[name]()
    spec.num_classes = 4
    outputs, targets = _outputs_and_targets(spec, batch)
    vectorised = spec.per_sample_loss(outputs, targets)
    by_definition = TaskSpec.per_sample_loss(spec, outputs, targets)
    assert vectorised.shape == (outputs.shape[0],)
    assert torch.allclose(vectorised, by_definition, atol=1e-6)


def test_classification_loss_unchanged_without_defenses() -> None:
    from unlearn.tasks import ClassificationTask

    torch.manual_seed(0)
    task = ClassificationTask(model="linear", num_classes=3, image_shape=(1, 4, 4))
    images, labels = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    loss = task.training_step({"image": images, "label": labels, "index": torch.arange(5)}, 0)
    assert torch.equal(loss, F.cross_entropy(task.model(images), labels))


def test_multitask_ueraser_takes_each_samples_largest_summed_loss_over_draws(batch) -> None:
    from unlearn.defenses import UEraser

    draws = 3
    task = small(defenses=[UEraser(repeat_epochs=2, num_draws=draws, geometric=False)])
    spy = _InputSpy(task.model)
    loss = task.training_step(batch, 0)
    size = batch["rgb"].shape[0]
    (seen,) = spy.seen
    assert seen.shape[0] == draws * size  # the copies went through the model as one batch
    targets = task.task_targets(batch)
    tiled = {name: t.repeat(draws, *([1] * (t.ndim - 1))) for name, t in targets.items()}
    with torch.no_grad():  # same batch, same train-mode statistics: same outputs
        per_copy = task.per_sample_loss(task.model(seen), tiled).view(draws, size)
    assert torch.allclose(loss, per_copy.max(dim=0).values.mean(), atol=1e-5)
    assert loss > per_copy.mean() + 1e-6  # the max, not the average, of the draws
