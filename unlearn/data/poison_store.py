"""The poison store: ``poison.pt`` + ``meta.json`` in one directory, written atomically.

The format lives with the data modules, which read it to serve poisoned samples; the poison
methods (:mod:`unlearn.poisons`) write it. :mod:`unlearn.poisons.store` re-exports it.

``poison.pt`` is a dict of tensors and plain values only (it loads with
``torch.load(weights_only=True)``)::

    {
        "format": "unlearn-poison",
        "version": 1,
        "delta": float16 [M, C, H, W],      # poisoned = clamp(clean[indices] + delta, 0, 1)
        "indices": int64 [M],               # training-split indices, strictly increasing
        "class_patterns": float16 [K, C, H, W] or None,   # class-wise methods only
        "meta": {...},                      # the same dict as meta.json
    }

``meta.json`` holds at least ``method``, ``norm`` (``linf``/``l2``/``l0``), ``eps``,
``dataset``, ``split``, ``num_samples``, ``image_shape``, ``fingerprint``, ``seed``,
``poison_ratio``, ``version`` and ``params`` (the method's settings).

The budget is checked on the stored float16 values: :func:`quantize_delta` rounds to float16
so that the rounded perturbation still satisfies the budget exactly.
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unlearn.data.base import DatasetInfo
from unlearn.errors import UnlearnError
from unlearn.io import atomic_path, write_json_atomic

FORMAT = "unlearn-poison"
VERSION = 1
POISON_FILE = "poison.pt"
META_FILE = "meta.json"
NORMS = ("linf", "l2", "l0")
#: slack on budget checks of stored values, for files written by other tools
TOLERANCE = 1e-6
REQUIRED_META = (
    "method",
    "norm",
    "eps",
    "dataset",
    "split",
    "num_samples",
    "image_shape",
    "fingerprint",
    "seed",
    "poison_ratio",
    "version",
)


class StoreExistsError(UnlearnError, FileExistsError):
    """An output directory already holds a poison (or export) that would be replaced."""


class PoisonStoreError(UnlearnError, ValueError):
    """A poison store is missing, unreadable, malformed or made for other data."""


@dataclass
class StoredPoison:
    """A loaded poison.

    Attributes:
        delta: ``float16 [M, C, H, W]``.
        indices: ``int64 [M]`` training-split indices of the rows of ``delta``.
        meta: the meta dict (see the module docstring).
        class_patterns: ``float16 [K, C, H, W]`` or ``None``.
        path: the ``poison.pt`` it was read from.
    """

    delta: Tensor
    indices: Tensor
    meta: dict[str, Any]
    class_patterns: Tensor | None
    path: Path

    def poisoned(self, clean: Tensor) -> Tensor:
        """``clamp(clean + delta, 0, 1)`` for ``clean = float [M, C, H, W]`` rows of ``indices``."""
        return (clean + self.delta.to(clean.dtype)).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------- budget
def per_sample_size(delta: Tensor, norm: str) -> Tensor:
    """Size of each perturbation ``[M, C, H, W]`` in ``norm``, as float64 ``[M]``.

    ``l0`` counts pixel positions where any channel is non-zero.
    """
    values = delta.detach().to(torch.float64).flatten(2)  # [M, C, H*W]
    if norm == "linf":
        return values.abs().flatten(1).amax(dim=1) if values.numel() else values.new_zeros(0)
    if norm == "l2":
        return values.flatten(1).norm(dim=1)
    if norm == "l0":
        return (values != 0).any(dim=1).sum(dim=1).to(torch.float64)
    raise ValueError(f"norm must be one of {NORMS}, got '{norm}'")


def budget_violation(delta: Tensor, norm: str, eps: float, tolerance: float = 0.0) -> str | None:
    """Describe the worst sample over budget, or return ``None`` if every sample is within."""
    if not torch.isfinite(delta).all():
        return "delta holds NaN or infinite values"
    sizes = per_sample_size(delta, norm)
    if sizes.numel() == 0:
        return None
    limit = eps + tolerance * max(1.0, abs(eps))
    over = sizes > limit
    if not over.any():
        return None
    worst = int(sizes.argmax())
    return (
        f"{int(over.sum())} of {sizes.numel()} samples exceed the {norm} budget {eps:.6g} "
        f"(worst: row {worst} with {float(sizes[worst]):.6g})"
    )


def quantize_delta(delta: Tensor, norm: str, eps: float) -> Tensor:
    """Round ``delta`` to float16 such that every sample stays within the budget.

    Args:
        delta: ``float [M, C, H, W]`` within the budget (up to float32 rounding).
        norm: ``linf``, ``l2`` or ``l0``.
        eps: the budget.

    Returns:
        ``float16 [M, C, H, W]``.
    """
    delta = delta.detach().float().cpu()
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    out = delta.to(torch.float16)
    if norm == "linf":
        over = out.to(torch.float64).abs() > eps
        if over.any():  # rounding went past eps: step one float16 towards zero
            out[over] = torch.nextafter(out[over], torch.zeros_like(out[over]))
    elif norm == "l2":
        for _ in range(10):
            sizes = per_sample_size(out, "l2")
            over = sizes > eps
            if not over.any():
                break
            scale = (eps / sizes[over]) * (1 - 1e-3)
            out[over] = (out[over].double() * scale.view(-1, 1, 1, 1)).to(torch.float16)
    violation = budget_violation(out, norm, eps)
    if violation is not None:
        raise ValueError(f"perturbation over budget after rounding to float16: {violation}")
    return out


# ---------------------------------------------------------------------------- save
def _plain(value: Any) -> Any:
    """JSON round trip: tuples become lists, everything must be a plain value."""
    return json.loads(json.dumps(value))


def save_poison(
    directory: str | Path,
    delta: Tensor,
    indices: Tensor,
    meta: dict[str, Any],
    class_patterns: Tensor | None = None,
) -> Path:
    """Write ``poison.pt`` and ``meta.json`` into ``directory`` atomically.

    Each file is written to a temporary name in the same directory and renamed into place,
    so a reader sees either the old or the new file, never a partial one. ``meta.json`` is
    replaced first, ``poison.pt`` last: a ``poison.pt`` (what :func:`load_poison` reads; it
    holds the meta too) is only ever beside the ``meta.json`` of the same poison, or of a
    newer one being written.

    Args:
        directory: the store's directory (created if missing).
        delta: ``float [M, C, H, W]`` within ``meta["norm"]``/``meta["eps"]``.
        indices: ``int64 [M]`` training-split indices.
        meta: at least the keys of :data:`REQUIRED_META` except ``version``.
        class_patterns: optional ``[K, C, H, W]``.

    Returns:
        The path of ``poison.pt``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = _plain({**meta, "version": VERSION})
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise ValueError(f"poison meta lacks {missing}")
    if delta.ndim != 4 or indices.shape != (delta.shape[0],):
        raise ValueError(
            f"delta must be [M, C, H, W] and indices [M], got {tuple(delta.shape)} and "
            f"{tuple(indices.shape)}"
        )
    order = indices.long().argsort()
    indices, delta = indices.long()[order], delta[order]
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "delta": quantize_delta(delta, meta["norm"], float(meta["eps"])),
        "indices": indices.cpu().contiguous(),
        "class_patterns": None
        if class_patterns is None
        else class_patterns.detach().cpu().to(torch.float16),
        "meta": meta,
    }
    write_json_atomic(directory / META_FILE, meta)
    with atomic_path(directory / POISON_FILE) as tmp:
        torch.save(payload, tmp)
    return directory / POISON_FILE


