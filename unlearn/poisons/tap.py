"""Targeted adversarial poisoning (TAP), Fowl et al., NeurIPS 2021.

"Adversarial Examples Make Strong Poisons"; public code: the ``forest`` poisoning code base
(APBench wraps it).

A surrogate is trained on clean data; each sample is then pushed by signed PGD towards the
class ``(y + 1) mod K`` (a fixed class permutation; the untargeted variant is known to be weak),
through differentiable augmentation, keeping the restart with the lowest targeted loss.
"""

from __future__ import annotations

import torch

from unlearn.errors import check_choice, require_at_least, require_positive
from unlearn.models import MODELS
from unlearn.poisons.base import PoisonContext, PoisonData, PoisonMethod, PoisonResult
from unlearn.poisons.pgd import make_augment, per_sample_loss, pgd_linf, random_start
from unlearn.poisons.surrogate import (
    BatchStream,
    build_surrogate,
    restore_surrogate,
    sgd,
    surrogate_state,
    train_step,
)


class TAP(PoisonMethod):
    """Targeted adversarial poisons, sample-wise, L_inf.

    Defaults: the paper's (250 steps of 0.05 * eps = 0.4/255 for eps 8/255, 8 restarts,
    differentiable augmentation, batch 512, surrogate trained 40 epochs with SGD 0.1, batch
    128, weight decay 5e-4). The surrogate's learning rate drops x0.1 at 3/8, 5/8 and 7/8 of
    the epochs (the ``forest`` code base's schedule).

    Args:
        eps: L_inf bound (default 8/255).
        model: surrogate backbone name.
        epochs: surrogate training epochs on clean data (with augmentation).
        train_batch_size: surrogate batch size.
        lr: surrogate SGD learning rate.
        momentum: surrogate SGD momentum.
        weight_decay: surrogate weight decay.
        steps: PGD steps per restart.
        step_size: PGD step size (``None``: ``0.05 * eps``).
        restarts: random restarts; each sample keeps the one with the lowest targeted loss.
        batch_size: batch size of the attack.
        shift: largest random translation of the augmentation (crop padding), in pixels.
        flip: random horizontal flips in the augmentation.
        target_offset: targets are ``(y + target_offset) mod K``.
    """

    norm = "linf"

    def __init__(
        self,
        eps: float = 8 / 255,
        model: str = "resnet18",
        epochs: int = 40,
        train_batch_size: int = 128,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        steps: int = 250,
        step_size: float | None = None,
        restarts: int = 8,
        batch_size: int = 512,
        shift: int = 4,
        flip: bool = True,
        target_offset: int = 1,
    ) -> None:
        require_positive("TAP", eps=eps, step_size=step_size, lr=lr)
        require_at_least("TAP", 1, epochs=epochs, train_batch_size=train_batch_size)
        require_at_least("TAP", 1, steps=steps, restarts=restarts, batch_size=batch_size)
        require_at_least("TAP", 0, shift=shift, momentum=momentum, weight_decay=weight_decay)
        check_choice("TAP", "model", model, MODELS)
        super().__init__(eps)
        self.model = model
        self.epochs = epochs
        self.train_batch_size = train_batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.steps = steps
        self.step_size = step_size if step_size is not None else 0.05 * eps
        self.restarts = restarts
        self.batch_size = batch_size
        self.shift = shift
        self.flip = flip
        self.target_offset = target_offset

    def generate(self, data: PoisonData, context: PoisonContext) -> PoisonResult:
        """Train the surrogate on clean data, then craft targeted perturbations batch by batch."""
        device, gen = context.device, context.generator
        n = len(data)
        augment = make_augment(self.shift, self.flip, gen)
        model = build_surrogate(self.model, data, device)
        optimizer = sgd(model, self.lr, self.momentum, self.weight_decay)
        stream = BatchStream(n, self.train_batch_size, gen)
        steps_per_epoch = -(-n // self.train_batch_size)
        total_steps = self.epochs * steps_per_epoch
        milestones = [int(total_steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        delta = torch.zeros(n, *data.image_shape)
        step, crafted = 0, 0

        state = context.resume()
        if state is not None:
            restore_surrogate(state, model, optimizer, stream)
            delta, step, crafted = state["delta"], int(state["step"]), int(state["crafted"])

        def make_state() -> dict:
            return surrogate_state(
                model, optimizer, stream, delta=delta, step=step, crafted=crafted
            )

        for _ in context.track(range(step, total_steps), total_steps, "TAP surrogate", step):
            lr = self.lr * 0.1 ** sum(step >= m for m in milestones)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = data.batch(stream.next(), device)
            if augment is not None:
                images = augment(images)
            train_step(model, optimizer, images, labels)
            step += 1
            context.checkpoint(make_state)

        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        starts = range(crafted, n, self.batch_size)
        for start in context.track(starts, len(starts), "TAP crafting"):
            batch = torch.arange(start, min(start + self.batch_size, n))
            images, labels = data.batch(batch, device)
            targets = (labels + self.target_offset) % data.num_classes
            best = torch.zeros_like(images)
            best_loss = torch.full((batch.numel(),), float("inf"), device=device)
            for _ in range(self.restarts):
                candidate = pgd_linf(
                    model,
                    images,
                    targets,
                    random_start(images, self.eps, gen),
                    self.eps,
                    self.step_size,
                    self.steps,
                    minimize=True,
                    augment=augment,
                )
                loss = per_sample_loss(model, images + candidate, targets)
                better = loss < best_loss
                best[better], best_loss[better] = candidate[better], loss[better]
            delta[batch] = best.cpu()
            crafted = start + batch.numel()
            context.checkpoint(make_state)
        return PoisonResult(delta, info={"surrogate_steps": step})
