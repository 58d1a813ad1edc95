"""CIFAR-style ResNets (3x3 stem, no max-pool) and SENet-18, for 32-px-class images."""

from __future__ import annotations

from torch import Tensor, nn

from unlearn.errors import ConfigError


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34), optional SE gate."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, se: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SqueezeExcite(planes) if se else nn.Identity()
        self.shortcut = _shortcut(in_planes, planes, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_planes, H, W]`` -> ``[B, planes, H/stride, W/stride]``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck block (ResNet-50), output width ``4 * planes``."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, se: bool = False) -> None:
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.se = SqueezeExcite(width) if se else nn.Identity()
        self.shortcut = _shortcut(in_planes, width, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_planes, H, W]`` -> ``[B, 4 * planes, H/stride, W/stride]``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        return self.relu(out + self.shortcut(x))


class SqueezeExcite(nn.Module):
    """Channel gate of SENet: global pool, bottleneck of ``channels // 16``, sigmoid."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Rescale each channel of ``[B, C, H, W]`` by a learned gate in ``(0, 1)``."""
        gate = x.mean(dim=(2, 3), keepdim=True)
        gate = self.fc2(self.fc1(gate).relu()).sigmoid()
        return x * gate


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class ResNet(nn.Module):
    """ResNet for small images: 3x3 stem, four stages (64-512 wide), global pool, linear head.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        num_blocks: blocks per stage.
        num_classes: output logits.
        in_channels: image channels.
        se: add squeeze-and-excitation gates (SENet).
        width: channels of the stem and the first stage (the published 64); the stages are
            ``width``, 2, 4 and 8 times ``width`` wide. Halving it quarters the FLOPs and keeps
            the layer count (UD counts layers).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 10,
        in_channels: int = 3,
        se: bool = False,
        width: int = 64,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"ResNet width must be a positive number of channels, got {width}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        in_planes = width
        widths = (width, 2 * width, 4 * width, 8 * width)
        for i, (planes, blocks) in enumerate(zip(widths, num_blocks, strict=True)):
            layers = []
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(block(in_planes, planes, stride, se))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` -> logits ``[B, num_classes]``."""
        out = self.bn1(self.conv1(x)).relu()
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.pool(out).flatten(1))


class ResNet18(ResNet):
    """CIFAR ResNet-18 with a width setting, for configs (``class_path: unlearn.models.ResNet18``).

    21 weight layers (stem, 16 block convolutions, 3 shortcut convolutions, the head);
    11.2M parameters at ``width=64`` and 10 classes, 0.18M at ``width=8``.

    Args:
        num_classes: output logits.
        in_channels: image channels (1 for gray images).
        width: channels of the first stage (see :class:`ResNet`).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, width=width)


def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """CIFAR ResNet-18 (11.2M parameters at 10 classes)."""
    return ResNet18(num_classes, in_channels)


def resnet50(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """CIFAR ResNet-50 (23.5M parameters at 10 classes)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


def senet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """SENet-18: ResNet-18 with a squeeze-and-excitation gate in every block."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, se=True)
