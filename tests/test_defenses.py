"""Unit tests of the training-time defenses on known images (no Lightning, no data files)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearn.defenses import (
    JPEG,
    AdversarialTraining,
    BitDepthReduction,
    CutMix,
    Cutout,
    Defense,
    GaussianBlur,
    Grayscale,
    Mixup,
    UEraser,
    apply_defenses,
    jpeg,
)
from unlearn.defenses.ueraser import max_over_draws_loss


def per_sample_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def smooth_images(batch: int = 4, channels: int = 3, size: int = 32) -> torch.Tensor:
    """Gradients plus a little texture, in [0, 1] (a 'known image' with structure)."""
    torch.manual_seed(0)
    ramp = torch.linspace(0, 1, size)
    base = (ramp.view(1, 1, size, 1) + ramp.view(1, 1, 1, size)) / 2
    images = base.expand(batch, channels, size, size).clone()
    return (images + 0.1 * torch.rand_like(images)).clamp(0, 1)


def tiny_model(channels: int = 3, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(128, classes),
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_changes_pixels_keeps_shape_and_range(channels: int) -> None:
    images = smooth_images(channels=channels)
    before = images.clone()
    out = JPEG(quality=10).transform_images(images)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert (out - images).abs().mean() > 1e-3
    assert torch.equal(images, before), "the input batch must not be modified in place"


def test_jpeg_lower_quality_loses_more() -> None:
    images = smooth_images()
    err = [(JPEG(q).transform_images(images) - images).abs().mean() for q in (10, 50, 95)]
    assert err[0] > err[1] > err[2]


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_emits_no_deprecation_warning(channels: int) -> None:
    images = smooth_images(channels=channels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchvision's tensor JPEG codec warns: deprecated
        JPEG(quality=10).transform_images(images)
        jpeg(images, 50)


def high_frequency_energy(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels (both axes), per image."""
    rows = images[..., 1:, :] - images[..., :-1, :]
    cols = images[..., :, 1:] - images[..., :, :-1]
    return rows.pow(2).mean(dim=(-3, -2, -1)) + cols.pow(2).mean(dim=(-3, -2, -1))


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_quality_10_removes_high_frequencies_and_95_round_trips(channels: int) -> None:
    ramp = torch.linspace(0.1, 0.9, 32)
    smooth = ((ramp.view(32, 1) + ramp.view(1, 32)) / 2).expand(8, channels, 32, 32)
    torch.manual_seed(0)
    noise = (torch.rand(8, channels, 32, 32) - 0.5) * 16 / 255  # EM-like +-8/255 noise
    noisy = smooth + noise
    low = jpeg(noisy, 10)
    assert (high_frequency_energy(low) < 0.5 * high_frequency_energy(noisy)).all()
    high = jpeg(smooth, 95)
    assert (high - smooth).abs().mean() < 2 / 255  # near lossless on smooth content
    assert torch.equal(high, (high * 255).round() / 255)  # on the 8-bit grid
    assert torch.equal(jpeg(smooth[:0], 10), smooth[:0])


def test_grayscale_has_equal_channels_and_is_noop_on_one_channel() -> None:
    images = torch.rand(4, 3, 16, 16)
    out = Grayscale().transform_images(images)
    assert out.shape == images.shape
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    expected = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    assert torch.allclose(out[:, 0], expected, atol=1e-4)
    gray = torch.rand(4, 1, 16, 16)
    assert torch.equal(Grayscale().transform_images(gray), gray)


def test_posterize_two_bits_leaves_four_levels() -> None:
    images = torch.linspace(0, 1, 3 * 32 * 32).view(1, 3, 32, 32)
    out = BitDepthReduction(bits=2).transform_images(images)
    levels = (out * 255).round().to(torch.uint8)
    assert levels.unique().tolist() == [0, 64, 128, 192]
    # the same as posterizing the 8-bit image: keep the top two bits
    as_uint8 = (images * 255).round().to(torch.uint8)
    assert torch.equal(levels, as_uint8 & 0b11000000)


