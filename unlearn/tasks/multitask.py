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
:func:`per_task_sal` measures them and :func:`task_similarity` compares the tasks' SAL
vectors over the shared layers; :class:`~unlearn.callbacks.SharpnessCallback` does both at
checkpoints during training (docs/sal_ud.md, "Multi-task runs").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from unlearn.defenses.base import Defense
from unlearn.models.heads import MultiTaskNet, TaskView, build_encoder
from unlearn.tasks.base import BaseTask
from unlearn.tasks.heads import DEFAULT_TASKS, TaskSpec, task_spec

#: prefix of the shared layers' names in a :class:`~unlearn.models.heads.TaskView`
SHARED_PREFIX = "encoder."


@dataclass
class SALView:
    """One task of a multi-task model, in the form SAL measures.

    Attributes:
        model: the shared encoder and the task's head (parameters shared, not copied);
            layer names ``encoder.*`` (shared) and ``head.*``.
        targets: ``targets(batch)``: the task's packed targets ``[B, ...]`` of a dict batch.
        loss_fn: ``loss_fn(outputs, targets)``: the task's mean loss.
        correct_fn: ``correct_fn(outputs, targets)``: summed per-sample success in ``[0, 1]``.
    """

    model: nn.Module
    targets: Callable[[dict[str, Tensor]], Tensor]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    correct_fn: Callable[[Tensor, Tensor], Tensor]

    def pairs(self, batches: Sequence[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """The ``(batch["rgb"], targets)`` pair of each dict batch: the probe set of SAL."""
        return [(batch["rgb"], self.targets(batch)) for batch in batches]


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
        lr: SGD learning rate (used when the config has no ``optimizer:`` section).
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        lr_schedule: ``"cosine"`` or ``"constant"`` (see :class:`BaseTask`).
    """

    monitor = "val/loss"
    mode = "min"

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
        moved = [type(d).__name__ for d in defenses or [] if not d.pixel_aligned]
        if moved:
            raise ValueError(
                f"defenses {moved} move pixels or mix labels, which the dense targets do not "
                "follow; multi-task training takes only pixel-aligned image defenses (JPEG, "
                "Grayscale, BitDepthReduction, GaussianBlur, Cutout, UEraser(geometric=False))"
            )
        # a plain list may be assigned before nn.Module.__init__; modules may not
        self._given_defenses = list(defenses or [])
        if not names or len(set(names)) != len(names):
            raise ValueError(f"tasks must be a non-empty list of distinct names, got {names}")
        unknown = set(loss_weights or {}) - set(names)
        if unknown:
            raise ValueError(f"loss_weights name tasks not trained: {sorted(unknown)}")
        self.specs: dict[str, TaskSpec] = {name: task_spec(name) for name in names}
        for spec in self.specs.values():
            spec.head_width = head_width
        super().__init__(
            lr=lr, momentum=momentum, weight_decay=weight_decay, lr_schedule=lr_schedule
        )

    def hparams_ignore(self) -> list[str]:
        """The defenses are modules: kept in the state dict, not in ``hparams``."""
        return ["defenses"]

    def configure_models(self) -> None:
        """The encoder and one head per task."""
        shape = tuple(self.hparams["image_shape"])
        encoder = build_encoder(self.hparams["model"], shape[0], self.hparams["width"])
        heads = {
            name: spec.build_head(encoder, self.hparams["num_classes"])
            for name, spec in self.specs.items()
        }
        self.model = MultiTaskNet(encoder, heads)
        self.defenses = nn.ModuleList(self._given_defenses)
        del self._given_defenses

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

    def task_losses(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Each task's loss on a batch, and the outputs."""
        outputs = self.model(batch["rgb"])
        losses = {
            name: spec.loss(outputs[name], spec.targets(batch)) for name, spec in self.specs.items()
        }
        return losses, outputs

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        losses, outputs = self.task_losses(batch)
        total = sum(self.loss_weights[name] * loss for name, loss in losses.items())
        metrics = getattr(self, f"{stage}_metrics")
        size = batch["rgb"].shape[0]
        for name, spec in self.specs.items():
            spec.update(metrics[name], outputs[name].detach(), spec.targets(batch))
            self.log(
                f"{stage}/{name}/loss",
                losses[name],
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

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Weighted sum of the task losses, on rgb transformed by the image defenses."""
        rgb = batch["rgb"]
        for defense in self.defenses:
            rgb = defense.transform_images(rgb)
        return self._step({**batch, "rgb": rgb}, "train")

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
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
    ) -> None:
        super().__init__(
            tasks=["segment_semantic"],
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


def per_task_sal(
    task: MultiTaskTask,
    batches: Sequence[dict[str, Tensor]],
    layers: Any = None,
    settings: Any = None,
) -> dict[str, list[Any]]:
    """SAL of each task's layers (shared encoder and own head) on probe batches.

    Args:
        task: the multi-task module at a checkpoint (left unchanged).
        batches: probe dict batches (unaugmented), on the model's device.
        layers: which layers to measure (see :func:`unlearn.sharpness.measured_layers`;
            names are ``encoder.*`` and ``head.*``).
        settings: :class:`unlearn.sharpness.SALSettings` (default: the paper's).

    Returns:
        ``{task: [LayerSAL, ...]}``.
    """
    from unlearn.sharpness import compute_sal

    out = {}
    for name, view in task.sal_views().items():
        out[name] = compute_sal(
            view.model,
            view.pairs(batches),
            layers,
            loss_fn=view.loss_fn,
            correct_fn=view.correct_fn,
            settings=settings,
        )
    return out


def task_similarity(
    results: Mapping[str, Sequence[Any] | Mapping[str, float]], prefix: str = SHARED_PREFIX
) -> tuple[list[str], list[str], Tensor]:
    """Cosine similarity of the tasks' SAL vectors over the shared layers.

    Args:
        results: Per task, its layers' SAL: ``[LayerSAL, ...]`` from :func:`per_task_sal`,
            or ``{layer: SAL}`` (e.g. from a ``sal.csv``).
        prefix: name prefix of the shared layers.

    Returns:
        Task names, shared layer names (those with ``prefix`` that every task has, in the
        first task's order), and the ``[T, T]`` similarity matrix (a task whose shared SAL
        vector is all zero has similarity 0 with every task, itself included).
    """
    by_task = {
        name: dict(values) if isinstance(values, Mapping) else {r.layer: r.sal for r in values}
        for name, values in results.items()
    }
    names = list(by_task)
    shared = [
        layer
        for layer in by_task[names[0]]
        if layer.startswith(prefix) and all(layer in by_task[n] for n in names)
    ]
    vectors = torch.tensor(
        [[float(by_task[n][layer]) for layer in shared] for n in names], dtype=torch.float64
    ).reshape(len(names), len(shared))
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return names, shared, (unit @ unit.T).float()
