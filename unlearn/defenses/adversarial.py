"""Adversarial training (Madry et al. 2018) with a PGD attack in L_inf or L2."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from unlearn.defenses.base import Defense
from unlearn.errors import ConfigError
from unlearn.loss_types import PerSampleLoss
from unlearn.pgd import Norm, pgd, project_perturbation, sample_norms


def pgd_attack(
    model: nn.Module,
    images: Tensor,
    targets: Any,
    loss_fn: PerSampleLoss,
    epsilon: float,
    step_size: float,
    steps: int,
    norm: Norm = "linf",
    random_start: str = "normal",
) -> Tensor:
    """Projected gradient ascent on ``loss_fn`` within an ``epsilon`` ball around ``images``.

    Only the input gets gradients (``torch.autograd.grad`` on the perturbation), so the
    model's ``.grad`` fields are left as they were. The model is used in whatever mode it is
    in. The steps are :func:`unlearn.pgd.pgd`'s.

    Args:
        model: maps images to outputs.
        images: ``float [B, C, H, W]`` in ``[0, 1]``.
        targets: what ``loss_fn`` compares outputs with (``[B]`` or ``[B, num_classes]``, or
            a task's dense targets).
        loss_fn: per-sample loss ``[B]``; the attack ascends its sum.
        epsilon: radius of the ball, in pixel units of ``[0, 1]`` (L_inf) or L2 over the image.
        step_size: ascent step, same units.
        steps: number of steps.
        norm: ``"linf"`` (signed steps) or ``"l2"`` (normalised-gradient steps).
        random_start: ``"normal"`` (``step_size * N(0, 1)``, as in the EM/APBench code),
            ``"uniform"`` (uniform in the ball, L_inf; a random direction and radius, L2) or
            ``"none"``.

    Returns:
        Adversarial images ``[B, C, H, W]`` in ``[0, 1]``, detached, within the budget.
    """
    clean = images.detach()
    if random_start == "normal":
        delta = step_size * torch.randn_like(clean)
    elif random_start == "uniform" and norm == "linf":
        delta = torch.empty_like(clean).uniform_(-epsilon, epsilon)
    elif random_start == "uniform":
        direction = torch.randn_like(clean)
        radius = epsilon * torch.rand(clean.shape[0], device=clean.device, dtype=clean.dtype)
        delta = direction / sample_norms(direction) * radius.view(-1, 1, 1, 1)
    elif random_start == "none":
        delta = torch.zeros_like(clean)
    else:
        raise ConfigError(f"random_start must be normal, uniform or none, got {random_start!r}")

    def gradient(delta: Tensor) -> Tensor:
        delta = delta.detach().requires_grad_(True)
        loss = loss_fn(model(clean + delta), targets).sum()
        return torch.autograd.grad(loss, delta)[0]

    with torch.enable_grad():
        delta = project_perturbation(clean, delta, epsilon, norm)
        delta = pgd(gradient, clean, delta, epsilon, step_size, steps, norm)
    return (clean + delta).clamp(0, 1).detach()


class AdversarialTraining(Defense):
    """PGD adversarial training: minimise the loss on the worst case in a ball around each image.

    Defaults follow Madry et al. and APBench: L_inf, epsilon 8/255, 10 steps of 2/255, random
    start ``step_size * N(0, 1)``. As in the public Madry-loss code used by EM and APBench, the
    attack runs with the model in eval mode (batch norm uses its running statistics and is not
    updated by the attack's forward passes), then the training loss is computed on the
    adversarial batch in the model's own (train) mode. ``attack_mode="train"`` keeps train mode
    during the attack instead (the original TensorFlow code's behaviour; batch-norm statistics
    then see the attack's batches too).

    The attack costs ``steps`` extra forward and backward passes per batch (about 11x the
    training time at the defaults).

    Args:
        epsilon: budget; ``None`` gives 8/255 for L_inf and 0.5 for L2.
        step_size: PGD step; ``None`` gives ``epsilon / 4`` (2/255 for L_inf).
        steps: PGD steps.
        norm: ``"linf"`` or ``"l2"``.
        random_start: ``"normal"``, ``"uniform"`` or ``"none"`` (see :func:`pgd_attack`).
        attack_mode: model mode during the attack, ``"eval"`` or ``"train"``.
    """

    def __init__(
        self,
        epsilon: float | None = None,
        step_size: float | None = None,
        steps: int = 10,
        norm: Literal["linf", "l2"] = "linf",
        random_start: Literal["normal", "uniform", "none"] = "normal",
        attack_mode: Literal["eval", "train"] = "eval",
    ) -> None:
        super().__init__()
        if norm not in ("linf", "l2"):
            raise ConfigError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if attack_mode not in ("eval", "train"):
            raise ConfigError(f"attack_mode must be 'eval' or 'train', got {attack_mode!r}")
        if random_start not in ("normal", "uniform", "none"):
            raise ConfigError(f"random_start must be normal, uniform or none, got {random_start!r}")
        if steps < 0:
            raise ConfigError(f"steps must be >= 0, got {steps}")
        self.epsilon = epsilon if epsilon is not None else (8 / 255 if norm == "linf" else 0.5)
        self.step_size = step_size if step_size is not None else self.epsilon / 4
        self.steps = steps
        self.norm = norm
        self.random_start = random_start
        self.attack_mode = attack_mode

    def perturb(
        self, model: nn.Module, images: Tensor, targets: Tensor, loss_fn: PerSampleLoss
    ) -> Tensor:
        """Adversarial versions ``[B, C, H, W]`` of ``images``; the model's mode is restored."""
        was_training = model.training
        model.train(self.attack_mode == "train")
        try:
            return pgd_attack(
                model,
                images,
                targets,
                loss_fn,
                epsilon=self.epsilon,
                step_size=self.step_size,
                steps=self.steps,
                norm=self.norm,
                random_start=self.random_start,
            )
        finally:
            model.train(was_training)

    def training_loss(
        self, model: nn.Module, images: Tensor, targets: Tensor, loss_fn: PerSampleLoss, epoch: int
    ) -> tuple[Tensor, Any]:
        """Mean loss of the model on the PGD-perturbed batch, and the outputs on it."""
        adversarial = self.perturb(model, images, targets, loss_fn)
        outputs = model(adversarial)
        return loss_fn(outputs, targets).mean(), outputs

    def extra_repr(self) -> str:
        """The settings, as printed with the module."""
        return (
            f"epsilon={self.epsilon:.5g}, step_size={self.step_size:.5g}, steps={self.steps}, "
            f"norm={self.norm}, random_start={self.random_start}, attack_mode={self.attack_mode}"
        )