def test_blur_published_default_is_identity_but_larger_sigma_blurs() -> None:
    images = torch.rand(2, 3, 16, 16)
    assert torch.allclose(GaussianBlur().transform_images(images), images, atol=1e-6)
    blurred = GaussianBlur(kernel_size=3, sigma=1.0).transform_images(images)
    assert blurred.shape == images.shape and blurred.std() < images.std()


def test_cutout_inside_zeroes_exactly_one_16x16_square() -> None:
    torch.manual_seed(1)
    images = torch.rand(8, 3, 32, 32) * 0.9 + 0.1  # no zero pixels to begin with
    out = Cutout(size=16, inside=True).transform_images(images)
    for image, original in zip(out, images, strict=True):
        zero = (image == 0).all(dim=0)
        rows, cols = zero.nonzero(as_tuple=True)
        assert zero.sum() == 16 * 16
        assert rows.max() - rows.min() == 15 and cols.max() - cols.min() == 15
        assert torch.equal(image[:, ~zero], original[:, ~zero])


def test_cutout_default_is_a_square_clipped_at_the_border() -> None:
    torch.manual_seed(2)
    images = torch.ones(64, 1, 32, 32)
    out = Cutout().transform_images(images)
    sizes = set()
    for image in out:
        zero = image[0] == 0
        rows, cols = zero.nonzero(as_tuple=True)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert zero.sum() == height * width  # one axis-aligned rectangle
        assert height <= 16 and width <= 16
        assert height == 16 or rows.min() == 0 or rows.max() == 31  # only clipped at borders
        assert width == 16 or cols.min() == 0 or cols.max() == 31
        sizes.add((int(height), int(width)))
    assert (16, 16) in sizes and len(sizes) > 1


@pytest.mark.parametrize("defense", [CutMix(), Mixup()], ids=["cutmix", "mixup"])
def test_mixing_soft_labels_sum_to_one(defense: Defense) -> None:
    torch.manual_seed(0)
    images, labels = torch.rand(16, 3, 32, 32), torch.arange(16) % 10
    mixed, soft = defense.mix(images, labels, num_classes=10)
    assert mixed.shape == images.shape
    assert soft.shape == (16, 10)
    assert torch.allclose(soft.sum(dim=1), torch.ones(16))
    assert (soft >= 0).all()
    assert not defense.pixel_aligned
    with pytest.raises(ValueError, match="integer labels"):
        defense.mix(images, soft, num_classes=10)


def test_mixup_images_are_convex_combinations_of_the_rolled_batch() -> None:
    torch.manual_seed(3)
    images, labels = torch.rand(8, 3, 8, 8), torch.arange(8)
    mixed, soft = Mixup().mix(images, labels, num_classes=8)
    lam = soft[0, 0]
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.roll(1, 0), atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_adversarial_perturbation_within_budget_and_raises_loss(norm: str) -> None:
    model = tiny_model()
    images, labels = smooth_images(batch=16), torch.arange(16) % 10
    defense = AdversarialTraining(norm=norm)
    adversarial = defense.perturb(model, images, labels, per_sample_ce)
    delta = adversarial - images
    if norm == "linf":
        assert delta.abs().max() <= 8 / 255 + 1e-6
    else:
        assert delta.flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    model.eval()
    with torch.no_grad():
        clean_loss = per_sample_ce(model(images), labels).mean()
        adv_loss = per_sample_ce(model(adversarial), labels).mean()
    assert adv_loss > clean_loss + 1e-3


