"""UEraser is the authors' kornia pipeline; its photometric mode keeps pixels in place."""

from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch
import torch.nn.functional as F
from kornia.augmentation.auto import TrivialAugment
from kornia.augmentation.auto.trivial_augment.trivial_augment import default_policy
from test_defenses import tiny_model
from torch import nn

from unlearn.defenses import UEraser, jpeg
from unlearn.defenses.ueraser import PHOTOMETRIC_POLICY, max_over_draws_loss

GEOMETRIC_OPS = {"rotate", "shear_x", "shear_y", "translate_x", "translate_y"}


def authors_pipeline(plasma_p: float = 0.5) -> nn.Module:
    """UEraser as lafeat/ueraser's ``ueraser.py`` composes it (p 0.5; APBench: 1.0 or 0.8)."""
    return K.AugmentationSequential(
        K.RandomPlasmaBrightness(
            roughness=(0.3, 0.7),
            intensity=(0.5, 1.0),
            same_on_batch=False,
            p=plasma_p,
            keepdim=True,
        ),
        K.RandomPlasmaContrast(roughness=(0.3, 0.7), p=plasma_p),
        K.RandomChannelShuffle(same_on_batch=False, p=0.5, keepdim=True),
        K.auto.TrivialAugment(),
    )


def per_sample_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("plasma_p", [0.5, 1.0, 0.8])
def test_augment_equals_the_authors_kornia_pipeline_under_a_seed(
    channels: int, plasma_p: float
) -> None:
    torch.manual_seed(123)
    images = torch.rand(16, channels, 28, 28)
    reference = authors_pipeline(plasma_p)
    ours = UEraser(plasma_p=plasma_p)
    for seed in range(6):  # several seeds: several TrivialAugment operations
        torch.manual_seed(seed)
        expected = reference(images).clamp(0, 1)  # clamped against float rounding
        torch.manual_seed(seed)
        got = ours.augment(images)
        assert torch.equal(got, expected), f"seed {seed}"
        assert got.shape == images.shape and 0 <= got.min() and got.max() <= 1


def test_plasma_brightness_shift_has_kornias_distribution() -> None:
    """Mean shift per image ~ 0 (a map in [0, 1] centred on 0.5, not min-max normalised)."""
    torch.manual_seed(0)
    images = torch.full((256, 1, 32, 32), 0.5)
    out = UEraser(plasma_p=1.0, trivial_augment=False).pipeline[0](images)
    shift = (out - images).mean(dim=(1, 2, 3))
    assert shift.abs().mean() < 0.1
    # a min-max normalised map (intensity >= 0.5) reaches both 0 and 1 in every image; kornia's
    # map is not normalised, so most images span less
    span = out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))
    assert (span < 0.99).float().mean() > 0.5


def test_photometric_policy_is_kornias_default_without_geometric_ops() -> None:
    expected = [sub for sub in default_policy if sub[0][0] not in GEOMETRIC_OPS]
    assert PHOTOMETRIC_POLICY == expected
    assert len(TrivialAugment(policy=PHOTOMETRIC_POLICY)) == len(default_policy) - 5


def bright_pixel_batch(batch: int, where: tuple[int, int]) -> torch.Tensor:
    images = torch.full((batch, 3, 28, 28), 0.3)
    images[:, :, where[0], where[1]] = 1.0
    return images


def odd_pixel(out: torch.Tensor) -> list[tuple[int, int] | None]:
    """Per image: where it deviates most from its median, or None for a flat image."""
    deviation = (out - out.flatten(2).median(dim=2).values[..., None, None]).abs().amax(dim=1)
    found: list[tuple[int, int] | None] = []
    for dev in deviation:
        if dev.max() < 1e-3:
            found.append(None)
        else:
            row, col = divmod(int(dev.argmax()), dev.shape[1])
            found.append((row, col))
    return found


def test_photometric_mode_never_moves_a_pixel_and_the_default_does() -> None:
    where = (6, 9)
    images = bright_pixel_batch(8, where)
    aligned, default = UEraser(geometric=False, plasma_p=0.0), UEraser(plasma_p=0.0)
    assert aligned.pixel_aligned and not default.pixel_aligned
    torch.manual_seed(0)
    moved = 0
    for _ in range(40):
        assert all(p in (where, None) for p in odd_pixel(aligned.augment(images)))
        moved += sum(p not in (where, None) for p in odd_pixel(default.augment(images)))
    assert moved > 8  # 5 of the 12 operations move pixels, one operation per call


def test_one_channel_images_work() -> None:
    torch.manual_seed(0)
    images = torch.rand(8, 1, 32, 32)
    for defense in (UEraser(), UEraser(geometric=False), UEraser(jpeg_quality=(10, 99))):
        out = defense.augment(images)
        assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1
        assert (out - images).abs().mean() > 1e-2
    # the channel shuffle alone is the identity on one channel
    only_shuffle = UEraser(plasma_p=0.0, shuffle_p=1.0, trivial_augment=False)
    assert torch.equal(only_shuffle.augment(images), images)


def test_jpeg_comes_first_at_a_quality_in_range() -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    only_jpeg = UEraser(jpeg_quality=(10, 10), plasma_p=0.0, shuffle_p=0.0, trivial_augment=False)
    assert torch.equal(only_jpeg.augment(images), jpeg(images, 10))


@pytest.mark.parametrize("channels", [1, 3])
def test_max_over_draws_loss_is_at_least_each_single_draw_per_sample(channels: int) -> None:
    model = tiny_model(channels).eval()  # eval: every copy sees the same batch norm
    torch.manual_seed(1)
    images, labels = torch.rand(12, channels, 32, 32), torch.arange(12) % 10
    defense = UEraser(repeat_epochs=3, num_draws=5)
    torch.manual_seed(7)
    loss, worst_logits = defense.training_loss(model, images, labels, per_sample_ce, epoch=2)
    torch.manual_seed(7)
    copies = [defense.augment(images) for _ in range(5)]  # the same draws, in the same order
    with torch.no_grad():
        per_copy = torch.stack([per_sample_ce(model(c), labels) for c in copies])  # [K, B]
    worst = per_sample_ce(worst_logits, labels)
    assert (worst[None] >= per_copy - 1e-5).all()
    assert torch.allclose(worst, per_copy.max(dim=0).values, atol=1e-5)
    assert torch.allclose(loss, worst.mean(), atol=1e-6)
    assert (worst > per_copy.min(dim=0).values + 1e-4).any()  # the draws really differ
    direct, _ = max_over_draws_loss(model, copies, labels, per_sample_ce)
    assert torch.allclose(direct, loss)
