"""Run only the part of a model that depends on one layer, with the frozen rest cached.

While one layer's weight is optimised, every activation that does not depend on that
weight stays the same: the prefix before the layer, but also side branches such as a
residual shortcut that bypasses it. :class:`SuffixRunner` traces the model once with
``torch.fx``, splits the graph for a layer into a *frozen* part (every node that does not
depend on the layer) and a *suffix* (every node that does), runs the frozen part once
per probe batch to cache the values the suffix reads, and afterwards evaluates only the
suffix. :class:`FullRunner` is the fallback: the whole model through
``torch.func.functional_call``. Both replace exactly one weight and share every other
parameter and buffer with the model; neither copies the model.

Caching assumes that the frozen part is deterministic given its inputs, which holds in
eval mode (no dropout, batch norm on running statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.func import functional_call


def _frozen_params(module: nn.Module) -> dict[str, Tensor]:
    """Detached views of every parameter, so no autograd graph builds through them."""
    return {name: p.detach() for name, p in module.named_parameters(remove_duplicate=False)}


class FullRunner:
    """Evaluate the whole model with one weight replaced.

    Args:
        model: The model, in the mode it should be evaluated in.
        param: Qualified name of the replaced weight, e.g. ``"layer1.0.conv1.weight"``.
    """

    cached = False

    def __init__(self, model: nn.Module, param: str) -> None:
        self.model = model
        self.param = param
        self.params = _frozen_params(model)

    def prepare(self, inputs: Tensor) -> Any:
        """Per-batch state for :meth:`__call__`: here the input itself."""
        return inputs

    def __call__(self, weight: Tensor, state: Any) -> Tensor:
        """Model outputs for the batch behind ``state`` with ``param`` set to ``weight``."""
        return functional_call(self.model, {**self.params, self.param: weight}, (state,))


def trace(model: nn.Module) -> fx.GraphModule | None:
    """Symbolically trace ``model``; ``None`` where it cannot be traced.

    The returned GraphModule holds references to the model's own submodules (no copy),
    so the suffix graphs built from it see the live parameters.
    """
    try:
        return fx.symbolic_trace(model)
    except Exception:
        return None


def _split(gm: fx.GraphModule, layer: str) -> tuple[fx.GraphModule, fx.GraphModule] | None:
    """Split ``gm`` into a frozen part and the suffix that depends on module ``layer``.

    Returns:
        ``(frozen, suffix)``: ``frozen(x)`` returns the tuple of boundary values and
        ``suffix(*boundary)`` the model outputs; ``None`` where no node calls ``layer``
        or the output does not depend on it.
    """
    graph = gm.graph
    weight = f"{layer}.weight"
    dep: set[fx.Node] = set()
    for node in graph.nodes:
        is_source = (node.op == "call_module" and node.target == layer) or (
            node.op == "get_attr" and node.target == weight
        )
        if is_source or any(a in dep for a in node.all_input_nodes):
            dep.add(node)
    output = next(n for n in graph.nodes if n.op == "output")
    if output not in dep or any(n.op == "placeholder" for n in dep):
        return None
    boundary: list[fx.Node] = []
    for node in graph.nodes:
        if node in dep:
            for a in node.all_input_nodes:
                if a not in dep and a.op != "get_attr" and a not in boundary:
                    boundary.append(a)

    frozen = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node not in dep and node.op != "output":
            env[node] = frozen.node_copy(node, lambda n: env[n])
    frozen.output(tuple(env[n] for n in boundary))
    frozen_gm = fx.GraphModule(gm, frozen)
    frozen_gm.graph.eliminate_dead_code()  # needs the owning module to judge call_module
    frozen_gm.recompile()

    suffix = fx.Graph()
    env = {n: suffix.placeholder(f"boundary_{i}") for i, n in enumerate(boundary)}
    for node in graph.nodes:
        if node in dep or (node.op == "get_attr" and any(u in dep for u in node.users)):
            env[node] = suffix.node_copy(node, lambda n: env[n])
    return frozen_gm, fx.GraphModule(gm, suffix)


class SuffixRunner:
    """Evaluate only the part of the model that depends on one layer.

    Args:
        gm: The traced model (from :func:`trace`).
        layer: Qualified name of the measured module; its ``weight`` is replaced.
        frozen: The frozen part of the split (see :func:`_split`).
        suffix: The suffix of the split.
    """

    cached = True

    def __init__(
        self, gm: fx.GraphModule, layer: str, frozen: fx.GraphModule, suffix: fx.GraphModule
    ) -> None:
        self.param = f"{layer}.weight"
        self.frozen = frozen
        self.suffix = suffix
        self.params = _frozen_params(suffix)

    @classmethod
    def build(cls, gm: fx.GraphModule | None, layer: str) -> SuffixRunner | None:
        """A runner for ``layer``, or ``None`` where the traced graph cannot be split."""
        if gm is None:
            return None
        split = _split(gm, layer)
        return None if split is None else cls(gm, layer, *split)

    @torch.no_grad()
    def prepare(self, inputs: Tensor) -> Sequence[Any]:
        """Run the frozen part once on a batch: the values the suffix reads."""
        return self.frozen(inputs)

    def __call__(self, weight: Tensor, state: Sequence[Any]) -> Tensor:
        """Model outputs for the batch behind ``state`` with the layer's weight set."""
        return functional_call(self.suffix, {**self.params, self.param: weight}, tuple(state))
