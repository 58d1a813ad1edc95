"""Poison methods: budget, reproducibility, generality (classes, channels)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from poison_fixtures import FAST_METHODS, write_cifar10

import unlearn.poisons as poisons
from unlearn.data import CIFAR10DataModule, DatasetInfo
from unlearn.poisons import PoisonContext, PoisonData, load_poison
from unlearn.poisons.command import generate_poison
from unlearn.poisons.store import quantize_delta


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root)
    return root


def make(name: str, **overrides: object) -> poisons.PoisonMethod:
    klass, kwargs = FAST_METHODS[name]
    return getattr(poisons, klass)(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def generated(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every fast method's store on the CIFAR fixture (seed 0), made once."""
    out = tmp_path_factory.mktemp("stores")
    return {
        name: generate_poison(CIFAR10DataModule(root=cifar_root), make(name), out / name).parent
        for name in FAST_METHODS
    }


@pytest.mark.parametrize("name", sorted(FAST_METHODS))
def test_budget_holds_on_every_sample(name: str, generated: dict, cifar_root: Path) -> None:
    data = CIFAR10DataModule(root=cifar_root)
    stored = load_poison(generated[name], expected=data.info())
    meta, delta = stored.meta, stored.delta.double()
    for key in ("method", "norm", "eps", "dataset", "split", "num_samples", "image_shape",
                "fingerprint", "seed", "poison_ratio", "version", "params"):  # fmt: skip
        assert key in meta, key
    assert stored.delta.dtype == torch.float16 and stored.delta.shape == (40, 3, 32, 32)
    assert torch.equal(stored.indices, torch.arange(40))
    clean = torch.stack([data.train_source.image(i) for i in range(40)]).double() / 255
    poisoned = (clean + delta).clamp(0, 1)
    eps = meta["eps"]
    if meta["norm"] == "linf":
        assert eps == pytest.approx(8 / 255)
        assert delta.abs().amax() <= eps
        assert (poisoned - clean).abs().amax() <= eps
        assert delta.abs().amax() > eps / 4  # not a no-op
    elif meta["norm"] == "l2":
        norms = delta.flatten(1).norm(dim=1)
        assert (norms <= eps).all(), norms.max()
        assert ((poisoned - clean).flatten(1).norm(dim=1) <= eps).all()
        assert norms.min() > 0.99 * eps  # scaled to the budget
        expected = (3 * 32 * 32) ** 0.5 * 6 / 255 if meta["method"] == "LSP" else 1.0
        assert eps == pytest.approx(expected)
    else:
        assert meta["norm"] == "l0" and eps == 1
        changed_delta = (delta != 0).any(dim=1).flatten(1).sum(dim=1)
        assert (changed_delta == 1).all()
        changed_pixels = (poisoned != clean).any(dim=1).flatten(1).sum(dim=1)
        assert (changed_pixels <= 1).all() and changed_pixels.sum() > 30
        # the pixel is a corner colour and the same within a class
        rows, cols = (delta != 0).any(dim=1).flatten(1).nonzero(as_tuple=True)
        assert set(poisoned.flatten(2)[rows, :, cols].flatten().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", sorted(FAST_METHODS))
def test_same_seed_same_poison(
    name: str, generated: dict, cifar_root: Path, tmp_path: Path
) -> None:
    again = generate_poison(CIFAR10DataModule(root=cifar_root), make(name), tmp_path / "a")
    first, second = load_poison(generated[name]), load_poison(again)
    assert torch.equal(first.delta, second.delta)
    if name == "ops":  # an exhaustive search: the seed plays no part
        return
    other = generate_poison(CIFAR10DataModule(root=cifar_root), make(name), tmp_path / "b", seed=1)
    assert not torch.equal(first.delta, load_poison(other).delta)


def test_classwise_methods_store_their_patterns(generated: dict) -> None:
    for name in ("random_classwise", "em_classwise", "lsp_classwise", "ops"):
        stored = load_poison(generated[name])
        assert stored.meta["classwise"] is True
        assert stored.class_patterns is not None and stored.class_patterns.shape == (10, 3, 32, 32)
    labels = torch.arange(40) % 10
    stored = load_poison(generated["random_classwise"])
    assert torch.equal(stored.delta, stored.class_patterns[labels])


def test_poison_ratio_covers_a_seeded_subset(cifar_root: Path, tmp_path: Path) -> None:
    path = generate_poison(
        CIFAR10DataModule(root=cifar_root), make("random"), tmp_path, poison_ratio=0.25
    )
    stored = load_poison(path)
    assert stored.indices.numel() == 10 and stored.meta["poison_ratio"] == 0.25
    assert stored.meta["num_poisoned"] == 10


def _samples(num_classes: int, shape: tuple[int, int, int], per_class: int = 3) -> PoisonData:
    n = num_classes * per_class
    images = torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n) % num_classes
    info = DatasetInfo("synthetic", "train", n, shape, num_classes, "0" * 64)
    return PoisonData(images.to(torch.uint8), labels, torch.arange(n), info)


@pytest.mark.parametrize("shape", [(1, 8, 8), (4, 6, 6)])
def test_ops_any_number_of_classes_and_channels(shape: tuple[int, int, int]) -> None:
    data = _samples(40, shape)
    result = poisons.OPS().generate(data, PoisonContext())
    picks = {tuple(p[0]) for p in result.info["pixels_row_col_colour"]}
    assert len(picks) == 40  # a distinct (position, colour) per class
    assert result.class_patterns is not None
    assert ((result.class_patterns != 0).any(dim=1).flatten(1).sum(dim=1) == 1).all()
    with pytest.raises(ValueError, match="more \\(position, colour\\) pairs"):
        poisons.OPS().generate(_samples(200, (1, 4, 4), 1), PoisonContext())


def test_ar_any_number_of_classes_and_channels() -> None:
    data = _samples(12, (2, 12, 12))
    result = poisons.AR().generate(data, PoisonContext(seed=3))
    filters = torch.tensor(result.info["filters"])
    assert filters.shape == (12, 2, 3, 3)
    assert torch.allclose(filters.sum(dim=(-2, -1)), torch.ones(12, 2), atol=1e-5)
    norms = result.delta.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


def test_lsp_points_are_class_conditioned() -> None:
    data = _samples(5, (3, 16, 16), per_class=6)
    delta = poisons.LSP().generate(data, PoisonContext()).delta
    # patch structure: constant on 4x4 patches of a 16 px image
    assert torch.equal(delta[:, :, ::4, ::4].repeat_interleave(4, 2).repeat_interleave(4, 3), delta)
    # a nearest-centroid rule on the noise alone separates the classes
    centroids = torch.stack([delta[data.labels == c].mean(0) for c in range(5)]).flatten(1)
    nearest = torch.cdist(delta.flatten(1), centroids).argmin(dim=1)
    assert torch.equal(nearest, data.labels)


def test_quantize_keeps_the_budget() -> None:
    eps = 8 / 255
    delta = torch.full((4, 3, 8, 8), eps)
    delta[1] = -eps
    stored = quantize_delta(delta, "linf", eps)
    assert stored.dtype == torch.float16 and stored.double().abs().max() <= eps
    l2 = torch.randn(4, 3, 8, 8)
    l2 = l2 / l2.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert quantize_delta(l2, "l2", 1.0).double().flatten(1).norm(dim=1).max() <= 1.0
