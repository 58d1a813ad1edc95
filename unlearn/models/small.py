"""Small models: LeNet-5, a CPU-sized CNN, a linear classifier."""

from __future__ import annotations

from torch import Tensor, nn


class LeNet5(nn.Module):
    """LeNet-5 (conv 6 - pool - conv 16 - pool - 120 - 84 - classes) with ReLU and max-pool.

    Inputs smaller than 32 px (MNIST's 28) are zero-padded in the first convolution so the
    feature map before the classifier is 16 x 5 x 5 as in the original.
    """

    def __init__(
        self, num_classes: int = 10, image_shape: tuple[int, int, int] = (1, 32, 32)
    ) -> None:
        super().__init__()
        channels, height, _ = image_shape
        pad = max(0, (32 - height) // 2)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=pad),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = ((height + 2 * pad - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` -> logits ``[B, num_classes]``."""
        return self.classifier(self.features(x))


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (no bias), batch norm, ReLU; keeps the spatial size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A CNN sized for CPU runs: three stages of two conv-BN-ReLU, then two linear layers.

    Eight measured layers (six convolutions, two linear): UD counts learnable layers, so
    each layer moves it by 1/8 (docs/sal_ud.md). About 0.1M parameters at ``width=16``.

    Args:
        num_classes: output logits.
        image_shape: ``(C, H, W)`` of the inputs (any H, W >= 8).
        width: channels of the first stage; doubled at each of the next two.
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        width: int = 16,
    ) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn_relu(image_shape[0], w),
            conv_bn_relu(w, w),
            nn.MaxPool2d(2),
            conv_bn_relu(w, 2 * w),
            conv_bn_relu(2 * w, 2 * w),
            nn.MaxPool2d(2),
            conv_bn_relu(2 * w, 4 * w),
            conv_bn_relu(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * w, 8 * w),
            nn.ReLU(inplace=True),
            nn.Linear(8 * w, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` -> logits ``[B, num_classes]``."""
        return self.classifier(self.features(x))


class LinearClassifier(nn.Module):
    """Multinomial logistic regression on flattened pixels."""

    def __init__(
        self, num_classes: int = 10, image_shape: tuple[int, int, int] = (3, 32, 32)
    ) -> None:
        super().__init__()
        channels, height, width = image_shape
        self.linear = nn.Linear(channels * height * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` -> logits ``[B, num_classes]``."""
        return self.linear(x.flatten(1))
