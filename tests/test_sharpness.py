"""SAL on small models: fidelity to the published procedure, caching, side effects."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearn.sharpness import (
    LayerSAL,
    SALSettings,
    compute_sal,
    first_order_sal,
    measured_layers,
    spearman,
)


class TinyResNet(nn.Module):
    """Stem conv + BN, one residual block with a 1x1 conv shortcut, linear head."""

    def __init__(self, channels: int = 1, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.conv1 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.shortcut = nn.Conv2d(6, 8, 1, stride=2)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn(self.stem(x)))
        out = self.conv2(self.relu(self.conv1(h)))
        out = self.relu(out + self.shortcut(h))
        return self.head(F.adaptive_avg_pool2d(out, 4))


class Untraceable(TinyResNet):
    """Data-dependent control flow: torch.fx cannot trace it, SAL must fall back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = x * 1.0
        return super().forward(x)


class BranchesOnActivations(TinyResNet):
    """Control flow on an activation: fx cannot trace it and vmap cannot batch it when the
    measured layer (the stem) feeds the condition."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        if h.abs().max() > 1e6:
            h = h * 0.0
        out = self.relu(self.bn(h))
        out = self.relu(self.conv2(self.relu(self.conv1(out))) + self.shortcut(out))
        return self.head(F.adaptive_avg_pool2d(out, 4))


class MutatesCache(nn.Module):
    """The part that depends on ``c2`` modifies c1's output in place (a cached value)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        g = h * 2
        y = self.c2(h)
        g.add_(y.detach())
        return self.fc((g + y).flatten(1))


