"""The two loss contracts of the project, named so that a signature says which one it takes.

- :data:`PerSampleLoss`: ``loss_fn(outputs, targets) -> float [B]``, one value per sample.
  Defenses take this form (adversarial training ascends the sum, UEraser takes a per-sample
  maximum over augmented draws).
- :data:`MeanLoss`: ``loss_fn(outputs, targets) -> float []``, the batch's scalar loss (e.g.
  ``torch.nn.functional.cross_entropy`` with its default mean reduction). SAL and the loss
  landscapes take this form.

``outputs`` are what the model returns (logits ``[B, K]``, or a dict of per-task outputs);
``targets`` whatever the task compares them with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

PerSampleLoss = Callable[[Any, Any], Tensor]
MeanLoss = Callable[[Any, Any], Tensor]
