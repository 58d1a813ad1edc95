"""Flattened parameter vectors and filter-normalised random directions (Li et al., 2018).

A model's trainable parameters are handled as one flat vector ``[P]`` so that a point of a
loss surface is ``origin + a * dx + b * dy``; :class:`ParameterSpace` maps between that
vector and the ``{name: tensor}`` dict that :func:`torch.func.functional_call` takes.

Filter normalisation follows "Visualizing the Loss Landscape of Neural Nets" (Li, Xu,
Taylor, Studer, Goldstein, NeurIPS 2018): a Gaussian direction is rescaled filter by
filter (one filter = one slice along the first dimension: an output channel of a
convolution, a row of a linear layer's weight) to the norm of the matching filter of the
weights, so that the surface is comparable across models and scales. One-dimensional
tensors (biases, norm-layer affine parameters) are set to zero ("ignore biasbn") or
copied from the weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

Normalisation = Literal["filter", "layer", "none"]


@dataclass(frozen=True)
class ParameterSpace:
    """The layout of a model's trainable parameters in one flat vector.

    Attributes:
        names: parameter names, in ``model.named_parameters()`` order.
        shapes: shape of each parameter.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, model: nn.Module) -> ParameterSpace:
        """The space of ``model``'s parameters that require gradients."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def numels(self) -> list[int]:
        """Number of entries of each parameter."""
        return [math.prod(shape) for shape in self.shapes]

    @property
    def size(self) -> int:
        """Length ``P`` of the flat vector."""
        return sum(self.numels)

    def flatten(self, params: Mapping[str, Tensor]) -> Tensor:
        """Concatenate ``params`` (every name of the space) into one vector ``[P]``."""
        missing = [n for n in self.names if n not in params]
        if missing:
            raise KeyError(f"parameters missing from the state: {missing}")
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, vector: Tensor) -> dict[str, Tensor]:
        """Split a vector ``[P]`` into ``{name: view of shape}`` (no copy)."""
        if vector.shape != (self.size,):
            raise ValueError(f"expected a vector of shape [{self.size}], got {tuple(vector.shape)}")
        pieces = torch.split(vector, self.numels)
        return {n: p.view(s) for n, p, s in zip(self.names, pieces, self.shapes, strict=True)}

    def coordinate_name(self, index: int) -> str:
        """Human-readable name of flat coordinate ``index``, e.g. ``linear.weight[3, 517]``."""
        if not 0 <= index < self.size:
            raise IndexError(f"coordinate {index} outside [0, {self.size})")
        for name, shape, numel in zip(self.names, self.shapes, self.numels, strict=True):
            if index < numel:
                position = [int(i) for i in torch.unravel_index(torch.tensor(index), shape)]
                return f"{name}[{', '.join(map(str, position))}]" if shape else name
            index -= numel
        raise AssertionError("unreachable")

    def parameter_of(self) -> Tensor:
        """Index of the parameter each coordinate belongs to, ``int64 [P]``."""
        return torch.repeat_interleave(
            torch.arange(len(self.names)), torch.tensor(self.numels, dtype=torch.long)
        )


def normalise_direction(
    direction: Mapping[str, Tensor],
    weights: Mapping[str, Tensor],
    norm: Normalisation = "filter",
    ignore_biasbn: bool = True,
) -> dict[str, Tensor]:
    """Rescale a direction to the scale of the weights, tensor by tensor.

    Args:
        direction: ``{name: tensor}``, same names and shapes as ``weights``.
        weights: the point the direction is taken around.
        norm: ``"filter"``: each slice ``d[i]`` along the first dimension gets the norm of
            ``w[i]``; ``"layer"``: each tensor gets the norm of its weight tensor;
            ``"none"``: unchanged.
        ignore_biasbn: tensors with at most one dimension (biases, norm layers) become zero
            when true, or a copy of the weights when false (Li et al.'s two choices).

    Returns:
        A new ``{name: tensor}``; the inputs are not modified.
    """
    out = {}
    for name, w in weights.items():
        d = direction[name].detach().clone()
        if d.shape != w.shape:
            raise ValueError(f"{name}: direction {tuple(d.shape)} vs weights {tuple(w.shape)}")
        if d.dim() <= 1:
            out[name] = torch.zeros_like(d) if ignore_biasbn else w.detach().clone()
            continue
        if norm == "filter":
            d_norms = d.flatten(1).norm(dim=1)
            w_norms = w.detach().flatten(1).norm(dim=1)
            scale = w_norms / (d_norms + 1e-10)
            d.mul_(scale.view(-1, *([1] * (d.dim() - 1))))
        elif norm == "layer":
            d.mul_(w.detach().norm() / (d.norm() + 1e-10))
        elif norm != "none":
            raise ValueError(f"norm must be 'filter', 'layer' or 'none', got {norm!r}")
        out[name] = d
    return out


def random_direction(
    space: ParameterSpace,
    origin: Tensor,
    generator: torch.Generator,
    norm: Normalisation = "filter",
    ignore_biasbn: bool = True,
) -> Tensor:
    """A Gaussian direction around ``origin``, normalised by :func:`normalise_direction`.

    Args:
        space: the parameter layout.
        origin: the flat weights ``[P]`` the direction is normalised against.
        generator: CPU generator; the same seed gives the same raw Gaussian for every model
            of the same space, so runs are compared along matching directions.
        norm: see :func:`normalise_direction`.
        ignore_biasbn: see :func:`normalise_direction`.

    Returns:
        The flat direction ``[P]``, dtype and device of ``origin``.
    """
    raw = torch.randn(space.size, generator=generator, dtype=torch.float32)
    raw = raw.to(device=origin.device, dtype=origin.dtype)
    direction = normalise_direction(
        space.unflatten(raw), space.unflatten(origin), norm=norm, ignore_biasbn=ignore_biasbn
    )
    return space.flatten(direction)
