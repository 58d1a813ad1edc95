"""AR: the published filters, the drawn ones and their separability, the process's layout."""

from __future__ import annotations

import hashlib

import pytest
import torch

from unlearn.data import DatasetInfo
from unlearn.poisons import AR, PoisonContext, PoisonData
from unlearn.poisons.ar import (
    ar_process,
    ar_signals,
    evaluation_signals,
    response_matrix,
    separability,
)
from unlearn.poisons.ar_filters import published_filters

# SHA-256 of the little-endian float32 bytes of the authors' files, [K, 3, 3, 3] in their
# order: params-classes-10-mr-10.pt and params-classes-100-mr-3.pt of
# psandovalsegura/autoregressive-poisoning (commit 424cc2e), loaded with torch.load.
AUTHORS_SHA256 = {
    10: "b5d36829e819111ce44edda69e60d1ceec2b9bc054c35544db2017ee6c3932bb",
    100: "3e50ae4fbcfd363a7370d5ab5f2ad7ea3a457e7468ce873b4420cea392968ecc",
}


def _data(num_classes: int, shape: tuple[int, int, int], per_class: int = 2) -> PoisonData:
    n = num_classes * per_class
    images = torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(0))
    info = DatasetInfo("synthetic", "train", n, shape, num_classes, "0" * 64)
    return PoisonData(images.to(torch.uint8), torch.arange(n) % num_classes, torch.arange(n), info)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_published_filters_are_the_authors_numbers(num_classes: int) -> None:
    filters = published_filters(num_classes)
    assert filters is not None and filters.dtype == torch.float32
    assert filters.shape == (num_classes, 3, 3, 3)
    digest = hashlib.sha256(filters.numpy().astype("<f4").tobytes()).hexdigest()
    assert digest == AUTHORS_SHA256[num_classes]
    assert (filters[..., 2, 2] == 0).all()  # nothing at the pixel being generated
    sums = filters.sum(dim=(-2, -1))
    assert torch.allclose(sums, torch.ones_like(sums), atol=3e-4)  # 4-decimal rounding
    assert published_filters(7) is None


def test_other_channel_counts_reuse_the_published_channels_in_turn() -> None:
    full = published_filters(10)
    assert torch.equal(published_filters(10, 1), full[:, :1])  # grey: the red channel
    assert torch.equal(published_filters(10, 5), full[:, [0, 1, 2, 0, 1]])


@pytest.mark.parametrize("num_classes", [10, 100])
def test_published_processes_are_bounded_and_annihilated_by_their_filters(
    num_classes: int,
) -> None:
    filters = published_filters(num_classes)
    shape = (3, 32, 32)
    generator = torch.Generator().manual_seed(1)
    signals, rms = ar_signals(filters.repeat_interleave(2, 0), shape, 4, generator)
    # from a unit-variance start; a diverging process would reach 1e3 and more in 32 px
    assert torch.isfinite(rms).all() and rms.max() < 5
    matrix = response_matrix(filters, signals.view(num_classes, 2, *shape))
    assert matrix.diagonal().abs().max() < 1e-3  # own process: nothing left
    off = matrix[~torch.eye(num_classes, dtype=torch.bool)]
    assert off.min() > 0.5  # every other class's filter responds


def test_ar_process_layout() -> None:
    """Coefficient (r, c) weighs the pixel r - 2 rows and c - 2 columns from the new one."""
    start = torch.randn(1, 1, 6, 7, generator=torch.Generator().manual_seed(0))
    above = torch.zeros(1, 1, 3, 3)
    above[0, 0, 1, 2] = 1.0  # the pixel right above
    out = ar_process(above, start)[0, 0]
    assert torch.equal(out[2:, 2:], start[0, 0, 1:2, 2:].expand(4, 5))
    corner = torch.zeros(1, 1, 3, 3)
    corner[0, 0, 0, 0] = 1.0  # two up, two left
    out = ar_process(corner, start)[0, 0]
    assert torch.equal(out[4, 5], start[0, 0, 0, 1])
    assert torch.equal(out[:2], start[0, 0, :2]) and torch.equal(out[:, :2], start[0, 0, :, :2])


def test_ten_classes_default_to_the_published_filters() -> None:
    data = _data(10, (1, 16, 16))
    result = AR().generate(data, PoisonContext(seed=0))
    filters = torch.tensor(result.info["filters"])
    assert torch.equal(filters, published_filters(10, 1))
    assert result.info["filter_source"] == "published (10 classes)"
    assert AR().params()["filters"] == "auto"
    drawn = AR(filters="drawn").generate(data, PoisonContext(seed=0))
    assert drawn.info["filter_source"] == "drawn"
    assert not torch.allclose(torch.tensor(drawn.info["filters"]), filters, atol=1e-2)
    norms = result.delta.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


@pytest.mark.parametrize("num_classes", [7, 20])
def test_drawn_sets_are_as_separable_as_the_published_one(num_classes: int) -> None:
    shape = (1, 16, 16)
    filters, info = AR().class_filters(num_classes, shape, PoisonContext(seed=0))
    bar = separability(published_filters(10, 1), shape)
    assert info["filter_source"] == "drawn" and info["separability_bar"] == pytest.approx(bar)
    assert filters.shape == (num_classes, 1, 3, 3)
    assert separability(filters, shape) >= bar
    sums = filters.sum(dim=(-2, -1))
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    # bounded (a diverging process grows by orders of magnitude), and distinct on signals
    # other than those the draw saw
    generator = torch.Generator().manual_seed(9)
    signals, rms = ar_signals(filters.repeat_interleave(3, 0), shape, 4, generator)
    assert torch.isfinite(rms).all() and rms.max() < 5
    matrix = response_matrix(filters, signals.view(num_classes, 3, *shape))
    assert matrix[~torch.eye(num_classes, dtype=torch.bool)].min() > 0.5 * bar


def test_separability_is_zero_for_a_repeated_filter() -> None:
    filters = published_filters(10, 1)[:3]
    shape = (1, 16, 16)
    assert separability(filters, shape) > 0.5
    repeated = torch.cat([filters, filters[:1]])
    assert separability(repeated, shape) < 1e-3
    signals = evaluation_signals(filters, shape, crop=4, trials=2)
    assert signals.shape == (3, 2, *shape)
    assert torch.equal(signals, evaluation_signals(filters, shape, crop=4, trials=2))


def test_drawn_filters_are_deterministic_under_the_seed() -> None:
    data = _data(7, (1, 12, 12))
    first = AR().generate(data, PoisonContext(seed=4))
    again = AR().generate(data, PoisonContext(seed=4))
    other = AR().generate(data, PoisonContext(seed=5))
    assert first.info["filters"] == again.info["filters"]
    assert torch.equal(first.delta, again.delta)
    assert first.info["filters"] != other.info["filters"]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="filters 'published' exist for \\[10, 100\\]"):
        AR(filters="published").class_filters(7, (1, 12, 12), PoisonContext())
    with pytest.raises(ValueError, match="filters must be"):
        AR(filters="paper")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="lower min_separability"):
        AR(min_separability=1e6, max_candidates=1024).class_filters(7, (1, 12, 12), PoisonContext())
