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
