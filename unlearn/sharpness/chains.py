"""One layer's SAL: its descent and ascent chains, and the types of a SAL evaluation.

The procedure is the one described in :mod:`unlearn.sharpness.sal`, whose
:func:`~unlearn.sharpness.sal.compute_sal` measures every layer through :func:`_layer_sal`
(one layer at a time) or :mod:`unlearn.sharpness.batched` (several layers per call). Both
build on this module, which imports neither.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from unlearn.errors import ConfigError
from unlearn.loss_types import MeanLoss
from unlearn.pgd import project_to_ball
from unlearn.sharpness.prefix_cache import FullRunner, SuffixRunner

Batch = tuple[Tensor, Tensor]
CorrectFn = Callable[[Any, Tensor], Tensor | float | int]
LayerFilter = str | Sequence[str] | Callable[[str], bool] | None

#: Module types whose ``weight`` is measured (biases and norm layers are not).
MEASURED_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of logits ``[B, C, ...]`` against class indices ``[B, ...]``."""
    return F.cross_entropy(outputs, targets)


def top1_correct(outputs: Tensor, targets: Tensor) -> Tensor:
    """Number of samples whose arg-max logit (dim 1) equals the target."""
    return (outputs.argmax(dim=1) == targets).sum()


#: The named values of ``SALSettings.chain_group`` (besides an integer >= 1).
CHAIN_GROUPS: tuple[str, ...] = ("all", "auto")


def check_chain_group(value: object) -> None:
    """Refuse a ``chain_group`` that is neither an integer >= 1 nor one of :data:`CHAIN_GROUPS`.

    Raises:
        ConfigError: One line naming ``SALSettings.chain_group`` and the value found.
    """
    # bool is an int in Python, but `chain_group: true` is a typo rather than a group of 1
    integer = isinstance(value, int) and not isinstance(value, bool)
    if (integer and value >= 1) or value in CHAIN_GROUPS:
        return
    raise ConfigError(
        f"SALSettings.chain_group must be an integer >= 1, 'all' or 'auto', got {value!r}"
    )


@dataclass(frozen=True)
class SALSettings:
    """Settings of one SAL evaluation.

    Attributes:
        eps: Radius of the ball around W0, relative to ``||W0||_2``.
        iters: Number of iterations (SGD steps, projection, evaluation) per direction.
        lr_min: SGD learning rate of the descent chain.
        lr_max: SGD learning rate of the ascent chain.
        steps_per_iter: SGD steps per iteration, each on the next probe batch (cycling);
            ``None`` is one pass over the probe batches.
        cache_prefix: Cache the activations that do not depend on the measured layer and
            recompute only the rest (falls back to the whole model where the model cannot
            be traced or split).
        pair_directions: Run the descent and ascent chains together, the two weights
            stacked and the forward pass vectorised with ``torch.func.vmap`` (falls back
            to one chain after the other, with a warning, where the model cannot be
            vectorised). Same values; faster where one forward pass does not fill the
            device (small probe batches on a GPU), slower on a CPU (see docs/sal_ud.md).
        chain_group: How many layers' chains (both directions each) run together, as one
            vectorised whole-model call per SGD step (:mod:`unlearn.sharpness.batched`):
            ``1``, one layer after the other (the prefix cache and ``pair_directions`` as
            set); ``k > 1``, groups of ``k`` layers in model order; ``"all"``, every measured
            layer in one group; ``"auto"``, the largest group whose estimated memory fits in
            half the free memory of the device (see
            :func:`~unlearn.sharpness.batched.group_size`). Same values whatever the
            grouping; a group that ``vmap`` cannot batch runs one layer at a time, with a
            warning.
    """

    eps: float = 0.05
    iters: int = 10
    lr_min: float = 0.1
    lr_max: float = 0.1
    steps_per_iter: int | None = None
    cache_prefix: bool = True
    pair_directions: bool = False
    chain_group: int | str = 1

    def __post_init__(self) -> None:
        """Reject values that cannot define a measurement."""
        check_chain_group(self.chain_group)
        if not self.eps > 0:
            raise ValueError(f"SALSettings.eps must be > 0, got {self.eps}")
        if self.iters < 1:
            raise ValueError(f"SALSettings.iters must be >= 1, got {self.iters}")
        if self.lr_min < 0 or self.lr_max < 0:
            raise ValueError(
                f"SALSettings.lr_min/lr_max must be >= 0, got {self.lr_min}, {self.lr_max}"
            )
        if self.steps_per_iter is not None and self.steps_per_iter < 1:
            raise ValueError(f"SALSettings.steps_per_iter must be >= 1, got {self.steps_per_iter}")