def make_model(cls: type[nn.Module] = TinyResNet, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = cls()
    for m in model.modules():  # non-trivial running statistics, so eval-mode BN matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def make_batches(
    n: int = 48, batch: int = 16, seed: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def naive_sal(model: nn.Module, batches: list, layer: str, s: SALSettings) -> dict[str, float]:
    """The published procedure, literally: a deep copy per direction, torch.optim.SGD on the
    one weight, projection, then a separate evaluation pass over the probe set."""

    def evaluate(net: nn.Module) -> tuple[float, float]:
        total, loss_sum, correct = 0, 0.0, 0
        with torch.no_grad():
            for x, y in batches:
                out = net(x)
                total += y.shape[0]
                loss_sum += F.cross_entropy(out, y).item() * y.shape[0]
                correct += out.max(1)[1].eq(y).sum().item()
        return loss_sum / total, correct / total

    base = copy.deepcopy(model)
    base.eval()
    loss0, acc0 = evaluate(base)
    name = f"{layer}.weight"
    steps = s.steps_per_iter or len(batches)
    histories = []
    for lr, sign in ((s.lr_min, 1.0), (s.lr_max, -1.0)):
        net = copy.deepcopy(base)
        for n, p in net.named_parameters():
            p.requires_grad = n == name
        weight = dict(net.named_parameters())[name]
        init = weight.detach().clone()
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        history, cursor = [], 0
        for _ in range(s.iters):
            for _ in range(steps):
                x, y = batches[cursor % len(batches)]
                cursor += 1
                opt.zero_grad()
                (sign * F.cross_entropy(net(x), y)).backward()
                opt.step()
            with torch.no_grad():
                diff = weight - init
                times = torch.linalg.norm(diff) / torch.linalg.norm(init)
                if times > s.eps:
                    weight.copy_(init + diff / times * s.eps)
            history.append(evaluate(net))
        histories.append(history)
    min_loss, max_acc = loss0, acc0
    for loss, acc in histories[0]:
        if loss < min_loss:
            min_loss, max_acc = loss, acc
    max_loss, min_acc = loss0, acc0
    for loss, acc in histories[1]:
        if loss > max_loss:
            max_loss, min_acc = loss, acc
    s_max, s_min = max_loss - loss0, loss0 - min_loss
    drop, rise = acc0 - min_acc, max_acc - acc0
    return {
        "sal": s_max if abs(s_max) > abs(s_min) else s_min,
        "s_max": s_max,
        "s_min": s_min,
        "sal_acc": drop if abs(drop) > abs(rise) else rise,
        "loss0": loss0,
        "acc0": acc0,
    }


LAYERS = ["stem", "conv1", "conv2", "shortcut", "head.1", "head.3"]


def test_measured_layers_are_conv_and_linear_weights() -> None:
    model = make_model()
    assert measured_layers(model) == LAYERS
    assert measured_layers(model, r"^conv") == ["conv1", "conv2"]
    assert measured_layers(model, ["head.3", "stem"]) == ["head.3", "stem"]
    assert measured_layers(model, lambda n: n.startswith("head")) == ["head.1", "head.3"]
    with pytest.raises(ValueError, match="bn"):
        measured_layers(model, ["bn"])
    with pytest.raises(ValueError, match="no measured layer"):
        measured_layers(model, "nothing-matches")


@pytest.mark.parametrize(
    ("batch", "steps", "cache", "pair"),
    [
        (16, None, True, False),  # one pass over 3 batches per iteration, separate evaluation
        (16, 2, True, False),  # 2 steps per iteration, cycling through the batches
        (48, 3, True, False),  # one batch: evaluation taken from the next step's forward pass
        (16, None, False, False),  # the whole model, no caching
        (48, 3, False, False),
        # descent and ascent vectorised together
        (16, None, True, True),
        (48, 3, True, True),
        (16, 2, False, True),
    ],
)
def test_agrees_with_published_procedure(
    batch: int, steps: int | None, cache: bool, pair: bool
) -> None:
    model = make_model()
    batches = make_batches(batch=batch)
    # a large lr so the projection is active and the chains move far; different learning
    # rates so a paired run that mixed up the two chains' steps would show
    settings = SALSettings(
        iters=4,
        lr_min=0.5,
        lr_max=0.3,
        steps_per_iter=steps,
        cache_prefix=cache,
        pair_directions=pair,
    )
    records = compute_sal(model, batches, settings=settings)
    assert [r.layer for r in records] == LAYERS
    assert all(r.cached == cache for r in records)
    for r in records:
        expected = naive_sal(model, batches, r.layer, settings)
        for key, value in expected.items():
            assert getattr(r, key) == pytest.approx(value, abs=1e-5), (r.layer, key)
        assert r.numel == model.get_submodule(r.layer).weight.numel()
        assert r.s_max >= 0 and r.s_min >= 0 and r.seconds > 0
    # the measurement moved something: not all SAL values are zero
    assert max(abs(r.sal) for r in records) > 1e-3


def test_cached_equals_whole_model() -> None:
    model = make_model()
    batches = make_batches()
    s = SALSettings(iters=3, steps_per_iter=2)
    cached = compute_sal(model, batches, settings=s)
    full = compute_sal(
        model, batches, settings=SALSettings(iters=3, steps_per_iter=2, cache_prefix=False)
    )
    assert [r.cached for r in cached] == [True] * len(LAYERS)
    for a, b in zip(cached, full, strict=True):
        assert a.layer == b.layer
        assert a.sal == pytest.approx(b.sal, abs=1e-6)
        assert a.sal_acc == pytest.approx(b.sal_acc, abs=1e-9)


def test_untraceable_model_falls_back_to_whole_model() -> None:
    model = make_model(Untraceable)
    batches = make_batches()
    s = SALSettings(iters=2, steps_per_iter=2)
    records = compute_sal(model, batches, ["conv2", "head.3"], settings=s)
    assert not any(r.cached for r in records)
    for r in records:
        assert r.sal == pytest.approx(naive_sal(model, batches, r.layer, s)["sal"], abs=1e-5)


def test_pairing_falls_back_where_vmap_cannot_batch() -> None:
    model = make_model(BranchesOnActivations)
    batches = make_batches()
    s = SALSettings(iters=2, steps_per_iter=2, lr_min=0.5, lr_max=0.5, pair_directions=True)
    with pytest.warns(UserWarning, match="SAL of stem: descent and ascent cannot be vectorised"):
        (record,) = compute_sal(model, batches, ["stem"], settings=s)
    assert not record.cached
    expected = naive_sal(model, batches, "stem", s)
    assert record.s_max == pytest.approx(expected["s_max"], abs=1e-5)
    assert record.s_min == pytest.approx(expected["s_min"], abs=1e-5)


def test_suffix_that_mutates_a_cached_value_falls_back() -> None:
    model = make_model(MutatesCache)
    batches = make_batches()
    s = SALSettings(iters=2, steps_per_iter=2, lr_min=0.5, lr_max=0.5)
    (record,) = compute_sal(model, batches, ["c2"], settings=s)
    assert not record.cached
    assert record.sal == pytest.approx(naive_sal(model, batches, "c2", s)["sal"], abs=1e-5)


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "training": {n: m.training for n, m in model.named_modules()},
    }


