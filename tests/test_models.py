from __future__ import annotations

import pytest
import torch
from torch import nn

from unlearn.models import MODELS, build_model


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_models_map_images_to_logits(name: str, shape: tuple[int, int, int]) -> None:
    if name == "vit_small" and shape[1] % 4:
        shape = (shape[0], 32, 32)
    model = build_model(name, 7, shape)
    logits = model(torch.rand(2, *shape))
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_quickstart_model_has_enough_measured_layers() -> None:
    model = build_model("small_cnn", 10, (1, 32, 32))
    measured = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(measured) >= 8


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet19'.*resnet18"):
        build_model("resnet19", 10, (3, 32, 32))


def test_vit_rejects_indivisible_size() -> None:
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        build_model("vit_small", 10, (3, 30, 30))


@pytest.mark.parametrize("width", [4, 8])
def test_resnet18_width_scales_channels_and_keeps_21_layers(width: int) -> None:
    from unlearn.models import ResNet18

    model = ResNet18(num_classes=10, in_channels=1, width=width)
    measured = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(measured) == 21  # stem, 16 block convolutions, 3 shortcuts, head
    convs = [m for m in measured if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 1 and convs[0].out_channels == width
    assert max(m.out_channels for m in convs) == 8 * width
    assert model.linear.in_features == 8 * width
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_resnet18_default_width_is_the_published_one() -> None:
    from unlearn.models import ResNet18

    parameters = sum(p.numel() for p in ResNet18(num_classes=10).parameters())
    assert round(parameters / 1e6, 1) == 11.2  # CIFAR ResNet-18 at 10 classes
