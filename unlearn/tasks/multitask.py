"""Multi-task dense prediction on Taskonomy batches: one shared encoder, one head per task.

Tasks are :class:`~unlearn.tasks.heads.TaskSpec` objects found by name (``class_scene``,
``segment_semantic``, ``depth_euclidean``, ``normal``, ``keypoints2d`` are built in; more
are added with :func:`~unlearn.tasks.heads.register_task`). The total loss is
``sum_t w_t * loss_t`` with equal weights by default.

Logged per stage (``train``, ``val``, ``test``): ``{stage}/loss`` (weighted total),
``{stage}/{task}/loss`` and ``{stage}/{task}/{metric}``: ``class_scene/acc``,
``segment_semantic/miou`` and ``/pixel_acc``, ``depth_euclidean/l1`` (m) and ``/absrel``,
``normal/angle`` (degrees), ``keypoints2d/l1``.

For SAL per task, :meth:`MultiTaskTask.sal_views` gives each task as a single-output model
(the shared encoder with that task's head), its packed targets and its loss;
:func:`unlearn.sharpness.per_task_sal` measures them and
:func:`unlearn.sharpness.task_similarity` compares the tasks' SAL vectors over the shared
layers; :class:`~unlearn.callbacks.SharpnessCallback` does both at checkpoints during training
(docs/sal_ud.md, "Multi-task runs").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torch import Tensor, nn

from unlearn.defenses.base import Defense
from unlearn.errors import ConfigError
from unlearn.models.heads import MultiTaskNet, TaskView, build_encoder
from unlearn.sharpness.multitask import SALView
from unlearn.tasks.base import BaseTask
from unlearn.tasks.heads import DEFAULT_TASKS, TaskSpec, task_spec


class MultiTaskTask(BaseTask):
    """Shared encoder, one head per task, weighted sum of the per-task losses.

    Batches come from :class:`~unlearn.data.TaskonomyDataModule` (dict keyed by domain);
    the input is ``batch["rgb"]``.

    Args:
        tasks: registered task names; each is also the batch key of its target.
        model: encoder: ``small_cnn``, ``resnet18`` or ``resnet50``.
        width: width of the ``small_cnn`` encoder's first stage.
        head_width: channels of each dense head's decoder (the scene head's hidden layer
            is 8 times this).
        num_classes: scene classes (linked from the data module).
        image_shape: ``(C, H, W)`` of the rgb (linked from the data module).
        loss_weights: weight per task name (missing tasks: 1.0).
        defenses: training-time defenses on the rgb, pixel-aligned ones only (the dense
            targets do not follow moved pixels). Adversarial training attacks the weighted
            sum of the task losses; UEraser's max phase takes each sample's largest summed
            loss over its draws (:meth:`per_sample_loss`).
        lr: SGD learning rate (used when the config has no ``optimizer:`` section).
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        lr_schedule: ``"cosine"`` or ``"constant"`` (see :class:`BaseTask`).
    """

    monitor = "val/loss"
    mode = "min"
    dense_targets = True

    def __init__(
        self,
        tasks: Sequence[str] = DEFAULT_TASKS,
        model: str = "small_cnn",
        width: int = 16,
        head_width: int = 16,
        num_classes: int = 365,
        image_shape: tuple[int, int, int] = (3, 64, 64),
        loss_weights: dict[str, float] | None = None,
        defenses: list[Defense] | None = None,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
    ) -> None:
        names = list(tasks)
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"tasks must be a non-empty list of distinct names, got {names}")
        unknown = set(loss_weights or {}) - set(names)
        if unknown:
            raise ConfigError(f"loss_weights name tasks not trained: {sorted(unknown)}")
        self.specs: dict[str, TaskSpec] = {name: task_spec(name) for name in names}
        for spec in self.specs.values():
            spec.head_width = head_width
        super().__init__(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            lr_schedule=lr_schedule,
            defenses=defenses,
        )

    def configure_models(self) -> None:
        """The encoder and one head per task."""
        shape = tuple(self.hparams["image_shape"])
        encoder = build_encoder(self.hparams["model"], shape[0], self.hparams["width"])
        heads = {
            name: spec.build_head(encoder, self.hparams["num_classes"])
            for name, spec in self.specs.items()
        }
        self.model = MultiTaskNet(encoder, heads)

    def configure_losses(self) -> None:
        """Loss weights (equal by default)."""
        given = self.hparams.get("loss_weights") or {}
        self.loss_weights = {name: float(given.get(name, 1.0)) for name in self.specs}

    def configure_metrics(self) -> None:
        """Each task's metrics, per stage."""
        for stage in ("train", "val", "test"):
            metrics = nn.ModuleDict(
                {
                    name: spec.metrics().clone(prefix=f"{stage}/{name}/")
                    for name, spec in self.specs.items()
                }
            )
            setattr(self, f"{stage}_metrics", metrics)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Images ``[B, 3, H, W]`` -> ``{task: output}``."""
        return self.model(images)

    def task_targets(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each task's packed targets ``{task: [B, ...]}`` of a dict batch."""
        return {name: spec.targets(batch) for name, spec in self.specs.items()}

    def task_losses(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Each task's loss on a batch, and the outputs."""
        outputs = self.model(batch["rgb"])
        targets = self.task_targets(batch)
        return {n: s.loss(outputs[n], targets[n]) for n, s in self.specs.items()}, outputs

    def per_sample_loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        """Weighted sum over tasks of each sample's own task loss, ``[B]`` (for defenses)."""
        return sum(
            self.loss_weights[name] * spec.per_sample_loss(outputs[name], targets[name])
            for name, spec in self.specs.items()
        )

    def batch_loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        """Weighted sum of the task losses of the batch (each its own batch mean)."""
        return sum(
            self.loss_weights[name] * spec.loss(outputs[name], targets[name])
            for name, spec in self.specs.items()
        )

    def _record(
        self,
        outputs: dict[str, Tensor],
        targets: dict[str, Tensor],
        stage: str,
        total: Tensor | None = None,
    ) -> Tensor:
        """Log each task's loss and metrics and the total (computed unless given)."""
        if total is not None:  # the losses are only logged: no graph for them
            outputs = {name: out.detach() for name, out in outputs.items()}
        losses = {n: s.loss(outputs[n], targets[n]) for n, s in self.specs.items()}
        if total is None:
            total = sum(self.loss_weights[name] * loss for name, loss in losses.items())
        metrics = getattr(self, f"{stage}_metrics")
        size = next(iter(targets.values())).shape[0]
        for name, spec in self.specs.items():
            spec.update(metrics[name], outputs[name].detach(), targets[name])
            self.log(
                f"{stage}/{name}/loss",
                losses[name].detach(),
                on_step=False,
                on_epoch=True,
                batch_size=size,
                sync_dist=stage != "train",
            )
            self.log_dict(metrics[name], on_step=False, on_epoch=True, batch_size=size)
        self.log(
            f"{stage}/loss",
            total,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=size,
            sync_dist=stage != "train",
        )
        return total

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        return self._record(self.model(batch["rgb"]), self.task_targets(batch), stage)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """The weighted task losses with the defenses applied (:meth:`defended_loss`)."""
        targets = self.task_targets(batch)
        loss, outputs, _ = self.defended_loss(batch["rgb"], targets)
        return self._record(outputs, targets, "train", total=loss)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Clean validation losses and metrics."""
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Clean test losses and metrics."""
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Every head's output, with the sample index."""
        return {"index": batch["index"], **self.model(batch["rgb"])}

    def sal_views(self) -> dict[str, SALView]:
        """Each task as a single-output model with its targets and loss (for SAL)."""
        return {
            name: SALView(
                TaskView(self.model.encoder, self.model.heads[name]),
                spec.targets,
                spec.loss,
                spec.correct,
            )
            for name, spec in self.specs.items()
        }


class SegmentationTask(MultiTaskTask):
    """Single-task semantic segmentation (label 0 ignored) on ``batch["rgb"]``.

    Logs ``{stage}/segment_semantic/miou``, ``/pixel_acc`` and ``{stage}/loss``.

    Args:
        model: encoder: ``small_cnn``, ``resnet18`` or ``resnet50``.
        width: width of the ``small_cnn`` encoder's first stage.
        head_width: channels of the decoder.
        num_classes: scene classes (linked from the data module; unused).
        image_shape: ``(C, H, W)`` of the rgb (linked from the data module).
        defenses: training-time defenses on the rgb, pixel-aligned ones only.
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        lr_schedule: ``"cosine"`` or ``"constant"`` (see :class:`BaseTask`).
    """

    monitor = "val/segment_semantic/miou"
    mode = "max"

    def __init__(
        self,
        model: str = "small_cnn",
        width: int = 16,
        head_width: int = 16,
        num_classes: int = 365,
        image_shape: tuple[int, int, int] = (3, 64, 64),
        defenses: list[Defense] | None = None,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
    ) -> None:
        super().__init__(
            tasks=["segment_semantic"],
            defenses=defenses,
            model=model,
            width=width,
            head_width=head_width,
            num_classes=num_classes,
            image_shape=image_shape,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            lr_schedule=lr_schedule,
        )
