"""Error-minimising noise (EM), Huang et al., ICLR 2021.

"Unlearnable Examples: Making Personal Data Unexploitable"; public code:
HanxunH/Unlearnable-Examples.

A surrogate trained from scratch alternates with the noise: ``train_steps`` SGD steps of the
model on the poisoned data, then PGD steps that *minimise* the loss w.r.t. the noise over the
whole set; it stops once the surrogate classifies the poisoned data almost perfectly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearn.errors import check_choice, check_number, require_at_least, require_positive
from unlearn.models import MODELS
from unlearn.poisons.base import PoisonContext, PoisonData, PoisonMethod, PoisonResult
from unlearn.poisons.pgd import pgd_linf, project_linf
from unlearn.poisons.surrogate import (
    BatchStream,
    accuracy,
    build_surrogate,
    restore_surrogate,
    sgd,
    surrogate_state,
    train_step,
)


class EM(PoisonMethod):
    """Error-minimising noise, sample-wise or class-wise, L_inf.

    Defaults follow the original paper and code (Huang et al.); APBench's variant is
    ``pgd_steps=5, step_size=eps/5``. Settings left ``None`` take the value of the mode:

    ============== ======================== ==========================
    setting        sample-wise (default)    class-wise
    ============== ======================== ==========================
    pgd_steps      20                       1 per batch
    step_size      0.8/255 (eps/10)         0.8/255 (eps/10)
    stop_accuracy  0.99 (error < 0.01)      0.9 (error < 0.1)
    subset         whole set                20% of it (drawn by seed)
    ============== ======================== ==========================

    Args:
        eps: L_inf bound (default 8/255).
        classwise: one pattern per class ``[K, C, H, W]``, updated with the mean signed
            gradient of the class's samples in each batch; else one noise per sample.
        model: surrogate backbone name (see :func:`unlearn.models.build_model`), trained from
            scratch.
        train_steps: SGD steps of the surrogate per round.
        pgd_steps: noise steps per batch and round.
        step_size: size of each signed noise step.
        stop_accuracy: stop when the surrogate's accuracy on the poisoned data reaches it
            (above 1: never stop early, run ``max_rounds``).
        max_rounds: stop after this many rounds in any case.
        subset_fraction: fraction of the samples the noise is optimised on.
        batch_size: batch size of model and noise steps.
        lr: surrogate SGD learning rate.
        momentum: surrogate SGD momentum.
        weight_decay: surrogate weight decay.
        grad_clip: clip the surrogate's gradient norm (``None`` or 0: no clipping).
    """

    norm = "linf"

    def __init__(
        self,
        eps: float = 8 / 255,
        classwise: bool = False,
        model: str = "resnet18",
        train_steps: int = 10,
        pgd_steps: int | None = None,
        step_size: float | None = None,
        stop_accuracy: float | None = None,
        max_rounds: int = 100,
        subset_fraction: float | None = None,
        batch_size: int = 128,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        grad_clip: float | None = 5.0,
    ) -> None:
        require_positive("EM", eps=eps, step_size=step_size, lr=lr)
        require_at_least("EM", 1, train_steps=train_steps, pgd_steps=pgd_steps)
        require_at_least("EM", 1, max_rounds=max_rounds, batch_size=batch_size)
        require_at_least("EM", 0, momentum=momentum, weight_decay=weight_decay)
        require_at_least("EM", 0, grad_clip=grad_clip)
        check_number("EM", "subset_fraction", subset_fraction, above=0, maximum=1)
        check_choice("EM", "model", model, MODELS)
        super().__init__(eps)
        self.classwise = classwise
        self.model = model
        self.train_steps = train_steps
        self.pgd_steps = pgd_steps if pgd_steps is not None else (1 if classwise else 20)
        self.step_size = step_size if step_size is not None else eps / 10
        self.stop_accuracy = (
            stop_accuracy if stop_accuracy is not None else (0.9 if classwise else 0.99)
        )
        self.max_rounds = max_rounds
        self.subset_fraction = (
            subset_fraction if subset_fraction is not None else (0.2 if classwise else 1.0)
        )
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip

    def generate(self, data: PoisonData, context: PoisonContext) -> PoisonResult:
        """Alternate surrogate steps and noise steps until the stop accuracy is reached."""
        device = context.device
        n = len(data)
        count = max(1, round(self.subset_fraction * n))
        rows = torch.arange(n) if count == n else context.randperm(n)[:count].sort().values
        model = build_surrogate(self.model, data, device)
        optimizer = sgd(model, self.lr, self.momentum, self.weight_decay)
        stream = BatchStream(rows.numel(), self.batch_size, context.generator)
        if self.classwise:
            noise = (context.rand(data.num_classes, *data.image_shape) * 2 - 1) * self.eps
        else:
            noise = (context.rand(n, *data.image_shape) * 2 - 1) * self.eps
        history: list[float] = []

        state = context.resume()
        if state is not None:
            restore_surrogate(state, model, optimizer, stream)
            noise, history = state["noise"], list(state["history"])

        def perturbation(batch_rows: torch.Tensor) -> torch.Tensor:
            return noise[data.labels[batch_rows]] if self.classwise else noise[batch_rows]

        done = bool(history) and history[-1] >= self.stop_accuracy
        rounds = context.track(
            range(len(history), self.max_rounds), self.max_rounds, "EM rounds", len(history)
        )
        for _ in rounds if not done else ():
            for _ in range(self.train_steps):
                batch = rows[stream.next()]
                images, labels = data.batch(batch, device)
                images = (images + perturbation(batch).to(device)).clamp(0.0, 1.0)
                train_step(model, optimizer, images, labels, self.grad_clip)
            model.eval()
            for start in range(0, rows.numel(), self.batch_size):
                batch = rows[start : start + self.batch_size]
                images, labels = data.batch(batch, device)
                if self.classwise:
                    self._update_patterns(model, images, labels, noise, device)
                else:
                    noise[batch] = pgd_linf(
                        model,
                        images,
                        labels,
                        noise[batch].to(device),
                        self.eps,
                        self.step_size,
                        self.pgd_steps,
                        minimize=True,
                    ).cpu()
            history.append(accuracy(model, data, rows, perturbation, 4 * self.batch_size, device))
            context.checkpoint(
                lambda: surrogate_state(model, optimizer, stream, noise=noise, history=history)
            )
            if history[-1] >= self.stop_accuracy:
                break

        info = {
            "rounds": len(history),
            "final_surrogate_accuracy": history[-1] if history else None,
        }
        if self.classwise:
            return PoisonResult(noise[data.labels], class_patterns=noise, info=info)
        images = data.images.float().div_(255.0)
        return PoisonResult(project_linf(images, noise, self.eps), info=info)

    def _update_patterns(
        self,
        model: torch.nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        patterns: torch.Tensor,
        device: torch.device,
    ) -> None:
        """Signed steps on each class pattern with the mean gradient of its samples (in place)."""
        for _ in range(self.pgd_steps):
            delta = patterns[labels.cpu()].to(device).requires_grad_(True)
            loss = F.cross_entropy(model((images + delta).clamp(0.0, 1.0)), labels)
            grad = torch.autograd.grad(loss, delta)[0].cpu()
            for label in labels.unique().tolist():
                mean = grad[labels.cpu() == label].mean(dim=0)
                patterns[label] = (patterns[label] - self.step_size * mean.sign()).clamp(
                    -self.eps, self.eps
                )
