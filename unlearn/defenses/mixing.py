"""Batch mixing: CutMix (Yun et al. 2019) and Mixup (Zhang et al. 2018), from torchvision."""

from __future__ import annotations

from torch import Tensor
from torchvision.transforms import v2

from unlearn.defenses.base import Defense
from unlearn.errors import ConfigError


class _BatchMix(Defense):
    """Shared code: wrap a torchvision batch-mixing transform; targets become soft."""

    pixel_aligned = False

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        if alpha <= 0:
            raise ConfigError(f"alpha must be positive, got {alpha}")
        self.alpha = alpha

    def _transform(self, num_classes: int) -> v2.Transform:
        raise NotImplementedError

    def mix(self, images: Tensor, targets: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
        """Mix ``float [B, C, H, W]`` images with the batch rolled by one.

        Integer labels ``int64 [B]`` become soft targets ``float [B, num_classes]`` (rows sum
        to 1).
        """
        if targets.ndim != 1 or targets.is_floating_point():
            raise ConfigError(
                f"{type(self).__name__} needs integer labels [B], got {tuple(targets.shape)} "
                f"{targets.dtype}: configure at most one mixing defense"
            )
        mixed, soft = self._transform(num_classes)(images.detach(), targets)
        return mixed, soft

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class CutMix(_BatchMix):
    """CutMix: paste a random box from another image of the batch; labels mixed by box area.

    ``torchvision.transforms.v2.CutMix``: one ``lambda ~ Beta(alpha, alpha)`` and one box per
    batch, partner = the batch rolled by one, applied to every batch (p = 1).

    Args:
        alpha: Beta distribution parameter.
    """

    def _transform(self, num_classes: int) -> v2.Transform:
        return v2.CutMix(alpha=self.alpha, num_classes=num_classes)


class Mixup(_BatchMix):
    """Mixup: convex combination with another image of the batch and of the two labels.

    ``torchvision.transforms.v2.MixUp``: one ``lambda ~ Beta(alpha, alpha)`` per batch,
    partner = the batch rolled by one, applied to every batch (p = 1).

    Args:
        alpha: Beta distribution parameter.
    """

    def _transform(self, num_classes: int) -> v2.Transform:
        return v2.MixUp(alpha=self.alpha, num_classes=num_classes)
