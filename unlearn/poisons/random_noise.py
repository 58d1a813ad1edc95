"""Uniform random noise in the L_inf ball: the control every table needs."""

from __future__ import annotations

from unlearn.errors import require_positive
from unlearn.poisons.base import PoisonContext, PoisonData, PoisonMethod, PoisonResult


class RandomNoise(PoisonMethod):
    """Uniform noise in ``[-eps, eps]``, drawn per sample or once per class.

    Random noise of this size is not a shortcut: a model trained on it should score about as
    well as on clean data (the baseline that shows an attack's effect is not just noise).

    Args:
        eps: L_inf bound, for images in ``[0, 1]`` (default 8/255).
        classwise: one pattern per class (``delta[i] = pattern[label[i]]``) instead of
            independent noise per sample.
    """

    norm = "linf"

    def __init__(self, eps: float = 8 / 255, classwise: bool = False) -> None:
        require_positive("RandomNoise", eps=eps)
        super().__init__(eps)
        self.classwise = classwise

    def generate(self, data: PoisonData, context: PoisonContext) -> PoisonResult:
        """Draw the noise from ``context.generator``."""
        shape = data.image_shape
        if self.classwise:
            patterns = (context.rand(data.num_classes, *shape) * 2 - 1) * self.eps
            return PoisonResult(patterns[data.labels], class_patterns=patterns)
        return PoisonResult((context.rand(len(data), *shape) * 2 - 1) * self.eps)
