"""Sharpness-Aware Learnability (SAL) of every measured layer of a model.

For each measured layer l (the weight of every Conv and Linear module) with weight W0
and mean probe loss L0, two independent chains of ``iters`` iterations run: descent on
the loss (SGD, ``lr_min``) and ascent (SGD on the negated loss, ``lr_max``). One iteration
is ``steps_per_iter`` SGD steps, each on the next probe batch (cycling through the probe
batches in their order, continuing where the previous iteration stopped), followed by a
projection onto the ball ``||W - W0||_2 <= eps * ||W0||_2`` and the mean loss and accuracy
on the whole probe set at the projected point. Then

- ``L_min`` = min(L0, losses of the descent chain), ``L_max`` = max(L0, ascent losses);
- ``s_max = L_max - L0``, ``s_min = L0 - L_min``;
- ``sal = s_max if |s_max| > |s_min| else s_min``.

The accuracy variant follows the public code of the paper: ``acc_rise`` is the accuracy
at the descent chain's lowest loss minus ``acc0``, ``acc_drop`` is ``acc0`` minus the
accuracy at the ascent chain's highest loss (both 0 where the loss never improves on L0),
and ``sal_acc = acc_drop if |acc_drop| > |acc_rise| else acc_rise``. Accuracies are
fractions in [0, 1] (the paper prints percent).

Evaluation passes: where the probe set is a single batch, the first forward pass of the
next iteration runs over the whole probe set at the projected weight, so its loss and
accuracy *are* the evaluation of the previous iteration, and only the last iteration
needs a forward pass of its own. With several probe batches the next forward pass sees
one batch only, so a separate evaluation pass over all batches runs after each projection.
L0 and acc0 come from one forward pass over the probe set shared by all layers.

Nothing of the model changes: one weight at a time is optimised through
``torch.func.functional_call`` with every other parameter shared (detached), batch norm
runs in eval mode, and the training flags of all modules and the CPU and CUDA random
streams are restored on exit; ``requires_grad`` flags and ``.grad`` fields are never
touched (gradients come from ``torch.autograd.grad``).

``SALSettings.chain_group`` other than 1 runs the chains of several layers together, one
vectorised whole-model call per SGD step (:mod:`unlearn.sharpness.batched`): the same
procedure, the same values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unlearn.sharpness.batched import grouped_sal
from unlearn.sharpness.chains import (
    CHAIN_GROUPS,
    MEASURED_TYPES,
    Batch,
    CorrectFn,
    LayerFilter,
    LayerSAL,
    MeanLoss,
    SALSettings,
    _layer_sal,
    _Probe,
    check_chain_group,
    cross_entropy,
    measured_layers,
    model_untouched,
    top1_correct,
)
from unlearn.sharpness.prefix_cache import trace

__all__ = [
    "CHAIN_GROUPS",
    "MEASURED_TYPES",
    "Batch",
    "CorrectFn",
    "LayerFilter",
    "LayerSAL",
    "MeanLoss",
    "SALSettings",
    "check_chain_group",
    "compute_sal",
    "cross_entropy",
    "measured_layers",
    "model_untouched",
    "top1_correct",
]


def compute_sal(
    model: nn.Module,
    batches: Sequence[Batch],
    layers: LayerFilter = None,
    *,
    loss_fn: MeanLoss = cross_entropy,
    correct_fn: CorrectFn = top1_correct,
    settings: SALSettings | None = None,
) -> list[LayerSAL]:
    """SAL of each measured layer of ``model`` on a probe set.

    Args:
        model: The model at the checkpoint; left exactly as found.
        batches: The probe set as (inputs ``[B, ...]``, targets ``[B, ...]``) pairs on the
            model's device, in the order the SGD steps take them. One batch holding the
            whole probe set saves the evaluation passes (see the module docstring).
        layers: Which layers to measure (see :func:`measured_layers`).
        loss_fn: ``loss_fn(outputs, targets)``: mean loss of a batch, a scalar tensor.
        correct_fn: ``correct_fn(outputs, targets)``: number of correct samples.
        settings: Radius, iterations, learning rates and steps (defaults: the paper's).

    Returns:
        One :class:`LayerSAL` per measured layer, in the order of ``layers``. With
        ``settings.chain_group`` other than 1 the layers of a group are measured together:
        their ``seconds`` is the group's time split evenly among them and ``cached`` is
        false (a group that fell back to one layer at a time records as with 1).
    """
    settings = settings or SALSettings()
    names = measured_layers(model, layers)
    with model_untouched(model):
        probe = _Probe(batches, loss_fn, correct_fn)
        gm = trace(model) if settings.cache_prefix else None
        loss_sum, correct, reference = 0.0, 0.0, None
        with torch.no_grad():
            for b, x in enumerate(probe.inputs):
                outputs = model(x)
                reference = outputs if b == 0 else reference
                loss, c = probe.score(outputs, b)
                loss_sum += float(loss) * probe.sizes[b]
                correct += c
        loss0, acc0 = loss_sum / probe.total, correct / probe.total
        if settings.chain_group != 1:
            return grouped_sal(model, gm, names, probe, loss0, acc0, reference, settings)
        return [
            _layer_sal(model, gm, name, probe, loss0, acc0, reference, settings) for name in names
        ]
