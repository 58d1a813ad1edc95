"""Task specifications of the multi-task module: head, targets, loss, metrics, one per task.

A :class:`TaskSpec` says how one task of :class:`~unlearn.tasks.multitask.MultiTaskTask`
is trained and measured. Its ``name`` is the batch key of its target domain (and the name
of its head). Registered specs are found by name in configs::

    from unlearn.tasks.heads import DenseRegressionTask, register_task

    @register_task
    class EdgeTextureTask(DenseRegressionTask):
        name = "edge_texture"

    # model.init_args.tasks: [class_scene, segment_semantic, edge_texture]

Targets are packed into one tensor per task (value and validity mask together), so a
per-task loss is a plain ``loss(outputs, targets)`` that SAL can call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from unlearn.data.taskonomy_domains import SEGMENT_CLASSES, SEGMENT_IGNORE
from unlearn.errors import ConfigError
from unlearn.models.heads import ClassifierHead, DenseHead, Encoder

#: registered task specifications by name
TASKS: dict[str, type[TaskSpec]] = {}


def register_task(cls: type[TaskSpec]) -> type[TaskSpec]:
    """Class decorator: make a :class:`TaskSpec` subclass available by its ``name``."""
    TASKS[cls.name] = cls
    return cls


def task_spec(name: str) -> TaskSpec:
    """A fresh spec of the registered task ``name``."""
    try:
        return TASKS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown task '{name}'; registered tasks: {sorted(TASKS)} "
            "(register one with unlearn.tasks.heads.register_task)"
        ) from None


class MaskedMean(Metric):
    """Mean of per-pixel values over valid pixels, accumulated over batches."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor, mask: Tensor) -> None:
        """Add ``values`` where ``mask`` (same shape) is True."""
        self.total += values[mask].double().sum()
        self.count += mask.sum()

    def compute(self) -> Tensor:
        """The mean (NaN if no valid pixel was seen)."""
        return (self.total / self.count).float()


