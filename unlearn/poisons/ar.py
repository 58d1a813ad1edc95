"""Autoregressive perturbations (AR), Sandoval-Segura et al., NeurIPS 2022.

"Autoregressive Perturbations for Data Poisoning"; public code:
psandovalsegura/autoregressive-poisoning.

Each class has a causal 3x3 autoregressive filter per channel (8 coefficients summing to 1,
the ninth, at the current pixel, is 0). A sample's noise starts from Gaussian values on a
grid ``crop`` pixels larger than the image; every pixel from the third row and column on is
replaced, in raster order, by the filter's weighted sum of the 3x3 window ending at it; the
first ``crop`` rows and columns are cut off and the result is scaled to L2 norm ``eps``.

The filters: for 10 and 100 classes the authors' published ones
(:mod:`unlearn.poisons.ar_filters`; channel ``c`` of the data uses their channel ``c mod 3``),
for other class counts drawn from the seed and kept only if the set is at least as separable
(:func:`separability`) as the published 10-class set on the same image shape (the 100-class
set above 100 classes).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from unlearn.errors import (
    ConfigError,
    UnlearnError,
    check_choice,
    require_at_least,
    require_positive,
)
from unlearn.poisons.ar_filters import published_class_counts, published_filters
from unlearn.poisons.base import PoisonContext, PoisonData, PoisonMethod, PoisonResult

KERNEL = 3
#: seed of the start signals :func:`separability` measures on, so that the figure is a
#: property of the filters alone
SEPARABILITY_SEED = 0

FilterChoice = Literal["auto", "published", "drawn"]


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


def ar_signals(
    coefficients: Tensor, shape: tuple[int, int, int], crop: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """One signal per process from a Gaussian start, cropped and scaled to L2 norm 1.

    Args:
        coefficients: ``[M, C, 3, 3]``, one process per signal.
        shape: ``(C, H, W)`` of the signals (after the crop).
        crop: rows and columns generated first and cut off.
        generator: source of the unit-variance Gaussian start (CPU).

    Returns:
        ``[M, C, H, W]`` signals of L2 norm 1, and ``[M]`` the root mean square of each
        cropped signal before scaling (1 for a process that keeps its start's variance).
    """
    channels, height, width = shape
    start = torch.randn(
        coefficients.shape[0], channels, height + crop, width + crop, generator=generator
    )
    signal = ar_process(coefficients, start)[:, :, crop:, crop:]
    norms = signal.flatten(1).norm(dim=1)
    unit = signal / norms.clamp_min(1e-12).view(-1, 1, 1, 1)
    return unit, norms / math.sqrt(math.prod(shape))


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
    """How strongly a process's matching filter responds to a ``[C, H, W]`` signal.

    The sum over positions of the ReLU of the matching filter's output, as the authors
    measure it. Zero (up to rounding) for a signal of the process itself; proportional to the
    signal's scale.
    """
    return float(response_matrix(coefficients.unsqueeze(0), signal[None, None])[0, 0])


def response_matrix(coefficients: Tensor, signals: Tensor) -> Tensor:
    """Mean response of every process's matching filter to every group of signals.

    Args:
        coefficients: ``[A, C, 3, 3]`` processes whose matching filters respond.
        signals: ``[B, T, C, H, W]``: ``T`` signals of each of ``B`` processes.

    Returns:
        ``[A, B]``: entry ``(i, j)`` is the mean over ``t`` of
        ``response(coefficients[i], signals[j, t])``.
    """
    out = torch.zeros(coefficients.shape[0], signals.shape[0])
    if coefficients.shape[0] == 0:
        return out
    filters = torch.cat([matching_filter(c) for c in coefficients])  # [A, C, 3, 3]
    for j, group in enumerate(signals):  # one group at a time bounds the memory
        out[:, j] = F.relu(F.conv2d(group, filters)).sum(dim=(-2, -1)).mean(dim=0)
    return out


def _weakest_pair(matrix: Tensor) -> tuple[float, int, int]:
    """Smallest off-diagonal entry of a square matrix and its ``(row, column)``."""
    k = matrix.shape[0]
    if k < 2:
        return math.inf, 0, 0
    off = matrix.masked_fill(torch.eye(k, dtype=torch.bool), math.inf)
    flat = int(off.flatten().argmin())
    return float(off.flatten()[flat]), flat // k, flat % k


def evaluation_signals(
    coefficients: Tensor, shape: tuple[int, int, int], crop: int, trials: int
) -> Tensor:
    """The ``[K, trials, C, H, W]`` unit-norm signals :func:`separability` measures on.

    Their starts come from a generator seeded with :data:`SEPARABILITY_SEED`.
    """
    generator = torch.Generator().manual_seed(SEPARABILITY_SEED)
    signals, _ = ar_signals(coefficients.repeat_interleave(trials, 0), shape, crop, generator)
    return signals.view(coefficients.shape[0], trials, *shape)


def separability(
    coefficients: Tensor, shape: tuple[int, int, int], crop: int = 4, trials: int = 8
) -> float:
    """How well a set of class processes is told apart by their matching filters.

    The smallest cross-class response: the minimum over classes ``i != j`` of the mean
    response (:func:`response_matrix`) of class ``i``'s matching filter to ``trials`` signals
    of class ``j``, each of shape ``shape`` and L2 norm 1, generated with ``crop`` from starts
    seeded by :data:`SEPARABILITY_SEED`. A class's response to its own signals is 0 (the
    matching filter annihilates its process), so the larger the figure, the more every
    class's filter reacts to every other class's noise. It grows with the image size
    (a sum over positions): compare sets on the same shape.

    Args:
        coefficients: ``[K, C, 3, 3]``.
        shape: ``(C, H, W)`` of the signals.
        crop: rows and columns generated first and cut off.
        trials: signals per class.

    Returns:
        The figure (``inf`` for fewer than 2 classes).
    """
    signals = evaluation_signals(coefficients, shape, crop, trials)
    return _weakest_pair(response_matrix(coefficients, signals))[0]


class FilterSearchError(UnlearnError, RuntimeError):
    """No set of drawn filters reached the separability bar within ``max_candidates``."""


class AR(PoisonMethod):
    """Autoregressive perturbations: a class-wise process, sample-wise noise, L2 per image.

    Args:
        eps: L2 norm of each image's noise (default 1.0; the L_inf 8/255 of some scripts gives
            almost no noise).
        crop: extra rows and columns generated first and cut off (4 in the paper).
        filters: ``"auto"`` (default): the authors' published filters when the data has 10
            or 100 classes, drawn ones otherwise; ``"published"``: the published ones (an
            error for other class counts); ``"drawn"``: always drawn from the seed.
        min_separability: a drawn set must reach this :func:`separability` on the data's image
            shape; ``None``: the figure of the published 10-class set (100-class set above
            100 classes) on that shape.
        max_rms: a drawn channel filter is kept only if the root mean square of each of its
            ``trials`` signals (before scaling) is at most this, i.e. the process does not grow
            from its unit-variance Gaussian start.
        trials: signals per filter for the boundedness check and for the separability.
        candidates: single-channel candidate filters drawn at once.
        max_candidates: give up (an error) after drawing this many.
        batch_size: samples generated at once.
    """

    norm = "l2"

    def __init__(
        self,
        eps: float = 1.0,
        crop: int = 4,
        filters: FilterChoice = "auto",
        min_separability: float | None = None,
        max_rms: float = 1.0,
        trials: int = 8,
        candidates: int = 256,
        max_candidates: int = 100_000,
        batch_size: int = 4096,
    ) -> None:
        require_positive("AR", eps=eps, max_rms=max_rms)
        require_at_least("AR", 0, crop=crop)
        require_at_least("AR", 1, trials=trials, candidates=candidates)
        require_at_least("AR", 1, max_candidates=max_candidates, batch_size=batch_size)
        check_choice("AR", "filters", filters, ("auto", "published", "drawn"))
        super().__init__(eps)
        self.crop = crop
        self.filters = filters
        self.min_separability = min_separability
        self.max_rms = max_rms
        self.trials = trials
        self.candidates = candidates
        self.max_candidates = max_candidates
        self.batch_size = batch_size

    def separability_bar(self, num_classes: int, shape: tuple[int, int, int]) -> float:
        """The :func:`separability` a drawn set of ``num_classes`` filters must reach."""
        if self.min_separability is not None:
            return float(self.min_separability)
        counts = published_class_counts()
        reference = min(counts) if num_classes < max(counts) else max(counts)
        published = published_filters(reference, shape[0])
        assert published is not None  # a published count by construction
        return separability(published, shape, self.crop, self.trials)

    def class_filters(
        self, num_classes: int, shape: tuple[int, int, int], context: PoisonContext
    ) -> tuple[Tensor, dict]:
        """The ``[K, C, 3, 3]`` filters of the classes and what to record about them."""
        published = None if self.filters == "drawn" else published_filters(num_classes, shape[0])
        if published is not None:
            figure = separability(published, shape, self.crop, self.trials)
            return published, {
                "filter_source": f"published ({num_classes} classes)",
                "separability": figure,
            }
        if self.filters == "published":
            raise ConfigError(
                f"AR: filters 'published' exist for {list(published_class_counts())} classes, "
                f"the data has {num_classes}; use filters 'auto' or 'drawn'"
            )
        bar = self.separability_bar(num_classes, shape)
        drawn = self.draw_filters(num_classes, shape, context, bar)
        figure = separability(drawn, shape, self.crop, self.trials)
        return drawn, {"filter_source": "drawn", "separability": figure, "separability_bar": bar}

    def _bounded_pool(self, shape: tuple[int, int, int], context: PoisonContext) -> list[Tensor]:
        """Draw ``candidates`` single-channel filters, return the ``[3, 3]`` bounded ones."""
        b = context.randn(self.candidates, 1, KERNEL, KERNEL)
        b[..., -1, -1] = 0.0
        b = b / b.sum(dim=(-2, -1), keepdim=True)
        single = (1, *shape[1:])
        _, rms = ar_signals(
            b.repeat_interleave(self.trials, 0), single, self.crop, context.generator
        )
        rms = rms.view(self.candidates, self.trials)
        bounded = (torch.isfinite(rms) & (rms <= self.max_rms)).all(dim=1)
        return list(b[bounded, 0])

    def draw_filters(
        self,
        num_classes: int,
        shape: tuple[int, int, int],
        context: PoisonContext,
        bar: float,
    ) -> Tensor:
        """Draw ``[K, C, 3, 3]`` bounded filters whose :func:`separability` is at least ``bar``.

        Rejection sampling in the spirit of the authors' search: each channel's filter is
        drawn (normal coefficients normalised to sum 1) and checked for boundedness on its own
        (channels are independent processes); assembled candidates are kept in order if the
        mean responses between them and every filter kept before, in both directions, are at
        least ``bar`` on ``trials`` signals each. A full set is then measured with
        :func:`separability`; while it falls short, the later filter of the weakest pair is
        dropped and drawing goes on.

        Raises:
            FilterSearchError: no such set within ``max_candidates`` single-channel draws.
        """
        channels = shape[0]
        pool: list[Tensor] = []
        kept = torch.zeros(0, channels, KERNEL, KERNEL)
        kept_signals = torch.zeros(0, self.trials, *shape)
        drawn = 0
        while True:
            while len(kept) < num_classes:
                while len(pool) < channels * max(1, self.candidates // 4):
                    if drawn >= self.max_candidates:
                        raise FilterSearchError(
                            f"AR: found only {len(kept)} of {num_classes} filters with "
                            f"separability >= {bar:.4g} in {drawn} draws (max_rms "
                            f"{self.max_rms}); lower min_separability or raise max_candidates"
                        )
                    pool.extend(self._bounded_pool(shape, context))
                    drawn += self.candidates
                count = len(pool) // channels
                batch = torch.stack(pool[: count * channels]).view(count, *kept.shape[1:])
                pool = pool[count * channels :]
                signals, _ = ar_signals(
                    batch.repeat_interleave(self.trials, 0), shape, self.crop, context.generator
                )
                signals = signals.view(count, self.trials, *shape)
                kept_on_new = response_matrix(kept, signals)  # [kept, count]
                new_on_kept = response_matrix(batch, kept_signals)  # [count, kept]
                new_on_new = response_matrix(batch, signals)  # [count, count]
                accepted: list[int] = []
                for m in range(count):
                    if len(kept) + len(accepted) == num_classes:
                        break
                    others = torch.tensor(accepted, dtype=torch.long)
                    if (
                        (kept_on_new[:, m] >= bar).all()
                        and (new_on_kept[m] >= bar).all()
                        and (new_on_new[others, m] >= bar).all()
                        and (new_on_new[m, others] >= bar).all()
                    ):
                        accepted.append(m)
                kept = torch.cat([kept, batch[accepted]])
                kept_signals = torch.cat([kept_signals, signals[accepted]])
            matrix = response_matrix(kept, evaluation_signals(kept, shape, self.crop, self.trials))
            figure, i, j = _weakest_pair(matrix)
            if figure >= bar:
                return kept
            drop = torch.arange(len(kept)) != max(i, j)
            kept, kept_signals = kept[drop], kept_signals[drop]

    def generate(self, data: PoisonData, context: PoisonContext) -> PoisonResult:
        """Choose the class filters, then one noise per sample from its class's process."""
        shape = data.image_shape
        filters, info = self.class_filters(data.num_classes, shape, context)
        delta = torch.empty(len(data), *shape)
        starts = range(0, len(data), self.batch_size)
        for start in context.track(starts, len(starts), "AR noise"):
            rows = slice(start, start + self.batch_size)
            signals, _ = ar_signals(filters[data.labels[rows]], shape, self.crop, context.generator)
            delta[rows] = signals * self.eps
        return PoisonResult(delta, info={"filters": filters.tolist(), **info})