@dataclass
class LayerSAL:
    """SAL of one layer at one checkpoint.

    Attributes:
        layer: Qualified module name, e.g. ``"layer1.0.conv1"``.
        numel: Number of entries of the measured weight.
        sal: SAL on the loss (``s_max`` or ``s_min``, whichever is larger in magnitude).
        s_max: Highest loss reached by ascent minus L0 (>= 0).
        s_min: L0 minus the lowest loss reached by descent (>= 0).
        sal_acc: Accuracy variant, a fraction (``acc_drop`` or ``acc_rise``).
        acc_rise: Accuracy at the lowest loss minus ``acc0``.
        acc_drop: ``acc0`` minus the accuracy at the highest loss.
        loss0: Mean probe loss at the unperturbed weights (L0).
        acc0: Probe accuracy at the unperturbed weights, a fraction.
        seconds: Wall time spent on this layer, caching included.
        cached: Whether the frozen part's activations were cached for this layer.
    """

    layer: str
    numel: int
    sal: float
    s_max: float
    s_min: float
    sal_acc: float
    acc_rise: float
    acc_drop: float
    loss0: float
    acc0: float
    seconds: float
    cached: bool

    def as_dict(self) -> dict[str, Any]:
        """The record as a plain dict (one row of a table)."""
        return asdict(self)


def measured_layers(model: nn.Module, layers: LayerFilter = None) -> list[str]:
    """Names of the modules whose weight SAL measures, in module order.

    Args:
        model: The model.
        layers: ``None`` for every Conv and Linear module; a regular expression matched
            with ``re.search`` against the module name; a list of module names (order
            kept, each checked); or a predicate on the name.

    Returns:
        Qualified module names, e.g. ``["conv1", "layer1.0.conv1", ..., "linear"]``.

    Raises:
        ValueError: A listed name is not a measurable module, or nothing is selected.
    """
    candidates = [
        name
        for name, m in model.named_modules()
        if isinstance(m, MEASURED_TYPES) and isinstance(getattr(m, "weight", None), nn.Parameter)
    ]
    if layers is None:
        chosen = candidates
    elif isinstance(layers, str):
        pattern = re.compile(layers)
        chosen = [n for n in candidates if pattern.search(n)]
    elif callable(layers):
        chosen = [n for n in candidates if layers(n)]
    else:
        unknown = [n for n in layers if n not in candidates]
        if unknown:
            raise ValueError(
                f"not measurable layers (no Conv/Linear module with a weight): {unknown}; "
                f"measurable: {candidates}"
            )
        chosen = list(layers)
    if not chosen:
        raise ValueError(f"no measured layer selected by {layers!r}; measurable: {candidates}")
    return chosen


