"""Batched SAL chains (``SALSettings.chain_group``): the same values as one layer at a time and
as the literal published procedure; the grouping, the fallback, side effects, the setting."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
from test_sharpness import (
    BranchesOnActivations,
    TinyResNet,
    make_batches,
    make_model,
    naive_sal,
)
from torch import nn

from unlearn.callbacks.sharpness import SharpnessCallback, SharpnessCallbackError
from unlearn.errors import UnlearnError
from unlearn.models import LeNet5, SmallCNN
from unlearn.sharpness import LayerSAL, SALSettings, compute_sal
from unlearn.sharpness import batched as batched_module
from unlearn.sharpness.batched import saved_activation_bytes
from unlearn.sharpness.sal import _Probe, cross_entropy, top1_correct

#: The values compared with the one-layer-at-a-time path and the literal procedure.
KEYS = ("sal", "s_max", "s_min", "sal_acc", "loss0")

#: Test models on the 8x8 one-channel, 4-class probe of ``make_batches``.
MODELS = {
    "small_cnn": functools.partial(SmallCNN, 4, (1, 8, 8), width=4),  # conv-BN-ReLU stages
    "lenet": functools.partial(LeNet5, 4, (1, 8, 8)),  # no batch norm, 5 layers
    "resnet": TinyResNet,  # batch norm and a residual shortcut
}


def settings(steps: int | None, chain_group: int | str = 1, **kw) -> SALSettings:
    # a large lr so the projection is active, different lrs so mixed-up members would show
    return SALSettings(
        iters=3, lr_min=0.5, lr_max=0.3, steps_per_iter=steps, chain_group=chain_group, **kw
    )


@pytest.fixture
def plenty_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """``"auto"`` on this CPU as on a device with 1 TB free: every layer fits in one group."""
    monkeypatch.setattr(batched_module, "free_bytes", lambda device: 1 << 40)


def _close(a: LayerSAL, expected: dict[str, float], what: str) -> None:
    for key in KEYS:
        assert getattr(a, key) == pytest.approx(expected[key], abs=1e-5), (a.layer, key, what)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize(
    ("batch", "steps"),
    [
        (16, None),  # 3 batches, one pass per iteration, separate evaluation passes
        (16, 2),  # 3 batches, 2 steps per iteration, cycling
        (48, None),  # one batch: the evaluation is the next iteration's first step
        (48, 2),  # one batch, 2 steps per iteration
    ],
)
@pytest.mark.usefixtures("plenty_of_memory")
def test_grouped_equals_one_at_a_time_and_the_published_procedure(
    model_name: str, batch: int, steps: int | None
) -> None:
    model = make_model(MODELS[model_name])
    batches = make_batches(batch=batch)
    today = compute_sal(model, batches, settings=settings(steps))
    layers = [r.layer for r in today]
    literal = {name: naive_sal(model, batches, name, settings(steps)) for name in layers}
    for group in (2, 3, "all", "auto"):
        records = compute_sal(model, batches, settings=settings(steps, group))
        assert [r.layer for r in records] == layers, group
        size = len(layers) if group in ("all", "auto") else group
        for i, (r, one) in enumerate(zip(records, today, strict=True)):
            _close(r, one.as_dict(), f"chain_group {group} vs 1")
            _close(r, literal[r.layer], f"chain_group {group} vs the published procedure")
            assert r.acc_rise == pytest.approx(one.acc_rise, abs=1e-9)
            assert r.acc_drop == pytest.approx(one.acc_drop, abs=1e-9)
            assert r.numel == one.numel and r.acc0 == one.acc0
            # a layer alone in the last group runs the one-layer path, prefix cache and all
            alone = len(layers) % size == 1 and i == len(layers) - 1
            assert r.cached is (one.cached if alone else False), (group, r.layer)
            assert r.seconds > 0
    # the chains moved: the largest SAL is at least 50 times the tolerance of the comparison
    assert max(abs(r.sal) for r in today) > 5e-4


class DictOutput(nn.Module):
    """A model whose output is a dict (logits and features), scored by its own functions."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyResNet()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        return {"logits": logits, "probs": logits.softmax(1)}


