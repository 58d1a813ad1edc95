"""Linearly separable synthetic perturbations (LSP), Yu et al., KDD 2022.

"Availability Attacks Create Shortcuts"; public code:
dayu11/Availability-Attacks-Create-Shortcuts and APBench's ``lsp_poisons.py``.

``sklearn.datasets.make_classification`` draws well-separated class clusters (``class_sep``
10) in ``grid * grid * C`` dimensions; each sample of class ``k`` gets its own point of
cluster ``k``, every feature fills one patch of a ``grid x grid`` layout (8x8 patches for
32 px), and the noise is scaled to a fixed L2 norm per image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import make_classification

from unlearn.errors import require_at_least, require_positive
from unlearn.poisons.base import PoisonContext, PoisonData, PoisonMethod, PoisonResult


class LSP(PoisonMethod):
    """Synthetic patch noise, class-conditioned, L2 per image.

    Default as APBench: one synthetic point per sample (drawn from its class's cluster);
    ``classwise: true`` uses one point per class for all its samples.

    Args:
        eps: L2 norm of each image's noise; ``None`` (default) gives
            ``sqrt(C * H * W) * eps_per_pixel`` (1.30 for 3 x 32 x 32, 0.75 for 1 x 32 x 32).
        eps_per_pixel: the per-pixel scale of the default ``eps`` (6/255).
        grid: patches per side; the patch size is ``H / grid`` (8 px for 32 px images).
        class_sep: separation of the class clusters (``make_classification``'s ``class_sep``).
        classwise: one pattern per class instead of one per sample.
    """

    norm = "l2"

    def __init__(
        self,
        eps: float | None = None,
        eps_per_pixel: float = 6 / 255,
        grid: int = 4,
        class_sep: float = 10.0,
        classwise: bool = False,
    ) -> None:
        require_positive("LSP", eps=eps, eps_per_pixel=eps_per_pixel, class_sep=class_sep)
        require_at_least("LSP", 1, grid=grid)
        super().__init__(eps)
        self.eps_per_pixel = eps_per_pixel
        self.grid = grid
        self.class_sep = class_sep
        self.classwise = classwise

    def budget(self, image_shape: tuple[int, int, int]) -> float:
        """``eps``, or ``sqrt(C * H * W) * eps_per_pixel`` when ``eps`` is ``None``."""
        if self.eps is not None:
            return float(self.eps)
        return math.sqrt(math.prod(image_shape)) * self.eps_per_pixel

    def generate(self, data: PoisonData, context: PoisonContext) -> PoisonResult:
        """Draw the synthetic points (seeded by the context's seed) and upsample them."""
        channels, height, width = data.image_shape
        k = data.num_classes
        counts = torch.bincount(data.labels, minlength=k)
        per_class = 1 if self.classwise else int(counts.max())
        features = self.grid * self.grid * channels
        points, point_labels = make_classification(
            n_samples=per_class * k,
            n_features=features,
            n_informative=features,
            n_redundant=0,
            n_repeated=0,
            n_classes=k,
            n_clusters_per_class=1,
            class_sep=self.class_sep,
            flip_y=0.0,
            random_state=np.random.RandomState(context.seed % 2**32),
        )
        points = torch.from_numpy(points).float().view(-1, channels, self.grid, self.grid)
        point_labels = torch.from_numpy(point_labels).long()
        patterns = F.interpolate(points, size=(height, width), mode="nearest")
        norms = patterns.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        patterns = patterns / norms * self.budget(data.image_shape)
        by_class = [patterns[point_labels == c] for c in range(k)]
        if self.classwise:
            class_patterns = torch.stack([group[0] for group in by_class])
            return PoisonResult(class_patterns[data.labels], class_patterns=class_patterns)
        delta = torch.empty(len(data), channels, height, width)
        for c in range(k):
            members = (data.labels == c).nonzero().flatten()
            delta[members] = by_class[c][: members.numel()]
        return PoisonResult(delta)
