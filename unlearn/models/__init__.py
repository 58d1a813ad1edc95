"""Backbones: ResNet-18 (also at width 8), ResNet-50, SENet-18, ViT, LeNet-5, small CNN, linear.

Every model maps images ``float [B, C, H, W]`` in ``[0, 1]`` to logits ``[B, num_classes]``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from unlearn.errors import ConfigError
from unlearn.models.resnet import ResNet, ResNet18, resnet18, resnet50, senet18
from unlearn.models.small import LeNet5, LinearClassifier, SmallCNN
from unlearn.models.vit import ViT, vit_small

ModelFactory = Callable[[int, tuple[int, int, int]], nn.Module]

MODELS: dict[str, ModelFactory] = {
    "resnet18": lambda classes, shape: resnet18(classes, shape[0]),
    # CPU-sized ResNet-18 (the Fashion-MNIST protocol's): the 21 layers at 1/8 of the width
    "resnet18_w8": lambda classes, shape: ResNet18(classes, shape[0], width=8),
    "resnet50": lambda classes, shape: resnet50(classes, shape[0]),
    "senet18": lambda classes, shape: senet18(classes, shape[0]),
    "vit_small": vit_small,
    "lenet5": LeNet5,
    "small_cnn": SmallCNN,
    "linear": LinearClassifier,
}


def build_model(name: str, num_classes: int, image_shape: tuple[int, int, int]) -> nn.Module:
    """Build a backbone by name (one of :data:`MODELS`)."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model '{name}'; expected one of {sorted(MODELS)}") from None
    return factory(num_classes, tuple(image_shape))


__all__ = [
    "MODELS",
    "LeNet5",
    "LinearClassifier",
    "ResNet",
    "ResNet18",
    "SmallCNN",
    "ViT",
    "build_model",
    "resnet18",
    "resnet50",
    "senet18",
    "vit_small",
]