class Logits(nn.Module):
    """``DictOutput``'s logits, for the literal procedure (which scores a tensor)."""

    def __init__(self, model: DictOutput) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["logits"]


def test_dict_outputs_grouped(plenty_of_memory: None) -> None:
    model = make_model(DictOutput)
    batches = make_batches(batch=16)

    def loss_fn(out: dict, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out["logits"], y)

    def correct_fn(out: dict, y: torch.Tensor) -> torch.Tensor:
        return (out["probs"].argmax(1) == y).sum()

    kw = {"loss_fn": loss_fn, "correct_fn": correct_fn}
    today = compute_sal(model, batches, settings=settings(2), **kw)
    grouped = compute_sal(model, batches, settings=settings(2, "all"), **kw)
    wrapped = Logits(model)
    for r, one in zip(grouped, today, strict=True):
        assert r.layer == one.layer and not r.cached
        _close(r, one.as_dict(), "dict outputs, all vs 1")
        _close(r, naive_sal(wrapped, batches, f"model.{r.layer}", settings(2)), "vs literal")


def test_layers_in_any_order_and_repeated(plenty_of_memory: None) -> None:
    """Records come back in the order asked, a layer asked twice twice, grouped in model order."""
    model = make_model()
    batches = make_batches(batch=48)
    asked = ["head.3", "stem", "conv1", "stem"]
    grouped = compute_sal(model, batches, asked, settings=settings(None, 2))
    today = compute_sal(model, batches, asked, settings=settings(None))
    assert [r.layer for r in grouped] == asked
    assert grouped[1] is not grouped[3] and grouped[1] == grouped[3]
    for r, one in zip(grouped, today, strict=True):
        _close(r, one.as_dict(), "order")
    # groups of 2 in model order: (stem, conv1) then head.3 alone (the one-layer path)
    assert [r.cached for r in grouped] == [True, False, False, False]
    assert grouped[1].seconds == grouped[2].seconds  # the group's time split evenly


class ItemOnOutput(TinyResNet):
    """Calls ``.item()`` on a value computed from every layer: vmap can batch no group."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if out.abs().max().item() > 1e6:
            out = out * 0.0
        return out


def test_a_model_vmap_cannot_batch_warns_once_and_gives_the_same_values() -> None:
    model = make_model(ItemOnOutput)
    batches = make_batches(batch=16)
    s = settings(2, 2)
    with pytest.warns(UserWarning) as caught:
        records = compute_sal(model, batches, settings=s)
    notes = [str(w.message) for w in caught if "chain_group" in str(w.message)]
    assert len(notes) == 1, notes
    assert notes[0].startswith("SAL of ItemOnOutput: chain_group 2 cannot vectorise the groups")
    assert "stem..conv1; conv2..shortcut; head.1..head.3" in notes[0]
    today = compute_sal(model, batches, settings=settings(2))
    for r, one in zip(records, today, strict=True):
        _close(r, one.as_dict(), "fallback vs 1")
        _close(r, naive_sal(model, batches, r.layer, s), "fallback vs literal")


def test_only_the_groups_vmap_cannot_batch_fall_back() -> None:
    """Branching on the stem's output fails only for the group holding the stem."""
    model = make_model(BranchesOnActivations)
    batches = make_batches(batch=48)
    s = settings(None, 2)
    with pytest.warns(UserWarning, match="cannot vectorise the groups stem..conv1 ") as caught:
        records = compute_sal(model, batches, settings=s)
    (note,) = [str(w.message) for w in caught if "chain_group" in str(w.message)]
    assert "conv2" not in note and "head" not in note
    for r in records:
        _close(r, naive_sal(model, batches, r.layer, s), "partial fallback vs literal")


@pytest.mark.parametrize("bad", [0, -1, "many", True, 2.5, None, "ALL"])
def test_bad_chain_group_is_refused_in_one_line(bad: object) -> None:
    with pytest.raises(UnlearnError, match="chain_group") as err:
        SALSettings(chain_group=bad)
    assert isinstance(err.value, ValueError)  # callers that catch ValueError still do
    assert "\n" not in str(err.value) and repr(bad) in str(err.value)
    with pytest.raises(SharpnessCallbackError, match="chain_group"):
        SharpnessCallback(chain_group=bad)


