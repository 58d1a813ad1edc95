"""Many layers' SAL chains in one vectorised call per SGD step (``SALSettings.chain_group``).

One layer's chain is a small computation: on a GPU a step of it takes about as long as
launching its kernels, whatever the layer. Here the chains of a *group* of layers
``L1..Lk`` (both directions of each, ``2k`` *members*) run in lockstep: member ``2i`` is
``Li``'s descent chain (``lr_min``, sign +1), member ``2i + 1`` its ascent chain
(``lr_max``, sign -1). Member ``m`` sees its own weight at its own layer and the base
weight ``W0`` at the group's other layers, so each SGD step is one
``torch.func.vmap(functional_call(model, ...))`` over the ``2k`` members on the current probe
batch (each group layer's weight stacked ``[2k, *shape]``), and one gradient of
``sum_m sign_m * loss_m`` with respect to the chains' own weights (the members do not
interact, so each chain gets its own gradient). Only that model call is this module's: the
chains run through the same schedule as one layer at a time (``chains._chains``: the probe
batches' order, projection onto each layer's ball ``eps * ||W0||``, the evaluation passes)
and their SAL through the same ``chains._record``, so the procedure is the one of
:mod:`unlearn.sharpness.sal` (whose module docstring states it) and the values are the same.

The whole model runs every step (no prefix cache), but nothing before a group's first layer
is batched: ``vmap`` computes it once for all members, and no gradient flows through it.
Batch norm runs in eval mode, its buffers shared by all members.

Groups are consecutive layers in model order; ``"auto"`` picks their size from the free
memory of a CUDA device and keeps one layer at a time on any other (:func:`group_size`). A
group of one layer is measured as with ``chain_group: 1`` (prefix cache, ``pair_directions``
as set), and so is a group that ``vmap`` cannot batch (a forward that calls ``.item()``, or
branches on a value computed from a grouped layer), with one warning per call naming them.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_map

from unlearn.sharpness.chains import (
    LayerSAL,
    SALSettings,
    _chains,
    _layer_sal,
    _Probe,
    _record,
)
from unlearn.sharpness.prefix_cache import _frozen_params

#: Fraction of the free device memory that ``chain_group: "auto"`` lets a group use.
MEMORY_FRACTION = 0.5

#: Bytes of the saved activations a member needs per byte saved by one forward pass: the
#: saved tensors themselves and the gradients the backward pass makes of them.
ACTIVATION_FACTOR = 2

#: Bytes per byte of a group's stacked weights: the stack, its gradient, the next step's.
WEIGHT_FACTOR = 3


def grouped_sal(
    model: nn.Module,
    gm: Any,
    names: Sequence[str],
    probe: _Probe,
    loss0: float,
    acc0: float,
    reference: Any,
    settings: SALSettings,
) -> list[LayerSAL]:
    """SAL of ``names``, the chains of ``settings.chain_group`` layers at a time.

    Called by :func:`~unlearn.sharpness.sal.compute_sal` inside ``model_untouched`` (eval
    mode, autograd on), with the probe and its L0 and acc0 already computed.

    Args:
        model: The model (eval mode).
        gm: The traced model for the one-layer fallback (``None``: not traced).
        names: Measured layers, in the order the records are returned.
        probe: The probe batches and the scoring functions.
        loss0: Mean probe loss at the unperturbed weights.
        acc0: Probe accuracy at the unperturbed weights, a fraction.
        reference: Model outputs on the first probe batch (for the fallback's cache check).
        settings: The SAL settings; ``chain_group`` is not 1.

    Returns:
        One :class:`LayerSAL` per entry of ``names``: a grouped layer's ``seconds`` is its
        group's wall time divided by the group's number of layers, its ``cached`` false. A
        group of one layer (``"auto"`` finding no room for two, or the last group of a
        split) and a group that fell back are measured as with ``chain_group: 1``.
    """
    unique = list(dict.fromkeys(names))  # a layer listed twice is measured once
    size = group_size(model, unique, probe, settings.chain_group)
    records: dict[str, LayerSAL] = {}
    failed: list[tuple[list[str], str]] = []
    for group in plan_groups(model, unique, size):
        found = None
        if len(group) > 1:  # a group of one is measured as with chain_group 1 (prefix cache)
            try:
                found = _group_sal(model, group, probe, loss0, acc0, settings)
            except RuntimeError as err:  # an operation vmap cannot batch
                failed.append((group, _first_line(err)))
        if found is None:
            found = [
                _layer_sal(model, gm, name, probe, loss0, acc0, reference, settings)
                for name in group
            ]
        records.update((r.layer, r) for r in found)
    if failed:
        listed = "; ".join(f"{g[0]}..{g[-1]}" if len(g) > 1 else g[0] for g, _ in failed)
        warnings.warn(
            f"SAL of {type(model).__name__}: chain_group {settings.chain_group!r} cannot "
            f"vectorise the groups {listed} (first: {failed[0][1]}); measured their layers "
            "one at a time",
            stacklevel=3,
        )
    return [dataclasses.replace(records[name]) for name in names]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def plan_groups(model: nn.Module, names: Sequence[str], size: int) -> list[list[str]]:
    """``names`` in model order, cut into consecutive groups of ``size`` (the last shorter).

    Args:
        model: The model whose module order decides.
        names: Distinct measured layer names.
        size: Layers per group, >= 1.
    """
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    ordered = sorted(names, key=order.__getitem__)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def group_size(
    model: nn.Module,
    names: Sequence[str],
    probe: _Probe,
    chain_group: int | str,
) -> int:
    """Layers per group for ``chain_group``: an integer as given, ``"all"`` every layer.

    ``"auto"``: the largest ``k`` whose groups (of ``k`` consecutive layers in model order)
    all fit in :data:`MEMORY_FRACTION` of :func:`free_bytes` by :func:`group_bytes`; 1 where
    :func:`free_bytes` is ``None`` (any device but CUDA) or no group of two fits.
    """
    if chain_group == "all":
        return max(len(names), 1)
    if chain_group != "auto":
        return int(chain_group)
    device = probe.inputs[0].device
    free = free_bytes(device)
    if free is None:
        return 1
    budget = MEMORY_FRACTION * free
    saved = saved_activation_bytes(model, names, probe)
    weights = {name: _weight_bytes(model, name) for name in names}
    for k in range(len(names), 1, -1):
        groups = plan_groups(model, names, k)
        if all(group_bytes([weights[n] for n in g], saved) <= budget for g in groups):
            return k
    return 1


def group_bytes(weight_bytes: Sequence[int], saved_bytes: int) -> int:
    """Estimated peak memory of one group's SGD step, in bytes.

    Args:
        weight_bytes: Bytes of each group layer's weight (``numel * element size``).
        saved_bytes: Bytes one forward pass on the largest probe batch saves for backward
            (:func:`saved_activation_bytes`).

    Returns:
        ``2k * (ACTIVATION_FACTOR * saved_bytes + WEIGHT_FACTOR * sum(weight_bytes))`` for
        ``k`` layers: each of the ``2k`` members saves its own activations and holds its own
        copy of every group layer's weight (stacked), with its gradient and update.
    """
    members = 2 * len(weight_bytes)
    return members * (ACTIVATION_FACTOR * saved_bytes + WEIGHT_FACTOR * sum(weight_bytes))


def free_bytes(device: torch.device) -> int | None:
    """Memory free for a group on ``device``, in bytes; ``None``: do not group.

    CUDA: the driver's free memory (``torch.cuda.mem_get_info``) plus what PyTorch's
    allocator holds unused. Any other device, the CPU included: ``None``, so ``"auto"``
    keeps one layer at a time there. On a CPU a thread is already busy with one chain's
    batch, and a group was measured slower, not faster (docs/sal_ud.md).
    """
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def saved_activation_bytes(model: nn.Module, names: Sequence[str], probe: _Probe) -> int:
    """Bytes one forward pass on the largest probe batch saves for the backward pass.

    Every measured weight in ``names`` requires a gradient (detached copies, the model's own
    parameters untouched), so what is saved is what a member of a group holding all of them
    keeps: an upper bound for any group. Tensors sharing a storage count once (the largest).
    """
    weights = {
        f"{name}.weight": model.get_submodule(name).weight.detach().requires_grad_(True)
        for name in names
    }
    params = {**_frozen_params(model), **weights}
    seen: dict[tuple[int, int], int] = {}  # bytes per (storage address, device)

    def pack(t: Tensor) -> Tensor:
        try:
            key = (t.untyped_storage().data_ptr(), t.device.index or 0)
        except (RuntimeError, NotImplementedError):  # a tensor without a plain storage
            key = (id(t), -1)
        # the saved view's bytes, not its storage's: a probe batch may be a slice of a tensor
        seen[key] = max(seen.get(key, 0), t.numel() * t.element_size())
        return t

    largest = max(range(len(probe.inputs)), key=lambda b: probe.sizes[b])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        functional_call(model, params, (probe.inputs[largest],))
    return sum(seen.values())


def _weight_bytes(model: nn.Module, name: str) -> int:
    weight = model.get_submodule(name).weight
    return weight.numel() * weight.element_size()


class _Members:
    """The group's model call over its ``2k`` members, vectorised with ``vmap``.

    A :data:`~unlearn.sharpness.chains.StackedForward` of the group's chains, with the states
    the probe's input batches.

    Args:
        model: The model (eval mode).
        group: The group's layers ``L1..Lk``; member ``2i`` and ``2i + 1`` own ``Li``.
        w0: Each group layer's base weight, in the order of ``group``.
    """

    def __init__(self, model: nn.Module, group: Sequence[str], w0: Sequence[Tensor]) -> None:
        self.params = _frozen_params(model)
        self.w0 = list(w0)
        self.names = [f"{layer}.weight" for layer in group]
        self.size = 2 * len(group)

        def call(weights: dict[str, Tensor], inputs: Tensor) -> Any:
            return functional_call(model, {**self.params, **weights}, (inputs,))

        self.batched = torch.func.vmap(call, in_dims=(0, None))

    def stack(self, chains: Sequence[Tensor]) -> dict[str, Tensor]:
        """Each group layer's weight of every member, ``[2k, *shape]``.

        Rows ``2i`` and ``2i + 1`` of layer ``Li`` are its chains' weights ``chains[i]``
        (``[2, *shape]``, differentiable), every other row is ``W0``.
        """
        stacked = {}
        for i, (name, w, base) in enumerate(zip(self.names, chains, self.w0, strict=True)):
            before = base.expand(2 * i, *base.shape)
            after = base.expand(self.size - 2 * i - 2, *base.shape)
            stacked[name] = torch.cat([before, w, after])
        return stacked

    def __call__(self, chains: list[Tensor], inputs: Tensor) -> list:
        """The model outputs of each member on ``inputs``, in member order."""
        outputs = self.batched(self.stack(chains), inputs)
        return [tree_map(lambda t, m=m: t[m], outputs) for m in range(self.size)]


def _group_sal(
    model: nn.Module,
    group: list[str],
    probe: _Probe,
    loss0: float,
    acc0: float,
    settings: SALSettings,
) -> list[LayerSAL]:
    """The records of one group's layers, their chains run together."""
    start = time.perf_counter()
    w0 = [model.get_submodule(layer).weight.detach() for layer in group]
    members = _Members(model, group, w0)
    directions = [(settings.lr_min, 1.0), (settings.lr_max, -1.0)]
    histories = _chains(members, probe.inputs, probe, w0, directions, settings)
    seconds = (time.perf_counter() - start) / len(group)
    return [
        _record(
            layer,
            base.numel(),
            histories[2 * i],
            histories[2 * i + 1],
            loss0,
            acc0,
            seconds=seconds,
            cached=False,
        )
        for i, (layer, base) in enumerate(zip(group, w0, strict=True))
    ]