class TaskSpec(ABC):
    """How one task is trained and measured.

    Attributes:
        name: registered name, batch key of the target domain and name of the head.
        monitor: metric name (without prefix) that tells how well the task is learnt.
        higher_is_better: direction of ``monitor``.
    """

    name: ClassVar[str]
    monitor: ClassVar[str]
    higher_is_better: ClassVar[bool] = False
    #: channels of a dense head's decoder (set by the multi-task module)
    head_width: int = 16

    @abstractmethod
    def build_head(self, encoder: Encoder, num_classes: int) -> nn.Module:
        """The task's head on ``encoder``'s features (``num_classes``: scene classes)."""

    @abstractmethod
    def targets(self, batch: dict[str, Tensor]) -> Tensor:
        """The task's targets packed into one tensor ``[B, ...]``."""

    @abstractmethod
    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean loss of a batch, a scalar with graph."""

    def per_sample_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The loss of each sample on its own, ``[B]`` with graph (defenses need it).

        By definition :meth:`loss` of the one-sample batch; built-in tasks override it with
        a vectorised form of the same values.
        """
        return torch.stack(
            [self.loss(outputs[i : i + 1], targets[i : i + 1]) for i in range(outputs.shape[0])]
        )

    @abstractmethod
    def metrics(self) -> MetricCollection:
        """Fresh metrics of the task."""

    @abstractmethod
    def update(self, metrics: MetricCollection, outputs: Tensor, targets: Tensor) -> None:
        """Accumulate a batch into ``metrics``."""

    @abstractmethod
    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Per-sample success in ``[0, 1]`` summed over the batch (SAL's accuracy variant)."""


@register_task
class SceneTask(TaskSpec):
    """Scene classification: cross-entropy on ``class_scene``, top-1 accuracy ``acc``."""

    name = "class_scene"
    monitor = "acc"
    higher_is_better = True

    def build_head(self, encoder: Encoder, num_classes: int) -> nn.Module:
        """Pool and two linear layers to ``num_classes`` logits."""
        self.num_classes = num_classes
        return ClassifierHead(encoder.channels[-1], num_classes, 8 * self.head_width)

    def targets(self, batch: dict[str, Tensor]) -> Tensor:
        """Scene labels ``int64 [B]``."""
        return batch["class_scene"]

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy of logits ``[B, K]``."""
        return F.cross_entropy(outputs, targets)

    def per_sample_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy of each sample ``[B]``."""
        return F.cross_entropy(outputs, targets, reduction="none")

    def metrics(self) -> MetricCollection:
        """Top-1 accuracy."""
        return MetricCollection({"acc": MulticlassAccuracy(self.num_classes, average="micro")})

    def update(self, metrics: MetricCollection, outputs: Tensor, targets: Tensor) -> None:
        """Accumulate predictions."""
        metrics.update(outputs, targets)

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Number of correct predictions."""
        return (outputs.argmax(1) == targets).sum()


@register_task
class SegmentationSpec(TaskSpec):
    """Semantic segmentation: cross-entropy ignoring label 0, ``miou`` and ``pixel_acc``.

    Outputs are logits ``[B, 18, H, W]`` over the label values 0..17 (0 is never a target).
    ``miou`` averages the IoU of the classes present in targets or predictions.
    """

    name = "segment_semantic"
    monitor = "miou"
    higher_is_better = True

    def build_head(self, encoder: Encoder, num_classes: int) -> nn.Module:
        """Decoder to 18 logits per pixel."""
        return DenseHead(encoder.channels, encoder.strides, SEGMENT_CLASSES, self.head_width)

    def targets(self, batch: dict[str, Tensor]) -> Tensor:
        """Labels ``int64 [B, H, W]`` (0 = ignore)."""
        return batch["segment_semantic"]

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Per-pixel cross-entropy over the labelled pixels (0 if there are none)."""
        if not (targets != SEGMENT_IGNORE).any():
            return outputs.sum() * 0.0
        return F.cross_entropy(outputs, targets, ignore_index=SEGMENT_IGNORE)

    def per_sample_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Each sample's cross-entropy over its labelled pixels ``[B]`` (0 where none)."""
        pixels = F.cross_entropy(outputs, targets, ignore_index=SEGMENT_IGNORE, reduction="none")
        valid = (targets != SEGMENT_IGNORE).flatten(1)
        return pixels.flatten(1).sum(1) / valid.sum(1).clamp_min(1)

    def metrics(self) -> MetricCollection:
        """Mean IoU and pixel accuracy over labelled pixels."""
        return MetricCollection(
            {
                "miou": MulticlassJaccardIndex(
                    SEGMENT_CLASSES, ignore_index=SEGMENT_IGNORE, average="macro"
                ),
                "pixel_acc": MulticlassAccuracy(
                    SEGMENT_CLASSES, ignore_index=SEGMENT_IGNORE, average="micro"
                ),
            }
        )

    def update(self, metrics: MetricCollection, outputs: Tensor, targets: Tensor) -> None:
        """Accumulate the arg-max labels."""
        metrics.update(outputs.argmax(1), targets)

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Per-sample pixel accuracy over labelled pixels, summed."""
        valid = targets != SEGMENT_IGNORE
        hits = ((outputs.argmax(1) == targets) & valid).flatten(1).sum(1)
        return (hits / valid.flatten(1).sum(1).clamp_min(1)).sum()


def _masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    if not mask.any():
        return pred.sum() * 0.0
    return (pred - target).abs()[mask.expand_as(pred)].mean()


def _masked_l1_per_sample(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """:func:`_masked_l1` of each sample ``[B]`` (0 for a sample without a valid pixel)."""
    mask = mask.expand_as(pred)
    errors = ((pred - target).abs() * mask).flatten(1).sum(1)
    return errors / mask.flatten(1).sum(1).clamp_min(1)


@register_task
class DepthTask(TaskSpec):
    """Depth in metres: masked L1 loss; ``l1`` (m) and ``absrel`` metrics, ``delta1`` as success.

    Targets pack ``[depth, mask]`` as ``[B, 2, H, W]``.
    """

    name = "depth_euclidean"
    monitor = "absrel"

    def build_head(self, encoder: Encoder, num_classes: int) -> nn.Module:
        """Decoder to one value per pixel."""
        return DenseHead(encoder.channels, encoder.strides, 1, self.head_width)

    def targets(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, 2, H, W]``: metres and validity."""
        return torch.cat([batch[self.name], batch[f"{self.name}_mask"].float()], 1)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean absolute error over valid pixels, metres."""
        return _masked_l1(outputs, targets[:, :1], targets[:, 1:] > 0.5)

    def per_sample_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Each sample's mean absolute error over its valid pixels ``[B]``."""
        return _masked_l1_per_sample(outputs, targets[:, :1], targets[:, 1:] > 0.5)

    def metrics(self) -> MetricCollection:
        """Masked L1 (m) and absolute relative error."""
        return MetricCollection({"l1": MaskedMean(), "absrel": MaskedMean()})

    def update(self, metrics: MetricCollection, outputs: Tensor, targets: Tensor) -> None:
        """Accumulate the errors of valid pixels with positive depth."""
        depth, mask = targets[:, :1], targets[:, 1:] > 0.5
        err = (outputs - depth).abs()
        metrics["l1"].update(err, mask)
        positive = mask & (depth > 1e-3)
        metrics["absrel"].update(err / depth.clamp_min(1e-3), positive)

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Per-sample fraction of valid pixels with ``max(p/t, t/p) < 1.25``, summed."""
        depth, mask = targets[:, :1], (targets[:, 1:] > 0.5) & (targets[:, :1] > 1e-3)
        pred = outputs.clamp_min(1e-3)
        ok = (torch.maximum(pred / depth.clamp_min(1e-3), depth / pred) < 1.25) & mask
        return (ok.flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)).sum()


@register_task
class NormalTask(TaskSpec):
    """Surface normals: masked L1 on the vectors; ``angle`` (mean angular error, degrees).

    Targets pack ``[normal, mask]`` as ``[B, 4, H, W]``.
    """

    name = "normal"
    monitor = "angle"

    def build_head(self, encoder: Encoder, num_classes: int) -> nn.Module:
        """Decoder to three values per pixel."""
        return DenseHead(encoder.channels, encoder.strides, 3, self.head_width)

    def targets(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, 4, H, W]``: vector in ``[-1, 1]`` and validity."""
        return torch.cat([batch[self.name], batch[f"{self.name}_mask"].float()], 1)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean absolute error of the vector components over valid pixels."""
        return _masked_l1(outputs, targets[:, :3], targets[:, 3:] > 0.5)

    def per_sample_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Each sample's mean absolute error over its valid pixels ``[B]``."""
        return _masked_l1_per_sample(outputs, targets[:, :3], targets[:, 3:] > 0.5)

    @staticmethod
    def angles(outputs: Tensor, targets: Tensor) -> Tensor:
        """Angle between predicted and true normals, degrees ``[B, 1, H, W]``."""
        cos = F.cosine_similarity(outputs, targets[:, :3], dim=1, eps=1e-6).unsqueeze(1)
        return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))

    def metrics(self) -> MetricCollection:
        """Mean angular error."""
        return MetricCollection({"angle": MaskedMean()})

    def update(self, metrics: MetricCollection, outputs: Tensor, targets: Tensor) -> None:
        """Accumulate the angles of valid pixels."""
        metrics["angle"].update(self.angles(outputs, targets), targets[:, 3:] > 0.5)

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Per-sample fraction of valid pixels within 11.25 degrees, summed."""
        mask = targets[:, 3:] > 0.5
        ok = (self.angles(outputs, targets) < 11.25) & mask
        return (ok.flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)).sum()


class DenseRegressionTask(TaskSpec):
    """A one-channel map regressed with L1 (``l1`` metric); subclass with a ``name``.

    ``channels`` and ``tolerance`` (the per-pixel error that counts as success) may be
    overridden too.
    """

    monitor = "l1"
    channels: ClassVar[int] = 1
    tolerance: ClassVar[float] = 0.05

    def build_head(self, encoder: Encoder, num_classes: int) -> nn.Module:
        """Decoder to ``channels`` values per pixel."""
        return DenseHead(encoder.channels, encoder.strides, self.channels, self.head_width)

    def targets(self, batch: dict[str, Tensor]) -> Tensor:
        """The map ``[B, channels, H, W]``."""
        return batch[self.name]

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean absolute error."""
        return F.l1_loss(outputs, targets)

    def per_sample_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Each sample's mean absolute error ``[B]``."""
        return (outputs - targets).abs().flatten(1).mean(1)

    def metrics(self) -> MetricCollection:
        """Mean absolute error."""
        return MetricCollection({"l1": MaskedMean()})

    def update(self, metrics: MetricCollection, outputs: Tensor, targets: Tensor) -> None:
        """Accumulate the absolute errors."""
        err = (outputs - targets).abs()
        metrics["l1"].update(err, torch.ones_like(err, dtype=torch.bool))

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Per-sample fraction of pixels within ``tolerance``, summed."""
        ok = (outputs - targets).abs() < self.tolerance
        return ok.flatten(1).float().mean(1).sum()


@register_task
class KeypointsTask(DenseRegressionTask):
    """2D keypoint heat maps (``keypoints2d``, 16-bit scaled to ``[0, 1]``), L1."""

    name = "keypoints2d"


DEFAULT_TASKS = ("class_scene", "segment_semantic", "depth_euclidean", "normal", "keypoints2d")