# ---------------------------------------------------------------------------- load
def _read(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise PoisonStoreError(
            f"poison store: '{file}' not found (expected a directory holding {POISON_FILE} and "
            f"{META_FILE}, as written by `python -m unlearn poison`)"
        )
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise PoisonStoreError(
            f"poison store: '{file}' holds objects other than tensors and plain values; "
            f"refused (loading it could run arbitrary code). Detail: {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise PoisonStoreError(
            f"poison store: '{file}' is truncated or not a torch file "
            f"({file.stat().st_size} bytes; {str(err).splitlines()[0]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PoisonStoreError(
            f"poison store: '{file}' is not an unlearn poison (expected a dict with "
            f"format='{FORMAT}')"
        )
    return payload


def _check_against(file: Path, meta: dict[str, Any], expected: DatasetInfo) -> None:
    wanted = {
        "dataset": expected.name,
        "split": expected.split,
        "num_samples": expected.num_samples,
        "image_shape": list(expected.image_shape),
        "fingerprint": expected.fingerprint,
    }
    differences = [
        f"{key}: expected {want!r}, found {meta.get(key)!r}"
        for key, want in wanted.items()
        if meta.get(key) != want
    ]
    if differences:
        raise PoisonStoreError(
            f"poison store: '{file}' was made for other data than this data module's training "
            f"split; " + "; ".join(differences)
        )


def load_poison(path: str | Path, expected: DatasetInfo | None = None) -> StoredPoison:
    """Read and check a poison store.

    Checks the file format (tensors and plain values only), the version, the tensors' dtypes
    and shapes, the indices, the budget on every sample, and, given ``expected``, that the
    poison was made for that data (name, split, length, image shape, fingerprint).

    Args:
        path: the store's directory or its ``poison.pt``.
        expected: identity of the clean training split the poison will be applied to.

    Returns:
        The poison.

    Raises:
        PoisonStoreError: with a message saying what is wrong or what differs.
    """
    path = Path(path)
    file = path / POISON_FILE if path.is_dir() else path
    payload = _read(file)
    if payload.get("version") != VERSION:
        raise PoisonStoreError(
            f"poison store: '{file}' has format version {payload.get('version')!r}; this "
            f"version of unlearn reads version {VERSION}"
        )
    meta = payload.get("meta")
    if not isinstance(meta, dict):
        raise PoisonStoreError(f"poison store: '{file}' has no 'meta' dict")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise PoisonStoreError(f"poison store: '{file}' meta lacks {missing}")
    delta, indices = payload.get("delta"), payload.get("indices")
    if not isinstance(delta, Tensor) or delta.dtype != torch.float16 or delta.ndim != 4:
        found = f"{delta.dtype} {tuple(delta.shape)}" if isinstance(delta, Tensor) else type(delta)
        raise PoisonStoreError(
            f"poison store: '{file}': 'delta' must be a float16 tensor [M, C, H, W], found {found}"
        )
    if not isinstance(indices, Tensor) or indices.dtype != torch.int64 or indices.ndim != 1:
        raise PoisonStoreError(f"poison store: '{file}': 'indices' must be an int64 tensor [M]")
    if indices.numel() != delta.shape[0]:
        raise PoisonStoreError(
            f"poison store: '{file}': {indices.numel()} indices but {delta.shape[0]} rows of delta"
        )
    if list(delta.shape[1:]) != list(meta["image_shape"]):
        raise PoisonStoreError(
            f"poison store: '{file}': delta images are {list(delta.shape[1:])} but meta says "
            f"image_shape {meta['image_shape']}"
        )
    num_samples = int(meta["num_samples"])
    if indices.numel() and (
        int(indices.min()) < 0
        or int(indices.max()) >= num_samples
        or not bool((indices[1:] > indices[:-1]).all())
    ):
        raise PoisonStoreError(
            f"poison store: '{file}': indices must be strictly increasing and in [0, {num_samples})"
        )
    if meta["norm"] not in NORMS:
        raise PoisonStoreError(
            f"poison store: '{file}': norm must be one of {NORMS}, found {meta['norm']!r}"
        )
    eps = float(meta["eps"])
    if not math.isfinite(eps) or eps <= 0:
        raise PoisonStoreError(f"poison store: '{file}': eps must be a positive number, got {eps}")
    violation = budget_violation(delta, meta["norm"], eps, TOLERANCE)
    if violation is not None:
        raise PoisonStoreError(f"poison store: '{file}': {violation}")
    if expected is not None:
        _check_against(file, meta, expected)
    patterns = payload.get("class_patterns")
    if patterns is not None and not isinstance(patterns, Tensor):
        raise PoisonStoreError(f"poison store: '{file}': 'class_patterns' must be a tensor")
    return StoredPoison(delta, indices, meta, patterns, file)