def _assert_same(before: dict, after: dict) -> None:
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k
    for k, g in before["grad"].items():
        if g is None:
            assert after["grad"][k] is None, k
        else:
            assert torch.equal(g, after["grad"][k]), k


@pytest.mark.parametrize("chain_group", [1, "all"])  # one layer at a time; all batched
@pytest.mark.parametrize("context", ["grad", "no_grad", "inference_mode"])
def test_model_left_exactly_as_found(context: str, chain_group: int | str) -> None:
    model = make_model()
    model.train()
    model.head.eval()  # a mixed state must come back as it was
    model.stem.weight.requires_grad_(False)
    model.conv1.weight.grad = torch.full_like(model.conv1.weight, 0.25)  # other .grad stay None
    batches = make_batches()
    before = _snapshot(model)
    torch.manual_seed(123)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.manual_seed_all(321)
        cuda_state = torch.cuda.get_rng_state_all()
    cpu_state = torch.get_rng_state()
    expected_next = torch.rand(3)
    torch.set_rng_state(cpu_state)
    ctx = {
        "grad": torch.enable_grad,
        "no_grad": torch.no_grad,
        "inference_mode": torch.inference_mode,
    }
    with ctx[context]():
        settings = SALSettings(iters=2, steps_per_iter=2, chain_group=chain_group)
        records = compute_sal(model, batches, settings=settings)
        first_order_sal(model, batches)
    assert all(isinstance(r, LayerSAL) for r in records)
    assert any(r.cached for r in records) == (chain_group == 1)  # "all": the grouped path ran
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert torch.equal(torch.rand(3), expected_next)
    if cuda:
        assert all(
            torch.equal(a, b)
            for a, b in zip(torch.cuda.get_rng_state_all(), cuda_state, strict=True)
        )
    _assert_same(before, _snapshot(model))


def test_values_do_not_depend_on_training_mode() -> None:
    """BN runs on its running statistics whatever mode the model was in."""
    model = make_model()
    batches = make_batches()
    s = SALSettings(iters=2, steps_per_iter=1)
    model.eval()
    in_eval = compute_sal(model, batches, settings=s)
    model.train()
    in_train = compute_sal(model, batches, settings=s)
    assert [r.sal for r in in_eval] == [r.sal for r in in_train]


def test_settings_are_validated() -> None:
    for bad in ({"eps": 0.0}, {"iters": 0}, {"lr_min": -1.0}, {"steps_per_iter": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SALSettings(**bad)
    with pytest.raises(ValueError, match="probe batch"):
        compute_sal(make_model(), [])


def test_first_order_estimate_is_eps_weight_norm_grad_norm() -> None:
    model = make_model()
    batches = make_batches()
    estimate = first_order_sal(model, batches, eps=0.05)
    assert list(estimate) == LAYERS
    reference = copy.deepcopy(model).eval()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    F.cross_entropy(reference(x), y).backward()
    for name, value in estimate.items():
        w = reference.get_submodule(name).weight
        assert value == pytest.approx(0.05 * w.norm().item() * w.grad.norm().item(), rel=1e-4)


def test_spearman_known_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: ranks (1.5, 1.5, 3) vs (1, 2, 3) -> rho = sqrt(3)/2
    assert spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(3**0.5 / 2)
    assert spearman([1, 1, 1], [1, 2, 3]) != spearman([1, 1, 1], [1, 2, 3])  # nan


def test_spearman_of_constant_or_short_input_is_nan_without_a_warning() -> None:
    """Every layer flat (all SAL 0) is no ranking: nan, and no scipy warning per checkpoint."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(spearman([0.0, 0.0, 0.0], [0.1, 0.2, 0.3]))
        assert math.isnan(spearman([0.1, 0.2, 0.3], [2.0, 2.0, 2.0]))
        assert math.isnan(spearman([0.5], [0.7]))
        assert math.isnan(spearman([0.1, float("nan"), 0.3], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="one length"):
        spearman([1.0, 2.0], [1.0, 2.0, 3.0])
