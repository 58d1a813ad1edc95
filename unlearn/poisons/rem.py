"""Robust error-minimising noise (REM), Fu et al., ICLR 2022.

"Robust Unlearnable Examples: Protecting Data Against Adversarial Learning"; public code:
CausalLearning/robust-unlearnable-examples.

Min over the noise ``delta_u`` (radius ``eps``), max over an adversarial perturbation
``delta_a`` (radius ``adv_eps``) of the loss averaged over random augmentations ``T``::

    min_{delta_u} E_T max_{delta_a} CE(f(T(x + delta_u) + delta_a), y)

The surrogate is trained adversarially (radius ``adv_eps``) on the augmented poisoned data;
at every step the current batch's noise is re-optimised, and after the last step the noise of
every sample is generated once more with the final surrogate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearn.errors import check_choice, require_at_least, require_positive
from unlearn.models import MODELS
from unlearn.pgd import pgd
from unlearn.poisons.base import PoisonContext, PoisonData, PoisonMethod, PoisonResult
from unlearn.poisons.pgd import Augment, make_augment, pgd_linf, random_start
from unlearn.poisons.surrogate import (
    BatchStream,
    build_surrogate,
    restore_surrogate,
    sgd,
    surrogate_state,
    train_step,
)


class REM(PoisonMethod):
    """Robust error-minimising noise, sample-wise, L_inf.

    Defaults follow the original code's CIFAR-10 script (5000 steps at batch 128, lr 0.1
    decayed x0.1 every 2000 steps, noise 10 steps of 1.6/255, adversary 10 steps of 0.8/255,
    5 augmentation samples). APBench's simplified variant is reachable with
    ``pgd_steps=5, step_size=eps/5, adv_steps=5, adv_step_size=eps/10, eot_samples=1,
    shift=0, flip=false``.

    Args:
        eps: L_inf radius of the noise (rho_u, default 8/255).
        adv_eps: L_inf radius of the adversary (rho_a, default 4/255); 0 gives plain EM with
            expectation over augmentations.
        model: surrogate backbone name, trained from scratch.
        train_steps: surrogate SGD steps (each re-optimises the batch's noise first).
        batch_size: batch size.
        lr: initial SGD learning rate.
        lr_decay: factor applied to the learning rate every ``lr_decay_every`` steps.
        lr_decay_every: steps between learning-rate decays.
        momentum: SGD momentum.
        weight_decay: weight decay.
        pgd_steps: noise steps per update.
        step_size: noise step size.
        adv_steps: adversary steps (inner maximisation and adversarial training).
        adv_step_size: adversary step size.
        eot_samples: augmentation draws averaged per noise step.
        shift: largest random translation of the augmentation, in pixels (crop padding).
        flip: random horizontal flips in the augmentation (off for digits and text).
    """

    norm = "linf"

    def __init__(
        self,
        eps: float = 8 / 255,
        adv_eps: float = 4 / 255,
        model: str = "resnet18",
        train_steps: int = 5000,
        batch_size: int = 128,
        lr: float = 0.1,
        lr_decay: float = 0.1,
        lr_decay_every: int = 2000,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        pgd_steps: int = 10,
        step_size: float = 1.6 / 255,
        adv_steps: int = 10,
        adv_step_size: float = 0.8 / 255,
        eot_samples: int = 5,
        shift: int = 4,
        flip: bool = True,
    ) -> None:
        require_positive("REM", eps=eps, step_size=step_size, lr=lr, lr_decay=lr_decay)
        require_at_least("REM", 0, adv_eps=adv_eps, adv_step_size=adv_step_size)
        require_at_least("REM", 1, train_steps=train_steps, batch_size=batch_size)
        require_at_least("REM", 1, lr_decay_every=lr_decay_every, pgd_steps=pgd_steps)
        require_at_least("REM", 1, eot_samples=eot_samples)
        require_at_least("REM", 0, adv_steps=adv_steps, shift=shift)
        require_at_least("REM", 0, momentum=momentum, weight_decay=weight_decay)
        check_choice("REM", "model", model, MODELS)
        super().__init__(eps)
        self.adv_eps = adv_eps
        self.model = model
        self.train_steps = train_steps
        self.batch_size = batch_size
        self.lr = lr
        self.lr_decay = lr_decay
        self.lr_decay_every = lr_decay_every
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.pgd_steps = pgd_steps
        self.step_size = step_size
        self.adv_steps = adv_steps
        self.adv_step_size = adv_step_size
        self.eot_samples = eot_samples
        self.shift = shift
        self.flip = flip

    def _adversary(
        self, model: nn.Module, images: Tensor, labels: Tensor, gen: torch.Generator
    ) -> Tensor:
        """``images + delta_a`` with ``delta_a`` maximising the loss (random start)."""
        if self.adv_eps <= 0 or self.adv_steps <= 0:
            return images
        start = random_start(images, self.adv_eps, gen)
        delta = pgd_linf(
            model, images, labels, start, self.adv_eps, self.adv_step_size, self.adv_steps, False
        )
        return images + delta

    def _minimax(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        augment: Augment | None,
        gen: torch.Generator,
    ) -> Tensor:
        """The robust error-minimising noise of one batch, from a random start."""
        model.eval()

        def gradient(delta: Tensor) -> Tensor:
            delta = delta.detach()
            grad = torch.zeros_like(delta)
            for _ in range(self.eot_samples):
                delta.requires_grad_(True)
                inputs = images + delta
                if augment is not None:
                    inputs = augment(inputs)
                adversarial = self._adversary(model, inputs.detach(), labels, gen)
                inputs = inputs + (adversarial - inputs.detach())
                loss = F.cross_entropy(model(inputs), labels)
                grad += torch.autograd.grad(loss, delta)[0]
                delta = delta.detach()
            return grad

        start = random_start(images, self.eps, gen)
        return pgd(gradient, images, start, self.eps, self.step_size, self.pgd_steps, minimize=True)

    def generate(self, data: PoisonData, context: PoisonContext) -> PoisonResult:
        """Train the surrogate adversarially while re-optimising each batch's noise."""
        device, gen = context.device, context.generator
        n = len(data)
        augment = make_augment(self.shift, self.flip, gen)
        model = build_surrogate(self.model, data, device)
        optimizer = sgd(model, self.lr, self.momentum, self.weight_decay)
        stream = BatchStream(n, self.batch_size, gen)
        noise = torch.zeros(n, *data.image_shape)
        step, final_rows = 0, 0

        state = context.resume()
        if state is not None:
            restore_surrogate(state, model, optimizer, stream)
            noise, step, final_rows = state["noise"], int(state["step"]), int(state["final_rows"])

        def make_state() -> dict:
            return surrogate_state(
                model, optimizer, stream, noise=noise, step=step, final_rows=final_rows
            )

        for _ in context.track(range(step, self.train_steps), self.train_steps, "REM steps", step):
            lr = self.lr * self.lr_decay ** (step // self.lr_decay_every)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = stream.next()
            images, labels = data.batch(batch, device)
            noise[batch] = self._minimax(model, images, labels, augment, gen).cpu()
            poisoned = images + noise[batch].to(device)
            if augment is not None:
                poisoned = augment(poisoned)
            model.eval()
            adversarial = self._adversary(model, poisoned, labels, gen).clamp(0.0, 1.0)
            train_step(model, optimizer, adversarial, labels)
            step += 1
            context.checkpoint(make_state)

        starts = range(final_rows, n, self.batch_size)
        for start in context.track(starts, len(starts), "REM final noise"):
            batch = torch.arange(start, min(start + self.batch_size, n))
            images, labels = data.batch(batch, device)
            noise[batch] = self._minimax(model, images, labels, augment, gen).cpu()
            final_rows = start + batch.numel()
            context.checkpoint(make_state)
        return PoisonResult(noise, info={"train_steps": step})
