"""One-pixel shortcut (OPS), Wu et al., ICLR 2023.

"One-Pixel Shortcut: on the Learning Preference of Deep Neural Networks"; public code:
cychomatica/One-Pixel-Shotcut and APBench's ``ops_poisons.py``.

For each class, an exhaustive search over pixel positions and the ``2^C`` corner colours
(each channel 0 or 1) picks the pair whose colour differs most consistently from the class's
own pixels there (largest mean / standard deviation of the absolute difference, over the
class's images and channels); that pixel is set to that colour in every image of the class.
Classes are searched in order and a (position, colour) pair is used by one class only.
"""

from __future__ import annotations

import itertools

import torch

from unlearn.errors import ConfigError, require_at_least
from unlearn.poisons.base import PoisonContext, PoisonData, PoisonMethod, PoisonResult


def corner_colours(channels: int) -> torch.Tensor:
    """The ``2^C`` corners of the colour cube, ``float [2^C, C]`` (binary counting order)."""
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=channels)))


class OPS(PoisonMethod):
    """One-pixel shortcut, class-wise, L0 (``pixels`` positions per image, any value).

    Works for any number of classes and channels (as long as there are enough distinct
    (position, colour) pairs: ``H * W * 2^C >= K * pixels``). The stored ``delta`` is +1 or -1
    on the chosen pixel (0 elsewhere), so ``clamp(clean + delta, 0, 1)`` is exactly the corner
    colour there and the clean image everywhere else.

    Args:
        pixels: pixel positions per class (the L0 budget; 1 in the paper).
    """

    norm = "l0"

    def __init__(self, pixels: int = 1) -> None:
        require_at_least("OPS", 1, pixels=pixels)
        super().__init__(float(pixels))
        self.pixels = pixels

    def params(self) -> dict:
        """Only ``pixels`` (``eps`` is derived from it)."""
        return {"pixels": self.pixels}

    def generate(self, data: PoisonData, context: PoisonContext) -> PoisonResult:
        """Search each class's pixels and colours in turn."""
        channels, height, width = data.image_shape
        k = data.num_classes
        if height * width * 2**channels < k * self.pixels:
            raise ConfigError(
                f"OPS: {k} classes x {self.pixels} pixels need more (position, colour) pairs "
                f"than {height}x{width} pixels x {2**channels} colours offer"
            )
        colours = corner_colours(channels)  # [2^C, C]
        used = torch.zeros(height * width, colours.shape[0], dtype=torch.bool)
        patterns = torch.zeros(k, channels, height, width)
        chosen: list[list[list[int]]] = []
        for c in context.track(range(k), k, "OPS classes"):
            members = (data.labels == c).nonzero().flatten()
            score = torch.zeros(height * width, colours.shape[0], dtype=torch.float64)
            if members.numel():
                images = data.images[members].double().div_(255.0)  # [n, C, H, W]
                for j, colour in enumerate(colours):
                    diff = (colour.double().view(1, -1, 1, 1) - images).abs()
                    mean = diff.mean(dim=(0, 1)).flatten()
                    std = diff.std(dim=(0, 1), unbiased=False).flatten()
                    # constant difference: a perfect shortcut if it is non-zero
                    score[:, j] = torch.where(
                        std > 0, mean / std.clamp_min(1e-300), mean * float("inf")
                    ).nan_to_num(nan=0.0)
            score[used] = -1.0
            picks = []
            for _ in range(self.pixels):
                flat = int(score.flatten().argmax())  # first of equal maxima: deterministic
                position, j = divmod(flat, colours.shape[0])
                score[position, :] = -1.0  # one colour per pixel within a class
                used[position, j] = True
                row, col = divmod(position, width)
                patterns[c, :, row, col] = colours[j] * 2 - 1  # +1 -> colour 1, -1 -> colour 0
                picks.append([row, col, j])
            chosen.append(picks)
        return PoisonResult(
            patterns[data.labels],
            class_patterns=patterns,
            info={"pixels_row_col_colour": chosen},
        )