def test_good_chain_groups_are_accepted_and_passed_through() -> None:
    for good in (1, 2, 7, "all", "auto"):
        assert SALSettings(chain_group=good).chain_group == good
        assert SharpnessCallback(chain_group=good).monitor.settings.chain_group == good
    assert SALSettings().chain_group == 1
    # the grouping gives the same values, so it is not a setting that sal.json compares
    assert "chain_group" not in SharpnessCallback(chain_group="all").settings_record()


def _linear_stack() -> nn.Module:
    """Four bias-free linear layers with weights of 256, 256, 256 and 128 bytes (float32)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 8, bias=False),
        nn.ReLU(),
        nn.Linear(8, 8, bias=False),
        nn.ReLU(),
        nn.Linear(8, 8, bias=False),
        nn.ReLU(),
        nn.Linear(8, 4, bias=False),
    )


@pytest.mark.parametrize(
    ("free", "groups"),
    [
        # Estimate of a group of k layers: 2k * (2 * saved + 3 * its weights' bytes), with
        # saved = 1000 bytes; auto takes the largest k whose every group fits in free / 2.
        # k=4: 8 * (2000 + 3 * 896) = 37504; k=3: 6 * (2000 + 3 * 768) = 25824 (the group
        # of 3), k=2: 4 * (2000 + 3 * 512) = 14144 (the first pair).
        (2 * 37504, [[0, 1, 2, 3]]),
        (2 * 37503, [[0, 1, 2], [3]]),
        (2 * 25824, [[0, 1, 2], [3]]),
        (2 * 25823, [[0, 1], [2, 3]]),
        (2 * 14144, [[0, 1], [2, 3]]),
        (2 * 14143, [[0], [1], [2], [3]]),
        (None, [[0], [1], [2], [3]]),  # memory unknown (any device but CUDA): one at a time
    ],
)
def test_auto_takes_the_largest_group_that_fits(
    monkeypatch: pytest.MonkeyPatch, free: int | None, groups: list[list[int]]
) -> None:
    monkeypatch.setattr(batched_module, "free_bytes", lambda device: free)
    monkeypatch.setattr(batched_module, "saved_activation_bytes", lambda *a: 1000)
    model = _linear_stack()
    g = torch.Generator().manual_seed(2)
    batches = [(torch.rand(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g))]
    records = compute_sal(model, batches, settings=settings(None, "auto"))
    today = compute_sal(model, batches, settings=settings(None))
    for r, one in zip(records, today, strict=True):
        _close(r, one.as_dict(), f"auto with {free} bytes free")
    for group in groups:
        # a grouped layer is not cached and shares its group's evenly split time
        members = [records[i] for i in group]
        assert all(r.cached is (len(group) == 1) for r in members), (free, group)
        assert len({r.seconds for r in members}) == 1
    firsts = [records[group[0]].seconds for group in groups]
    assert len(set(firsts)) == len(groups)  # different groups were timed apart


def test_saved_activation_bytes_by_hand() -> None:
    """Linear(8, 8) - ReLU - Linear(8, 4), bias-free, both weights requiring a gradient.

    The backward needs the input of the first linear (for its weight's gradient, B * 8
    floats), the ReLU's output (B * 8, also the second linear's input, the same storage)
    and the second weight (for the gradient of its input, 32 floats): (16 B + 32) * 4 bytes.
    With only the second weight measured, its input alone (B * 8 floats).
    """
    model = nn.Sequential(nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 4, bias=False))
    model.eval()
    for batch in (5, 10):
        x, y = torch.rand(2 * batch, 8)[:batch], torch.randint(0, 4, (batch,))  # x a slice
        probe = _Probe([(x, y)], cross_entropy, top1_correct)
        assert saved_activation_bytes(model, ["0", "2"], probe) == (16 * batch + 32) * 4
        assert saved_activation_bytes(model, ["2"], probe) == 8 * batch * 4
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_chain_group_one_is_the_one_layer_path() -> None:
    """The default never enters the grouped engine (its values, caching and timing kept)."""
    model = make_model()
    batches = make_batches()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = compute_sal(model, batches, settings=settings(2))
    assert all(r.cached for r in records)
    assert len({r.seconds for r in records}) == len(records)
