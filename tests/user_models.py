"""A model that is not part of unlearn, plugged in by class_path in a config."""

from torch import Tensor, nn


class TinyMLP(nn.Module):
    def __init__(self, in_features: int = 1024, num_classes: int = 10, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
