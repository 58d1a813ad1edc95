"""Template-method base of every task: build models, losses and metrics, then optimise."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from lightning import LightningModule
from torch import Tensor, nn

from unlearn.defenses.base import Defense, apply_defenses
from unlearn.errors import ConfigError, check_number
from unlearn.resume import drop_events_from, flush_loggers, start_epoch


class BaseTask(LightningModule, ABC):
    """Base LightningModule; subclasses fill in the three ``configure_*`` hooks and the steps.

    ``__init__`` saves the hyperparameters and calls :meth:`configure_models`,
    :meth:`configure_losses` and :meth:`configure_metrics`, in that order. The module a task
    trains is ``self.model`` (a plain ``nn.Module``), which SAL and the defenses act on.

    The optimizer comes from the config's ``optimizer:``/``lr_scheduler:`` sections when
    given (LightningCLI); otherwise :meth:`configure_optimizers` builds SGD with the
    arguments below and, with ``lr_schedule="cosine"`` and ``max_epochs`` known, cosine
    annealing to zero.

    **Defenses.** Every task takes ``defenses`` and handles them here, the same way for
    every task (see :class:`~unlearn.defenses.Defense` for the hooks). The contract for a
    subclass:

    - its ``training_step`` gets the loss from :meth:`defended_loss` (inputs and targets
      of the batch in, ``(loss, outputs, targets)`` out), never from the model directly, so
      that image transforms, label mixing, adversarial training and UEraser's max over
      draws all run;
    - it implements :meth:`per_sample_loss` (one loss per sample: adversarial training
      ascends their sum, UEraser takes each sample's maximum over draws) and may override
      :meth:`batch_loss` (the loss without a loss-changing defense; default: the mean of
      the per-sample losses);
    - it sets :attr:`dense_targets` to ``True`` when its targets are images aligned with
      the input (segmentation, depth, ...): defenses that move pixels or mix labels
      (``Defense.pixel_aligned`` false) are then refused at construction.

    **Resume.** A fit resumed from an epoch-end checkpoint reproduces the uninterrupted one
    (:mod:`unlearn.resume`): :meth:`on_train_epoch_start` reseeds the random streams from
    (seed, epoch, rank) and restarts the training loader's iterator, and a resumed fit has
    TensorBoard drop what the killed run logged after its checkpoint. A subclass that
    overrides ``on_train_start``, ``on_train_epoch_start``, ``on_save_checkpoint`` or
    ``on_load_checkpoint`` calls ``super()``; per-epoch randomness of a callback is drawn
    after ``on_train_epoch_start`` (the module's hook runs after the callbacks').

    Args:
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        lr_schedule: ``"cosine"`` (annealing to zero over ``max_epochs``) or ``"constant"``
            (the protocol of the SAL/UD paper's public code: its step schedule never steps
            within its 50 epochs; see docs/sal_ud.md).
        defenses: training-time defenses, applied to training batches only, in order.
    """

    #: metric a checkpoint/early-stopping callback watches, and its direction
    monitor = "val/loss"
    mode = "min"
    #: targets are pixel-aligned with the input images (dense prediction)
    dense_targets: ClassVar[bool] = False

    model: nn.Module
    defenses: nn.ModuleList

    def __init__(
        self,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        defenses: Sequence[Defense] | None = None,
    ) -> None:
        given = list(defenses or [])
        self.check_defenses(given)
        owner = type(self).__name__
        check_number(owner, "lr", lr, minimum=0)
        check_number(owner, "momentum", momentum, minimum=0, below=1)
        check_number(owner, "weight_decay", weight_decay, minimum=0)
        super().__init__()
        if lr_schedule not in ("cosine", "constant"):
            raise ConfigError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        self.save_hyperparameters(ignore=["defenses", *self.hparams_ignore()])
        self.defenses = nn.ModuleList(given)
        self._first_epoch_of_fit = False
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    @classmethod
    def check_defenses(cls, defenses: Sequence[Defense]) -> None:
        """Refuse defenses this task cannot apply correctly (raises ``ValueError``)."""
        for defense in defenses:
            if not isinstance(defense, Defense):
                raise ConfigError(
                    f"defenses: expected unlearn.defenses.Defense objects, "
                    f"found {type(defense).__name__}"
                )
        if cls.dense_targets:
            moved = [type(d).__name__ for d in defenses if not d.pixel_aligned]
            if moved:
                raise ConfigError(
                    f"{cls.__name__}: defenses {moved} move pixels or mix labels, which "
                    "its dense targets do not follow; take pixel-aligned defenses only "
                    "(JPEG, Grayscale, BitDepthReduction, GaussianBlur, Cutout, "
                    "AdversarialTraining, UEraser(geometric=False))"
                )

    def hparams_ignore(self) -> list[str]:
        """Arguments not to store in ``hparams`` besides ``defenses`` (modules: state dict)."""
        return []

    def per_sample_loss(self, outputs: Any, targets: Any) -> Tensor:
        """The training loss of each sample, ``float [B]`` (subclasses implement it)."""
        raise NotImplementedError(f"{type(self).__name__} does not define per_sample_loss")

    def batch_loss(self, outputs: Any, targets: Any) -> Tensor:
        """The scalar training loss of a batch: the mean of :meth:`per_sample_loss`."""
        return self.per_sample_loss(outputs, targets).mean()

    def defended_loss(self, inputs: Tensor, targets: Any) -> tuple[Tensor, Any, Any]:
        """The training loss of a batch with the defenses applied.

        Args:
            inputs: training images ``float [B, C, H, W]`` in ``[0, 1]``.
            targets: what :meth:`per_sample_loss` compares the outputs with (``int64 [B]``
                labels, or a task's dense targets).

        Returns:
            ``(loss, outputs, targets)``: the scalar loss, the outputs it came from and the
            targets after mixing (soft ``[B, num_classes]`` when a mixing defense ran).
        """
        return apply_defenses(
            self.defenses,
            self.model,
            inputs,
            targets,
            self.per_sample_loss,
            self.current_epoch,
            self.hparams.get("num_classes"),
            batch_loss=self.batch_loss,
        )

    # ------------------------------------------------------------------ resume
    def on_train_start(self) -> None:
        """The next epoch is the first of this ``fit`` (see :meth:`on_train_epoch_start`)."""
        self._first_epoch_of_fit = True

    def on_train_epoch_start(self) -> None:
        """Reseed the random streams for this epoch (:func:`unlearn.resume.start_epoch`)."""
        first, self._first_epoch_of_fit = self._first_epoch_of_fit, False
        start_epoch(self.trainer, first)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Flush the loggers: what was logged before a checkpoint is on disk with it."""
        if self._trainer is not None:
            flush_loggers(self.trainer)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming a fit: TensorBoard drops the killed run's events from the checkpoint's step."""
        if self._trainer is not None and self.trainer.state.fn == "fit":
            drop_events_from(self.trainer, int(checkpoint.get("global_step", 0)))

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
