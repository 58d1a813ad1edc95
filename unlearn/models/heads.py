"""Multi-scale encoders and per-task heads for dense multi-task prediction.

An :class:`Encoder` maps images ``[B, C, H, W]`` to a list of feature maps, finest first, with
known ``channels`` and ``strides`` (``H / stride`` rows each). Heads read that list:
:class:`DenseHead` decodes it back to ``[B, out, H, W]`` (top-down with lateral 1x1
convolutions, as in a light FPN), :class:`ClassifierHead` pools the coarsest map to logits.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from unlearn.errors import ConfigError
from unlearn.models.resnet import BasicBlock, Bottleneck, ResNet
from unlearn.models.small import conv_bn_relu


class Encoder(nn.Module):
    """Base of the shared trunks.

    Attributes:
        channels: channels of each returned feature map, finest first.
        strides: downsampling factor of each returned map (1 = input resolution).
    """

    channels: list[int]
    strides: list[int]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Images ``[B, C, H, W]`` -> feature maps ``[B, channels[i], H/strides[i], ...]``."""
        raise NotImplementedError


class SmallEncoder(Encoder):
    """CPU-sized trunk: four stages of two conv-BN-ReLU (8 measured layers), max-pool between.

    Args:
        in_channels: image channels.
        width: channels of the first stage, doubled at each next stage.
    """

    def __init__(self, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.channels = [width, 2 * width, 4 * width, 8 * width]
        self.strides = [1, 2, 4, 8]
        stages, c_in = [], in_channels
        for i, c in enumerate(self.channels):
            pool = [nn.MaxPool2d(2)] if i > 0 else []
            stages.append(nn.Sequential(*pool, conv_bn_relu(c_in, c), conv_bn_relu(c, c)))
            c_in = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Images ``[B, C, H, W]`` -> four maps at strides 1, 2, 4, 8."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class ResNetEncoder(Encoder):
    """The CIFAR ResNet-18/50 of :mod:`unlearn.models.resnet` without its pool and classifier.

    Args:
        depth: 18 or 50.
        in_channels: image channels.
    """

    def __init__(self, depth: int = 18, in_channels: int = 3) -> None:
        super().__init__()
        if depth == 18:
            net = ResNet(BasicBlock, (2, 2, 2, 2), 1, in_channels)
        elif depth == 50:
            net = ResNet(Bottleneck, (3, 4, 6, 3), 1, in_channels)
        else:
            raise ConfigError(f"ResNetEncoder depth must be 18 or 50, got {depth}")
        expansion = 1 if depth == 18 else 4
        self.conv1, self.bn1 = net.conv1, net.bn1
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.channels = [c * expansion for c in (64, 128, 256, 512)]
        self.strides = [1, 2, 4, 8]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Images ``[B, C, H, W]`` -> the four stages' maps at strides 1, 2, 4, 8."""
        f1 = self.layer1(self.bn1(self.conv1(x)).relu())
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3, self.layer4(f3)]


ENCODERS = ("small_cnn", "resnet18", "resnet50")


def build_encoder(name: str, in_channels: int = 3, width: int = 16) -> Encoder:
    """An encoder by name: ``small_cnn`` (``width`` wide), ``resnet18`` or ``resnet50``."""
    if name == "small_cnn":
        return SmallEncoder(in_channels, width)
    if name in ("resnet18", "resnet50"):
        return ResNetEncoder(int(name[6:]), in_channels)
    raise ConfigError(f"unknown encoder '{name}'; expected one of {list(ENCODERS)}")


class DenseHead(nn.Module):
    """Top-down decoder to a full-resolution map.

    Args:
        channels: the encoder's ``channels``.
        strides: the encoder's ``strides`` (each a power of two of the previous).
        out_channels: channels of the output map (classes, or values per pixel).
        width: channels of the decoder.
    """

    def __init__(
        self, channels: list[int], strides: list[int], out_channels: int, width: int = 32
    ) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.smooth = nn.ModuleList(conv_bn_relu(width, width) for _ in channels[:-1])
        self.factors = [strides[i + 1] // strides[i] for i in range(len(strides) - 1)]
        self.scale = strides[0]
        self.out = nn.Conv2d(width, out_channels, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Feature maps (finest first) -> ``[B, out_channels, H, W]``."""
        x = self.lateral[-1](features[-1])
        for i in range(len(features) - 2, -1, -1):
            x = F.interpolate(x, scale_factor=self.factors[i], mode="bilinear")
            x = self.smooth[i](x + self.lateral[i](features[i]))
        x = self.out(x)
        if self.scale != 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear")
        return x


class ClassifierHead(nn.Module):
    """Global average pool of the coarsest map, then two linear layers.

    Args:
        channels: channels of the coarsest map.
        num_classes: output logits.
        hidden: width of the hidden layer.
    """

    def __init__(self, channels: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Feature maps (finest first) -> logits ``[B, num_classes]``."""
        pooled = features[-1].mean(dim=(2, 3))
        return self.fc2(self.fc1(pooled).relu())


class MultiTaskNet(nn.Module):
    """A shared encoder and one head per task; ``forward`` returns ``{task: output}``.

    Args:
        encoder: the shared trunk.
        heads: one module per task, each reading the encoder's feature list.
    """

    def __init__(self, encoder: Encoder, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Images ``[B, C, H, W]`` -> ``{task: head output}``."""
        features = self.encoder(x)
        return {name: head(features) for name, head in self.heads.items()}


class TaskView(nn.Module):
    """The shared encoder and one task's head as a single-output model (for SAL).

    Parameters are shared with the multi-task model, not copied. Layer names are
    ``encoder.*`` (shared) and ``head.*`` (the task's own).
    """

    def __init__(self, encoder: Encoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` -> the task head's output."""
        return self.head(self.encoder(x))
