"""The shared PGD loop and projections against literal versions of the loops they replaced."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unlearn.defenses import AdversarialTraining
from unlearn.pgd import pgd, project_to_ball, sample_norms
from unlearn.poisons.pgd import pgd_linf


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 1, 4, 4, generator=g), torch.randint(0, 3, (6,), generator=g)


def test_l2_projection_keeps_inside_points_bit_exact_and_puts_outside_points_on_the_sphere():
    center = torch.randn(5, 7)
    inside = center + 1e-3 * torch.randn(5, 7)
    assert torch.equal(project_to_ball(inside, center, 1.0, "l2", per_sample=False), inside)
    outside = center + 10 * torch.randn(5, 7)
    projected = project_to_ball(outside, center, 2.0, "l2", per_sample=False)
    assert torch.isclose((projected - center).norm(), torch.tensor(2.0))
    # same direction from the centre
    cos = F.cosine_similarity((projected - center).flatten(), (outside - center).flatten(), dim=0)
    assert cos > 1 - 1e-6


def test_per_sample_l2_projection_treats_each_sample_on_its_own():
    delta = torch.stack([torch.full((2, 2), 0.01), torch.full((2, 2), 5.0)])
    projected = project_to_ball(delta, 0.0, 1.0, "l2", per_sample=True)
    assert torch.equal(projected[0], delta[0])
    assert torch.isclose(sample_norms(projected)[1].flatten(), torch.tensor([1.0])).all()


def test_linf_projection_clips_each_element():
    x = torch.tensor([-3.0, -0.1, 0.0, 0.2, 4.0])
    assert torch.equal(project_to_ball(x, 0.0, 0.5, "linf", per_sample=True), x.clamp(-0.5, 0.5))


def test_pgd_descends_and_ascends_a_quadratic_within_budget():
    images = torch.full((3, 1, 4, 4), 0.5)
    target = torch.rand(3, 1, 4, 4)

    def gradient(delta: torch.Tensor) -> torch.Tensor:  # of ||images + delta - target||^2
        return 2 * (images + delta - target)

    def objective(delta: torch.Tensor) -> float:
        return float(((images + delta - target) ** 2).sum())

    start = torch.zeros_like(images)
    down = pgd(gradient, images, start, 0.1, 0.02, 20, "linf", minimize=True)
    up = pgd(gradient, images, start, 0.1, 0.02, 20, "linf", minimize=False)
    assert objective(down) < objective(start) < objective(up)
    assert down.abs().max() <= 0.1 + 1e-7 and up.abs().max() <= 0.1 + 1e-7
    l2 = pgd(gradient, images, start, 0.3, 0.1, 20, "l2", minimize=True)
    assert (sample_norms(l2) <= 0.3 + 1e-6).all() and objective(l2) < objective(start)


def _literal_pgd_linf(model, images, labels, delta, eps, step, steps, minimize):
    """The poisons' loop as it was written before it moved to unlearn.pgd."""
    sign = -1.0 if minimize else 1.0
    delta = delta.detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(images + delta), labels)
        grad = torch.autograd.grad(loss, delta)[0]
        delta = (delta.detach() + sign * step * grad.sign()).clamp(-eps, eps)
        delta = (images + delta).clamp(0.0, 1.0) - images
    return delta.detach()


def test_poison_pgd_is_bit_identical_to_the_loop_it_replaced():
    model, (images, labels) = _model(), _batch()
    start = torch.zeros_like(images)
    for minimize in (True, False):
        ours = pgd_linf(model, images, labels, start, 8 / 255, 2 / 255, 5, minimize)
        literal = _literal_pgd_linf(model, images, labels, start, 8 / 255, 2 / 255, 5, minimize)
        assert torch.equal(ours, literal)


def test_adversarial_training_attack_raises_the_loss_within_budget_and_keeps_grads():
    model, (images, labels) = _model(), _batch()
    for p in model.parameters():
        p.grad = torch.ones_like(p)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, reduction="none")

    for norm, eps in (("linf", 8 / 255), ("l2", 0.5)):
        at = AdversarialTraining(norm=norm, epsilon=eps, random_start="none")
        adversarial = at.perturb(model, images, labels, loss_fn)
        assert loss_fn(model(adversarial), labels).sum() > loss_fn(model(images), labels).sum()
        diff = adversarial - images
        size = diff.abs().amax() if norm == "linf" else sample_norms(diff).max()
        assert size <= eps + 1e-6
        assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())
