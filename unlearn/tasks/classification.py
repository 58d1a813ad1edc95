"""Image classification: cross-entropy, accuracy, optional defenses."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from unlearn.defenses.base import Defense
from unlearn.models import build_model
from unlearn.tasks.base import BaseTask


class ClassificationTask(BaseTask):
    """Train a classifier on dict batches ``{"image", "label", "index"}``.

    Logs ``{train,val,test}/loss`` and ``{train,val,test}/acc`` (top-1, in ``[0, 1]``).

    Args:
        model: a backbone name (``resnet18``, ``resnet50``, ``senet18``, ``vit_small``,
            ``lenet5``, ``small_cnn``, ``linear``) or any ``nn.Module`` mapping images
            ``[B, C, H, W]`` to logits ``[B, num_classes]`` (given by ``class_path``).
        num_classes: number of classes (linked from the data module by the CLI).
        image_shape: ``(C, H, W)`` of the inputs (linked from the data module by the CLI).
        defenses: training-time defenses, applied to training batches only, in order.
        lr: SGD learning rate (used when the config has no ``optimizer:`` section).
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        lr_schedule: ``"cosine"`` or ``"constant"`` (see :class:`BaseTask`).
    """

    monitor = "val/acc"
    mode = "max"

    def __init__(
        self,
        model: str | nn.Module = "small_cnn",
        num_classes: int = 10,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        defenses: list[Defense] | None = None,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
    ) -> None:
        # a plain dict may be assigned before nn.Module.__init__; modules may not
        self._module_args = {"model": model}
        super().__init__(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            lr_schedule=lr_schedule,
            defenses=defenses,
        )

    def hparams_ignore(self) -> list[str]:
        """Keep a user backbone (a module) out of ``hparams``."""
        return ["model"] if isinstance(self._module_args["model"], nn.Module) else []

    def configure_models(self) -> None:
        """Build the backbone from its name, or take the given module."""
        given = self._module_args.pop("model")
        if isinstance(given, nn.Module):
            self.model = given
        else:
            self.model = build_model(
                given, self.hparams["num_classes"], tuple(self.hparams["image_shape"])
            )

    def configure_losses(self) -> None:
        """Cross-entropy with integer or soft (mixed) targets."""
        self.criterion = nn.CrossEntropyLoss()

    def configure_metrics(self) -> None:
        """Top-1 accuracy per stage."""
        metrics = MetricCollection(
            {"acc": MulticlassAccuracy(self.hparams["num_classes"], average="micro")}
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, images: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` -> logits ``[B, num_classes]``."""
        return self.model(images)

    def per_sample_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy ``[B]`` of logits ``[B, K]``; targets ``int64 [B]`` or soft ``[B, K]``."""
        return F.cross_entropy(outputs, targets, reduction="none")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """The loss with the defenses applied (:meth:`BaseTask.defended_loss`)."""
        loss, logits, targets = self.defended_loss(batch["image"], batch["label"])
        hard = targets.argmax(dim=1) if targets.ndim == 2 else targets
        self.train_metrics.update(logits.detach(), hard)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _evaluate(self, batch: dict[str, Tensor], metrics: MetricCollection, stage: str) -> None:
        logits = self.model(batch["image"])
        loss = self.criterion(logits, batch["label"])
        metrics.update(logits, batch["label"])
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, prog_bar=stage == "val")
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Clean validation loss and accuracy."""
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Clean test loss and accuracy."""
        self._evaluate(batch, self.test_metrics, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Any]:
        """Predicted class and softmax probabilities per sample, with the sample index."""
        probs = torch.softmax(self.model(batch["image"]), dim=1)
        return {"index": batch["index"], "prediction": probs.argmax(1), "probs": probs}