def test_adversarial_attack_leaves_parameter_grads_and_mode_alone() -> None:
    model = tiny_model()
    model.train()
    images, labels = smooth_images(batch=8), torch.arange(8)
    running_mean = model[1].running_mean.clone()
    defense = AdversarialTraining(steps=3)
    defense.perturb(model, images, labels, per_sample_ce)
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    assert torch.equal(model[1].running_mean, running_mean), "eval-mode attack: no BN update"
    loss, logits = defense.training_loss(model, images, labels, per_sample_ce, epoch=0)
    assert logits.shape == (8, 10) and loss.requires_grad


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("jpeg_quality", [None, (10, 99)])
def test_ueraser_augment_keeps_shape_and_range(channels: int, jpeg_quality) -> None:
    torch.manual_seed(0)
    images = smooth_images(batch=6, channels=channels)
    defense = UEraser(jpeg_quality=jpeg_quality, plasma_p=0.8 if jpeg_quality else 1.0)
    out = defense.augment(images)
    assert out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1
    assert (out - images).abs().mean() > 1e-2
    assert torch.equal(defense.transform_images(images), images)  # drawn in training_loss


def test_ueraser_lite_is_a_plain_image_transform() -> None:
    images, labels = smooth_images(batch=4), torch.arange(4)
    lite = UEraser(repeat_epochs=0)
    assert (lite.transform_images(images) - images).abs().mean() > 1e-2
    assert lite.training_loss(tiny_model(), images, labels, per_sample_ce, epoch=0) is None


def test_ueraser_photometric_mode_is_pixel_aligned() -> None:
    assert not UEraser().pixel_aligned
    assert UEraser(geometric=False).pixel_aligned
    assert UEraser(trivial_augment=False).pixel_aligned


def test_ueraser_max_over_k_is_at_least_the_mean_of_the_same_copies() -> None:
    model = tiny_model().eval()  # eval: the K forward passes see the same weights and BN
    images, labels = smooth_images(batch=16), torch.arange(16) % 10
    torch.manual_seed(5)
    defense = UEraser()
    copies = [defense.augment(images) for _ in range(5)]
    loss, logits = max_over_draws_loss(model, copies, labels, per_sample_ce)
    with torch.no_grad():
        per_copy = torch.stack([per_sample_ce(model(c), labels) for c in copies])
    assert torch.allclose(loss, per_copy.max(0).values.mean())
    assert loss >= per_copy.mean() - 1e-6
    assert loss > per_copy.mean()  # strictly, for random augmentations
    assert torch.allclose(per_sample_ce(logits, labels), per_copy.max(0).values)


def test_ueraser_draws_k_copies_only_during_repeat_epochs() -> None:
    calls: list[int] = []

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny_model()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return self.inner(x)

    defense = UEraser(repeat_epochs=2, num_draws=5)
    images, labels = smooth_images(batch=4), torch.arange(4)
    defense.training_loss(Counting(), images, labels, per_sample_ce, epoch=1)
    assert calls == [5 * 4]  # the 5 copies in one forward pass, as in the authors' code
    calls.clear()
    defense.training_loss(Counting(), images, labels, per_sample_ce, epoch=2)
    assert calls == [4]


def test_apply_defenses_order_and_plain_loss() -> None:
    model = tiny_model()
    images, labels = smooth_images(batch=8), torch.arange(8)
    loss, logits, targets = apply_defenses([], model, images, labels, per_sample_ce, epoch=0)
    assert torch.equal(targets, labels) and logits.shape == (8, 10)
    loss, logits, targets = apply_defenses(
        [JPEG(), Mixup(), AdversarialTraining(steps=1)],
        model,
        images,
        labels,
        per_sample_ce,
        epoch=0,
        num_classes=10,
    )
    assert targets.shape == (8, 10) and loss.ndim == 0


def test_defenses_do_not_modify_their_input() -> None:
    images = smooth_images(batch=4)
    before = images.clone()
    for defense in (JPEG(), Grayscale(), BitDepthReduction(), GaussianBlur(), Cutout()):
        defense.transform_images(images)
    UEraser().augment(images)
    CutMix().mix(images, torch.arange(4), 10)
    assert torch.equal(images, before)


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="quality"):
        JPEG(quality=0)
    with pytest.raises(ValueError, match="norm"):
        AdversarialTraining(norm="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="roughness"):
        UEraser(roughness=(0.7, 0.3))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        JPEG().transform_images(torch.rand(2, 4, 8, 8))
