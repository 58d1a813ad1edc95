"""Autoregressive perturbations (AR), Sandoval-Segura et al., NeurIPS 2022.

"Autoregressive Perturbations for Data Poisoning"; public code:
psandovalsegura/autoregressive-poisoning.

Each class has a causal 3x3 autoregressive filter per channel (8 coefficients summing to 1,
the ninth, at the current pixel, is 0). A sample's noise starts from Gaussian values on a
grid ``crop`` pixels larger than the image; every pixel from the third row and column on is
replaced, in raster order, by the filter's weighted sum of the 3x3 window ending at it; the
first ``crop`` rows and columns are cut off and the result is scaled to L2 norm ``eps``.

The published filters are hard-coded for 10 and 100 classes and 3 channels; here they are
drawn from the seed in the spirit of the authors' search: random coefficients (normalised to
sum 1), kept if the process stays bounded and if every filter already kept responds to the new
process's signal (so the classes' processes are distinguishable). The authors' thresholds
(raw L2 norm <= 5, response >= 10 or 3) accept almost no random 3-channel filter, so the
thresholds here are per channel and relative (see :class:`AR`). Any number of classes and
channels works.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from unlearn.poisons.base import PoisonContext, PoisonData, PoisonMethod, PoisonResult

KERNEL = 3


def ar_process(coefficients: Tensor, start: Tensor) -> Tensor:
    """Run the 2-D causal AR recurrence.

    Args:
        coefficients: ``[M, C, 3, 3]`` per signal and channel (the last entry is ignored).
        start: ``[M, C, H, W]`` initial values (the first two rows and columns are kept).

    Returns:
        ``[M, C, H, W]``: ``x[i, j] = sum(coefficients * x[i-2:i+1, j-2:j+1])`` for
        ``i, j >= 2``, computed in raster order.
    """
    x = start.clone()
    coefficients = coefficients.clone()
    coefficients[..., -1, -1] = 0.0
    height, width = x.shape[-2:]
    for i in range(height - KERNEL + 1):
        for j in range(width - KERNEL + 1):
            window = x[:, :, i : i + KERNEL, j : j + KERNEL]
            x[:, :, i + KERNEL - 1, j + KERNEL - 1] = (window * coefficients).sum(dim=(-2, -1))
    return x


def matching_filter(coefficients: Tensor) -> Tensor:
    """The filter that annihilates a process: its coefficients with -1 at the current pixel.

    Args:
        coefficients: ``[C, 3, 3]``.

    Returns:
        ``[1, C, 3, 3]`` for :func:`torch.nn.functional.conv2d` (sums over channels).
    """
    out = coefficients.clone()
    out[..., -1, -1] = -1.0
    return out.unsqueeze(0)


def response(coefficients: Tensor, signal: Tensor) -> float:
    """How strongly a process's matching filter responds to a ``[C, H, W]`` signal."""
    return float(F.relu(F.conv2d(signal.unsqueeze(0), matching_filter(coefficients))).sum())


class AR(PoisonMethod):
    """Autoregressive perturbations: a class-wise process, sample-wise noise, L2 per image.

    Args:
        eps: L2 norm of each image's noise (default 1.0; the L_inf 8/255 of some scripts gives
            almost no noise).
        crop: extra rows and columns generated first and cut off (4 in the paper).
        max_rms: a channel's filter is kept only if the root mean square of its generated
            signals (before scaling) is at most this, i.e. the process does not grow from its
            unit-variance Gaussian start.
        min_response: a filter is kept only if every filter kept before responds at least
            this much (ReLU sum of the matching filter's output) to its signal of L2 norm
            ``eps``; ``None``: ``0.5 * C``.
        trials: signals generated per candidate filter for the checks.
        candidates: candidate filters drawn at once.
        max_candidates: give up after drawing this many.
        batch_size: samples generated at once.
    """

    norm = "l2"

    def __init__(
        self,
        eps: float = 1.0,
        crop: int = 4,
        max_rms: float = 1.0,
        min_response: float | None = None,
        trials: int = 3,
        candidates: int = 256,
        max_candidates: int = 100_000,
        batch_size: int = 4096,
    ) -> None:
        super().__init__(eps)
        self.crop = crop
        self.max_rms = max_rms
        self.min_response = min_response
        self.trials = trials
        self.candidates = candidates
        self.max_candidates = max_candidates
        self.batch_size = batch_size

    def _generate(
        self, coefficients: Tensor, shape: tuple[int, int, int], context: PoisonContext
    ) -> tuple[Tensor, Tensor]:
        """Signals of the processes, cropped and scaled to ``eps``, and their raw L2 norms."""
        channels, height, width = shape
        start = context.randn(
            coefficients.shape[0], channels, height + self.crop, width + self.crop
        )
        signal = ar_process(coefficients, start)[:, :, self.crop :, self.crop :]
        norms = signal.flatten(1).norm(dim=1)
        return signal / norms.clamp_min(1e-12).view(-1, 1, 1, 1) * self.eps, norms

    def draw_filters(
        self, num_classes: int, shape: tuple[int, int, int], context: PoisonContext
    ) -> Tensor:
        """Draw ``[K, C, 3, 3]`` bounded, mutually distinguishable AR filters.

        Channels are independent processes, so each channel's filter is drawn and checked for
        boundedness on its own; filters assembled from them are then kept in order if every
        filter kept before responds to their signals by at least ``min_response``.
        """
        channels = shape[0]
        min_response = self.min_response if self.min_response is not None else 0.5 * channels
        single = (1, *shape[1:])
        pool: list[Tensor] = []  # bounded single-channel filters [3, 3]
        kept: list[Tensor] = []
        drawn = 0
        while len(kept) < num_classes:
            if drawn >= self.max_candidates:
                raise RuntimeError(
                    f"AR: found only {len(kept)} of {num_classes} filters in {drawn} draws "
                    f"(max_rms {self.max_rms}, min_response {min_response}); lower "
                    "min_response or raise max_candidates"
                )
            while len(pool) < channels * self.candidates // 4:
                b = context.randn(self.candidates, 1, KERNEL, KERNEL)
                b[..., -1, -1] = 0.0
                b = b / b.sum(dim=(-2, -1), keepdim=True)
                drawn += self.candidates
                _, norms = self._generate(b.repeat_interleave(self.trials, 0), single, context)
                rms = norms.view(self.candidates, self.trials) / math.sqrt(math.prod(single))
                bounded = (torch.isfinite(rms) & (rms <= self.max_rms)).all(dim=1)
                pool.extend(b[bounded, 0])
            count = len(pool) // channels
            assembled = torch.stack(pool[: count * channels]).view(count, channels, KERNEL, KERNEL)
            pool = pool[count * channels :]
            signals, _ = self._generate(assembled, shape, context)
            for candidate, signal in zip(assembled, signals, strict=True):
                if all(response(other, signal) >= min_response for other in kept):
                    kept.append(candidate)
                    if len(kept) == num_classes:
                        break
        return torch.stack(kept)

    def generate(self, data: PoisonData, context: PoisonContext) -> PoisonResult:
        """Draw the class filters, then one noise per sample from its class's process."""
        shape = data.image_shape
        filters = self.draw_filters(data.num_classes, shape, context)
        delta = torch.empty(len(data), *shape)
        starts = range(0, len(data), self.batch_size)
        for start in context.track(starts, len(starts), "AR noise"):
            rows = slice(start, start + self.batch_size)
            delta[rows], _ = self._generate(filters[data.labels[rows]], shape, context)
        return PoisonResult(delta, info={"filters": filters.tolist()})