@contextmanager
def model_untouched(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode; restore every module's mode and the RNG streams on exit.

    Also enables autograd (even inside ``torch.inference_mode`` or ``torch.no_grad``).
    """
    modes = [(m, m.training) for m in model.modules()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _project(w: Tensor, w0: Tensor, radius: Tensor) -> Tensor:
    """Project ``w`` onto ``||w - w0|| <= radius``; ``w`` itself (bit-exact) when inside."""
    return project_to_ball(w, w0, radius, "l2", per_sample=False)


class _Probe:
    """The probe batches with the functions that score outputs on them."""

    def __init__(self, batches: Sequence[Batch], loss_fn: MeanLoss, correct_fn: CorrectFn) -> None:
        if len(batches) == 0:
            raise ValueError("SAL needs at least one probe batch")
        # inference tensors (made under torch.inference_mode) cannot be saved for backward
        self.inputs = [x.clone() if x.is_inference() else x for x, _ in batches]
        self.targets = [y.clone() if y.is_inference() else y for _, y in batches]
        self.sizes = [int(y.shape[0]) for y in self.targets]
        self.total = sum(self.sizes)
        self.loss_fn = loss_fn
        self.correct_fn = correct_fn

    def score(self, outputs: Any, b: int) -> tuple[Tensor, float]:
        """Mean loss (a tensor, with graph) and number correct of batch ``b``."""
        loss = self.loss_fn(outputs, self.targets[b])
        with torch.no_grad():
            correct = float(self.correct_fn(outputs, self.targets[b]))
        return loss, correct


#: ``forward(ws, state)``: the model outputs of every member, in member order: ``ws[l]`` is
#: weight ``l``'s stack ``[D, *shape_l]`` (one row per direction), member ``l * D + d`` the
#: model with row ``d`` of ``ws[l]`` in weight ``l``'s place.
StackedForward = Callable[[list[Tensor], Any], list[Any]]

#: One chain's (loss, accuracy) on the probe set after each iteration.
History = list[tuple[float, float]]


def _one_by_one(runner: FullRunner | SuffixRunner) -> StackedForward:
    return lambda ws, state: [runner(ws[0][d], state) for d in range(ws[0].shape[0])]


def _vectorised(runner: FullRunner | SuffixRunner) -> StackedForward:
    batched = torch.func.vmap(runner, in_dims=(0, None))

    def forward(ws: list[Tensor], state: Any) -> list[Any]:
        outputs = batched(ws[0], state)
        return [tree_map(lambda t, d=d: t[d], outputs) for d in range(ws[0].shape[0])]

    return forward


def _chains(
    forward: StackedForward,
    states: Sequence[Any],
    probe: _Probe,
    w0s: Sequence[Tensor],
    directions: Sequence[tuple[float, float]],
    settings: SALSettings,
) -> list[History]:
    """Run independent chains in lockstep: from each weight ``w0s[l]``, one per (lr, sign).

    Weight ``l``'s chains are stacked ``[D, *w0s[l].shape]`` (``D`` directions); each step
    takes one forward pass of every member through ``forward`` on the next state and one
    gradient of the signed losses' sum (the chains do not interact, so each gets its own
    chain's gradient), then each chain is projected onto its own weight's ball.

    Returns:
        Per member (``l * D + d``: weight ``l``, direction ``d``), the (loss, accuracy) on the
        probe set after each iteration.
    """
    steps = settings.steps_per_iter or len(states)
    single = len(states) == 1
    radii = [settings.eps * w0.norm() for w0 in w0s]
    lrs = [
        torch.tensor([lr for lr, _ in directions], dtype=w0.dtype, device=w0.device).view(
            (-1,) + (1,) * w0.dim()
        )
        for w0 in w0s
    ]
    signs = [sign for _, sign in directions] * len(w0s)
    ws = [w0.expand(len(directions), *w0.shape).clone() for w0 in w0s]
    histories: list[History] = [[] for _ in signs]
    cursor = 0
    for k in range(settings.iters):
        for j in range(steps):
            b = cursor % len(states)
            cursor += 1
            ws = [w.requires_grad_(True) for w in ws]
            outputs = forward(ws, states[b])
            if single and j == 0 and k > 0:  # loss at the point projected in iteration k-1
                scores = [probe.score(out, b) for out in outputs]
                for history, (loss, correct) in zip(histories, scores, strict=True):
                    history.append((float(loss.detach()), correct / probe.total))
                losses = [loss for loss, _ in scores]
            else:  # the accuracy is not needed: no synchronising read of it
                losses = [probe.loss_fn(out, probe.targets[b]) for out in outputs]
            objective = sum(sign * loss for sign, loss in zip(signs, losses, strict=True))
            grads = torch.autograd.grad(objective, ws)
            ws = [w.detach() - lr * g for w, lr, g in zip(ws, lrs, grads, strict=True)]
        ws = [
            torch.stack([_project(w[d], w0, radius) for d in range(len(directions))])
            for w, w0, radius in zip(ws, w0s, radii, strict=True)
        ]
        # a single batch is evaluated by the next iteration's first step, except the last
        if not single or k == settings.iters - 1:
            results = _evaluate(forward, states, probe, ws)
            for history, result in zip(histories, results, strict=True):
                history.append(result)
    return histories


@torch.no_grad()
def _evaluate(
    forward: StackedForward, states: Sequence[Any], probe: _Probe, ws: list[Tensor]
) -> History:
    """Mean loss and accuracy over all probe batches of every member, in member order."""
    members = sum(w.shape[0] for w in ws)
    loss_sum = [0.0] * members
    correct = [0.0] * members
    for b, state in enumerate(states):
        for m, out in enumerate(forward(ws, state)):
            loss, c = probe.score(out, b)
            loss_sum[m] += float(loss) * probe.sizes[b]
            correct[m] += c
    return [(ls / probe.total, c / probe.total) for ls, c in zip(loss_sum, correct, strict=True)]


def _descent_and_ascent(
    runner: FullRunner | SuffixRunner,
    states: list[Any],
    probe: _Probe,
    w0: Tensor,
    layer: str,
    settings: SALSettings,
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """The descent and the ascent chain of one layer, paired where the settings ask."""
    descent, ascent = (settings.lr_min, 1.0), (settings.lr_max, -1.0)
    if settings.pair_directions:
        try:
            down, up = _chains(
                _vectorised(runner), states, probe, [w0], [descent, ascent], settings
            )
            return down, up
        except RuntimeError as err:  # an operation vmap cannot batch
            warnings.warn(
                f"SAL of {layer}: descent and ascent cannot be vectorised ({err}); "
                "running them one after the other",
                stacklevel=4,
            )
    forward = _one_by_one(runner)
    (down,) = _chains(forward, states, probe, [w0], [descent], settings)
    (up,) = _chains(forward, states, probe, [w0], [ascent], settings)
    return down, up


def _layer_sal(
    model: nn.Module,
    gm: Any,
    layer: str,
    probe: _Probe,
    loss0: float,
    acc0: float,
    reference: Any,
    settings: SALSettings,
) -> LayerSAL:
    start = time.perf_counter()
    param = f"{layer}.weight"
    w0 = model.get_submodule(layer).weight.detach()
    runner: FullRunner | SuffixRunner | None = None
    states: list[Any] = []
    if settings.cache_prefix:
        runner = SuffixRunner.build(gm, layer)
        if runner is not None:
            states = [runner.prepare(x) for x in probe.inputs]
            # Run twice: the second run catches a suffix that mutates a cached value.
            with torch.no_grad():
                same = all(_same_outputs(runner(w0, states[0]), reference) for _ in range(2))
            if not same:
                runner = None
    if runner is None:
        runner = FullRunner(model, param)
        states = [runner.prepare(x) for x in probe.inputs]

    descent, ascent = _descent_and_ascent(runner, states, probe, w0, layer, settings)
    return _record(
        layer,
        w0.numel(),
        descent,
        ascent,
        loss0,
        acc0,
        seconds=time.perf_counter() - start,
        cached=runner.cached,
    )


def _record(
    layer: str,
    numel: int,
    descent: Sequence[tuple[float, float]],
    ascent: Sequence[tuple[float, float]],
    loss0: float,
    acc0: float,
    *,
    seconds: float,
    cached: bool,
) -> LayerSAL:
    """The :class:`LayerSAL` of one layer from its chains' (loss, accuracy) histories."""
    loss_min, acc_at_min = loss0, acc0
    for loss, acc in descent:
        if loss < loss_min:
            loss_min, acc_at_min = loss, acc
    loss_max, acc_at_max = loss0, acc0
    for loss, acc in ascent:
        if loss > loss_max:
            loss_max, acc_at_max = loss, acc
    s_max, s_min = loss_max - loss0, loss0 - loss_min
    rise, drop = acc_at_min - acc0, acc0 - acc_at_max
    return LayerSAL(
        layer=layer,
        numel=numel,
        sal=s_max if abs(s_max) > abs(s_min) else s_min,
        s_max=s_max,
        s_min=s_min,
        sal_acc=drop if abs(drop) > abs(rise) else rise,
        acc_rise=rise,
        acc_drop=drop,
        loss0=loss0,
        acc0=acc0,
        seconds=seconds,
        cached=cached,
    )


def _same_outputs(a: Any, b: Any) -> bool:
    """Whether two model outputs (tensors or nested tuples/lists/dicts of them) agree."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_outputs(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_outputs(a[k], b[k]) for k in a)
    return a == b
