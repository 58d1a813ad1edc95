"""Template-method base of every task: build models, losses and metrics, then optimise."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal

import torch
from lightning import LightningModule
from torch import nn


class BaseTask(LightningModule, ABC):
    """Base LightningModule; subclasses fill in the three ``configure_*`` hooks and the steps.

    ``__init__`` saves the hyperparameters and calls :meth:`configure_models`,
    :meth:`configure_losses` and :meth:`configure_metrics`, in that order. The module a task
    trains is ``self.model`` (a plain ``nn.Module``), which SAL and the defenses act on.

    The optimizer comes from the config's ``optimizer:``/``lr_scheduler:`` sections when
    given (LightningCLI); otherwise :meth:`configure_optimizers` builds SGD with the
    arguments below and, with ``lr_schedule="cosine"`` and ``max_epochs`` known, cosine
    annealing to zero.

    Args:
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        lr_schedule: ``"cosine"`` (annealing to zero over ``max_epochs``) or ``"constant"``
            (the protocol of the SAL/UD paper's public code: its step schedule never steps
            within its 50 epochs; see docs/sal_ud.md).
    """

    #: metric a checkpoint/early-stopping callback watches, and its direction
    monitor = "val/loss"
    mode = "min"

    model: nn.Module

    def __init__(
        self,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
    ) -> None:
        super().__init__()
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        self.save_hyperparameters(ignore=self.hparams_ignore())
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    def hparams_ignore(self) -> list[str]:
        """Arguments not to store in ``hparams`` (modules are saved in the state dict)."""
        return []

    @abstractmethod
    def configure_models(self) -> None:
        """Build ``self.model``."""

    @abstractmethod
    def configure_losses(self) -> None:
        """Build the loss functions."""

    @abstractmethod
    def configure_metrics(self) -> None:
        """Build the torchmetrics collections."""

    def configure_optimizers(self) -> Any:
        """SGD (lr, momentum, weight decay from the arguments) and the learning-rate schedule."""
        optimizer = torch.optim.SGD(
            self.parameters(),
            lr=self.hparams["lr"],
            momentum=self.hparams["momentum"],
            weight_decay=self.hparams["weight_decay"],
        )
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        if not max_epochs or max_epochs < 1 or self.hparams.get("lr_schedule") == "constant":
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
