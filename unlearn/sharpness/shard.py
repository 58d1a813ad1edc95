"""Split the measured layers across processes so that each does about the same work.

The work of one layer is dominated by its SGD steps, each a forward pass of the part of the
model that depends on the layer plus a backward pass down to it; :func:`layer_costs` counts
those FLOPs on one sample (``torch.utils.flop_counter``), which is deterministic, so every
process computes the same split without communicating. The units split are layer names, or
in a multi-task run ``(task, layer)`` pairs (:data:`Unit`); :func:`gather_rows` collects every
process's results.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from unlearn.sharpness.prefix_cache import FullRunner, SuffixRunner, trace
from unlearn.sharpness.sal import model_untouched
from unlearn.sharpness.ud import TASK_COLUMN

#: One unit of SAL work: ``(task, layer)``; the task is ``None`` in a single-task run.
Unit = tuple[str | None, str]

_Item = TypeVar("_Item", bound=Hashable)


def layer_costs(model: nn.Module, example: Tensor, layers: Sequence[str]) -> list[float]:
    """FLOPs of one SAL SGD step of each layer on one sample (cached suffix where possible).

    Args:
        model: The model; left as found.
        example: One input batch ``[B, ...]``; only its first sample is used.
        layers: Module names of the measured layers.

    Returns:
        One cost per layer, in the order of ``layers`` (at least 1).
    """
    x = example[:1]
    costs = []
    with model_untouched(model):
        gm = trace(model)
        for name in layers:
            runner = SuffixRunner.build(gm, name) or FullRunner(model, f"{name}.weight")
            state = runner.prepare(x)
            w = model.get_submodule(name).weight.detach().clone().requires_grad_()
            counter = FlopCounterMode(display=False)
            with counter:
                leaves = tree_leaves(runner(w, state))
                loss = sum(t.float().square().mean() for t in leaves if isinstance(t, Tensor))
                torch.autograd.grad(loss, w)
            costs.append(max(float(counter.get_total_flops()), 1.0))
    return costs


def split_layers(layers: Sequence[_Item], costs: Sequence[float], parts: int) -> list[list[_Item]]:
    """Partition ``layers`` into ``parts`` groups of about equal total cost.

    Greedy longest-processing-time: the costliest layer first, each to the least loaded
    group (ties to the lowest index); within a group the original order is kept.

    Args:
        layers: Distinct layer names, or other distinct units such as :data:`Unit` pairs.
        costs: The cost of each, in the same order.
        parts: Number of groups (processes).

    Returns:
        ``parts`` lists of layers (some may be empty when there are fewer layers).
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    load = [0.0] * parts
    owner: dict[_Item, int] = {}
    for i in sorted(range(len(layers)), key=lambda i: (-costs[i], i)):
        part = min(range(parts), key=lambda p: (load[p], p))
        owner[layers[i]] = part
        load[part] += costs[i]
    return [[name for name in layers if owner[name] == p] for p in range(parts)]


def gather_rows(
    rows: list[dict[str, Any]], units: Sequence[Unit], world_size: int
) -> list[dict[str, Any]]:
    """Every process's ``sal.csv`` rows of one checkpoint, in the order of ``units``.

    One ``all_gather_object`` where a process group of ``world_size > 1`` is running;
    otherwise ``rows`` themselves (this process measured every unit, in their order).

    Args:
        rows: This process's rows (keys ``layer`` and, in a multi-task run, ``task``).
        units: Every process's units, in the order the rows should come.
        world_size: Number of processes.
    """
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return rows
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, rows)
    by_unit = {(row.get(TASK_COLUMN), row["layer"]): row for part in gathered for row in part}
    return [by_unit[unit] for unit in units]
