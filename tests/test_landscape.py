"""Loss-landscape building blocks against closed forms: surfaces, PCA, filter normalisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearn.errors import UnlearnError
from unlearn.landscape import (
    LossEvaluator,
    ParameterSpace,
    RunTrajectory,
    compare_parameters,
    fit_pca,
    grid_coordinates,
    normalise_direction,
    random_direction,
    surface_1d,
    surface_2d,
)


def _least_squares(n: int = 37, d: int = 5) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=generator)
    y = x @ torch.randn(d, generator=generator) + 0.3 * torch.randn(n, generator=generator)
    model = nn.Linear(d, 1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=generator))
        model.bias.fill_(0.5)
    return model, x, y


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs.squeeze(1), targets)


def _analytic(x, y, origin, dx, dy, a, b) -> torch.Tensor:
    """mean((X w + c - y)^2) at origin + a dx + b dy, expanded as a quadratic in (a, b)."""
    x, y = x.double(), y.double()

    def residual_part(vector: torch.Tensor) -> torch.Tensor:  # [weight (d), bias]
        return x @ vector[:-1].double() + vector[-1].double()

    r0 = residual_part(origin) - y
    u, v = residual_part(dx), residual_part(dy)
    return (
        (r0 * r0).mean()
        + 2 * a * (r0 * u).mean()
        + 2 * b * (r0 * v).mean()
        + a * a * (u * u).mean()
        + 2 * a * b * (u * v).mean()
        + b * b * (v * v).mean()
    )


def test_surface_equals_the_analytic_least_squares_loss() -> None:
    model, x, y = _least_squares()
    space = ParameterSpace.of(model)
    assert space.names == ("weight", "bias")
    # uneven batches: the mean must be weighted by batch size
    batches = [(x[:16], y[:16]), (x[16:32], y[16:32]), (x[32:], y[32:])]
    evaluate = LossEvaluator(model, space, batches, loss_fn=_mse, accuracy=False)
    origin = space.flatten(dict(model.named_parameters())).detach()
    generator = torch.Generator().manual_seed(1)
    dx = random_direction(space, origin, generator, "filter", ignore_biasbn=False)
    dy = random_direction(space, origin, generator, "filter", ignore_biasbn=False)
    xs, ys = grid_coordinates((-1.0, 1.0), 5), grid_coordinates((-0.5, 1.5), 4)

    loss, acc = surface_2d(evaluate, origin, dx, dy, xs, ys)

    assert loss.shape == (4, 5) and torch.isnan(acc).all()
    expected = torch.tensor(
        [[float(_analytic(x, y, origin, dx, dy, float(a), float(b))) for a in xs] for b in ys],
        dtype=torch.float64,
    )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    line, _ = surface_1d(evaluate, origin, dx, xs)
    for i, a in enumerate(xs):
        analytic = float(_analytic(x, y, origin, dx, dy, float(a), 0.0))
        assert line[i].item() == pytest.approx(analytic, rel=1e-5)
    # the model itself was not touched
    torch.testing.assert_close(space.flatten(dict(model.named_parameters())).detach(), origin)


def test_least_squares_optimum_is_the_surface_minimum() -> None:
    model, x, y = _least_squares()
    design = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    solution = torch.linalg.lstsq(design, y.double().unsqueeze(1)).solution.squeeze(1)
    space = ParameterSpace.of(model)
    evaluate = LossEvaluator(model, space, [(x, y)], loss_fn=_mse, accuracy=False)
    origin = solution.float()
    direction = random_direction(space, origin, torch.Generator().manual_seed(2), "layer", False)
    loss, _ = surface_1d(evaluate, origin, direction, grid_coordinates((-1.0, 1.0), 9))
    assert int(loss.argmin()) == 4  # alpha = 0
    # a quadratic: second differences are constant
    second = loss[2:] - 2 * loss[1:-1] + loss[:-2]
    torch.testing.assert_close(second, second.mean().expand_as(second), rtol=1e-3, atol=1e-6)


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


@pytest.mark.parametrize("ignore_biasbn", [True, False])
def test_filter_normalisation_matches_each_filters_norm(ignore_biasbn: bool) -> None:
    model = _ConvNet()
    space = ParameterSpace.of(model)
    weights = dict(model.named_parameters())
    origin = space.flatten(weights).detach()
    direction = space.unflatten(
        random_direction(space, origin, torch.Generator().manual_seed(0), "filter", ignore_biasbn)
    )
    for name, w in weights.items():
        d = direction[name]
        if w.dim() > 1:
            torch.testing.assert_close(d.flatten(1).norm(dim=1), w.detach().flatten(1).norm(dim=1))
        elif ignore_biasbn:
            assert torch.count_nonzero(d) == 0, name
        else:
            torch.testing.assert_close(d, w.detach())


def test_layer_normalisation_and_same_seed_same_raw_direction() -> None:
    model = _ConvNet()
    weights = {n: p.detach() for n, p in model.named_parameters()}
    raw = {n: torch.randn_like(w) for n, w in weights.items()}
    layer = normalise_direction(raw, weights, norm="layer")
    assert layer["conv.weight"].norm() == pytest.approx(float(weights["conv.weight"].norm()))
    unchanged = normalise_direction(raw, weights, norm="none")
    torch.testing.assert_close(unchanged["fc.weight"], raw["fc.weight"])
    # the same seed gives directions that differ only by the per-filter scale
    space = ParameterSpace.of(model)
    origin = space.flatten(weights)
    a = random_direction(space, origin, torch.Generator().manual_seed(5), "none", True)
    b = random_direction(space, 2 * origin, torch.Generator().manual_seed(5), "none", True)
    torch.testing.assert_close(a, b)


def test_parameter_space_round_trip_and_names() -> None:
    model = _ConvNet()
    space = ParameterSpace.of(model)
    vector = torch.arange(space.size, dtype=torch.float32)
    assert space.size == sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(space.flatten(space.unflatten(vector)), vector)
    assert space.coordinate_name(0) == "conv.weight[0, 0, 0, 0]"
    assert space.coordinate_name(space.size - 1) == "fc.bias[3]"
    assert space.coordinate_name(3 * 9 + 1) == "conv.weight[1, 0, 0, 1]"


def _batches(n: int = 20) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(n, 3, 6, 6, generator=generator) * 2 + 1
    y = torch.randint(0, 4, (n,), generator=generator)
    return [(x[:8], y[:8]), (x[8:16], y[8:16]), (x[16:], y[16:])]


def test_batch_norm_eval_and_recompute() -> None:
    model = _ConvNet().eval()
    batches = _batches()
    space = ParameterSpace.of(model)
    origin = space.flatten(dict(model.named_parameters())).detach()
    before = {n: b.clone() for n, b in model.named_buffers()}

    eval_loss, eval_acc = LossEvaluator(model, space, batches, bn="eval")(origin)
    recomputed_loss, _ = LossEvaluator(model, space, batches, bn="recompute")(origin)

    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        assert eval_loss == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-5)
        assert eval_acc == pytest.approx(float((model(x).argmax(1) == y).float().mean()))
        # reference: fresh statistics as a cumulative average over the same batches
        reference = _ConvNet()
        reference.load_state_dict(model.state_dict())
        reference.bn.reset_running_stats()
        reference.bn.momentum = None
        reference.train()
        for inputs, _ in batches:
            reference(inputs)
        reference.eval()
        expected = float(F.cross_entropy(reference(x), y))
    assert recomputed_loss == pytest.approx(expected, rel=1e-5)
    assert abs(recomputed_loss - eval_loss) > 1e-3  # the inputs are far from N(0, 1)
    # neither mode changed the model's buffers or modes
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(buffer, before[name])
    assert not model.training and model.bn.momentum == 0.1


def _trajectory(name: str, points: torch.Tensor, space: ParameterSpace) -> RunTrajectory:
    steps = torch.arange(points.shape[0]) * 10
    return RunTrajectory(name, space, points, steps, steps // 20, [{}] * len(steps), [])


def test_pca_recovers_a_straight_trajectory() -> None:
    generator = torch.Generator().manual_seed(0)
    size = 300
    start = torch.randn(size, generator=generator)
    u = torch.randn(size, generator=generator)
    u /= u.norm()
    t = torch.linspace(0, 3, 12)
    points = start + t[:, None] * u + 1e-5 * torch.randn(12, size, generator=generator)

    basis = fit_pca([points], origin=points[-1])

    assert basis.components.shape == (2, size)
    assert abs(float(basis.components[0].double() @ u.double())) > 0.9999
    assert float(basis.explained_variance_ratio[0]) > 0.9999
    torch.testing.assert_close(
        basis.components @ basis.components.T, torch.eye(2, dtype=torch.float64)
    )
    coords = basis.project(points)
    # signed so that the path starts on the negative side and ends at the origin
    torch.testing.assert_close(coords[:, 0], (t - 3).double(), atol=1e-3, rtol=0)
    assert coords[-1].abs().max() < 1e-3


def test_shared_pca_basis_spans_two_runs() -> None:
    generator = torch.Generator().manual_seed(1)
    size = 200
    start = torch.randn(size, generator=generator)
    u, v = torch.linalg.qr(torch.randn(size, 2, generator=generator)).Q.T
    t = torch.linspace(0, 1, 8)[:, None]
    clean = start + 2 * t * u
    poisoned = start + 2 * t * u + t * v  # same start, diverges along v

    basis = fit_pca([clean, poisoned], origin=clean[-1])

    assert float(basis.explained_variance_ratio.sum()) == pytest.approx(1.0, abs=1e-6)
    # the plane contains both directions: projecting u and v loses nothing
    for w in (u, v):
        projected = basis.components.T @ (basis.components @ w.double())
        torch.testing.assert_close(projected, w.double(), atol=1e-6, rtol=0)
    with pytest.raises(UnlearnError, match="at least 3 checkpoints"):
        fit_pca([clean[:2]], origin=clean[-1])


def test_compare_parameters_finds_the_coordinate_that_moved_differently() -> None:
    model = _ConvNet()
    space = ParameterSpace.of(model)
    generator = torch.Generator().manual_seed(2)
    start = torch.randn(space.size, generator=generator)
    drift = torch.randn(space.size, generator=generator) * 0.01
    t = torch.linspace(0, 1, 6)[:, None]
    clean = start + t * drift
    poisoned = clean.clone()
    key = space.names.index("fc.weight")
    offset = sum(space.numels[:key]) + 7  # fc.weight[1, 1]
    poisoned[:, offset] += t[:, 0] * 2.0
    poisoned[:, offset + 1] += t[:, 0] * 0.5

    comparison = compare_parameters(
        _trajectory("clean", clean, space), _trajectory("em", poisoned, space), top_k=3
    )

    assert comparison.top.tolist()[:2] == [offset, offset + 1]
    assert comparison.names[0] == "fc.weight[1, 1]"
    assert comparison.paths_a.shape == (6, 3)
    torch.testing.assert_close(
        comparison.paths_b[:, 0] - comparison.paths_a[:, 0], 2 * t[:, 0].double()
    )
    assert float(comparison.cumulative_share[1]) == pytest.approx(1.0)
    assert comparison.coordinates_for_share(0.9) == 1
    assert float(comparison.tensor_share[key]) == pytest.approx(1.0)
