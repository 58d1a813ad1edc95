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
``poison_ratio``, ``version`` and ``params`` (the method's settings), and ``train_subset``
(the data module's training subset, ``None`` for the full split; a store without the key
was made for the full split). :func:`save_poison` adds ``delta_sha256``
(:func:`perturbation_digest`, the stored perturbation's content hash). The meta inside
``poison.pt`` is authoritative; :func:`load_poison` refuses a ``meta.json`` beside it
that says otherwise (a missing ``meta.json`` is allowed).

``fingerprint`` is the data source's (``unlearn.data.datasets``): plain hex for in-memory
data (a hash of the pixels), ``"content:<hex>"`` or ``"stat:<hex>"`` for file-backed data.
A plain hex fingerprint of file-backed data was written before the modes existed; it is the
``stat`` hash and is accepted by a data module in ``stat`` mode.

The budget is checked on the stored float16 values: :func:`quantize_delta` rounds to float16
so that the rounded perturbation still satisfies the budget exactly.
"""

from __future__ import annotations

import hashlib
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
from unlearn.data.datasets import fingerprint_mode_of
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


def perturbation_digest(delta: Tensor, indices: Tensor) -> str:
    """SHA-256 (hex) of a stored perturbation: the bytes of ``delta`` and ``indices``.

    Two stores with the same digest poison the same samples with the same values, so a
    poison made again (a later session on another machine) can be told from the first.

    Args:
        delta: the stored ``float16 [M, C, H, W]``.
        indices: ``int64 [M]``.
    """
    digest = hashlib.sha256()
    for tensor in (delta, indices):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


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
    newer one being written (which :func:`load_poison` refuses as a contradiction).

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
    stored_delta = quantize_delta(delta, meta["norm"], float(meta["eps"]))
    stored_indices = indices.cpu().contiguous()
    meta["delta_sha256"] = perturbation_digest(stored_delta, stored_indices)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "delta": stored_delta,
        "indices": stored_indices,
        "class_patterns": None
        if class_patterns is None
        else class_patterns.detach().cpu().to(torch.float16),
        "meta": meta,
    }
    write_json_atomic(directory / META_FILE, meta)
    # a failure from here on leaves the new meta.json beside the old poison.pt, which
    # load_poison refuses until the poison is written again
    with atomic_path(directory / POISON_FILE) as tmp:
        torch.save(payload, tmp)
    return directory / POISON_FILE


# ---------------------------------------------------------------------------- load
def _first_line(err: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message (its type if it has none)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    unsupported = [line for line in lines if "Unsupported global" in line]
    line = (unsupported or lines or [type(err).__name__])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _read(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise PoisonStoreError(
            f"poison store: '{file}' not found (expected a directory holding {POISON_FILE} and "
            f"{META_FILE}, as written by `python -m unlearn poison`)"
        )
    size = file.stat().st_size
    if size == 0:
        raise PoisonStoreError(
            f"poison store: '{file}' is empty (0 bytes); remake the poison "
            "(`python -m unlearn poison ... --overwrite`)"
        )
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as err:  # any parser failure of an untrusted file is reported
        if not zipfile.is_zipfile(file):
            with open(file, "rb") as handle:
                head = handle.read(16)
            what = (
                "a zip archive without its end, as a cut-short copy leaves"
                if head.startswith(b"PK\x03\x04")
                else f"not the zip archive torch.save writes; starts with {head!r}"
            )
            raise PoisonStoreError(
                f"poison store: '{file}' is truncated or not a torch file ({size} bytes, {what})"
            ) from None
        if isinstance(err, pickle.UnpicklingError):
            raise PoisonStoreError(
                f"poison store: '{file}' holds objects other than tensors and plain values; "
                f"refused (loading it could run arbitrary code). Detail: {_first_line(err)}"
            ) from None
        raise PoisonStoreError(
            f"poison store: '{file}' is truncated or not a torch file ({size} bytes; "
            f"{_first_line(err)})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PoisonStoreError(
            f"poison store: '{file}' is not an unlearn poison (expected a dict with "
            f"format='{FORMAT}')"
        )
    return payload


def _canonical(value: Any) -> str:
    """A meta value as sorted-key JSON text (NaN compares equal to NaN; tuples to lists)."""
    return json.dumps(value, sort_keys=True)


def _check_meta_file(file: Path, meta: dict[str, Any]) -> None:
    """Refuse a ``meta.json`` beside ``file`` that is unreadable or differs from ``meta``."""
    meta_file = file.parent / META_FILE
    if not meta_file.is_file():
        return  # the meta inside poison.pt is authoritative; meta.json is a readable copy
    try:
        on_disk = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PoisonStoreError(
            f"poison store: '{meta_file}' is not valid JSON ({_first_line(err)}); it should be "
            f"a copy of the meta inside '{file}' (remake the poison, or delete the file)"
        ) from None
    if not isinstance(on_disk, dict):
        raise PoisonStoreError(
            f"poison store: '{meta_file}' holds a {type(on_disk).__name__}, not the meta dict "
            f"of '{file}'"
        )
    absent = "<absent>"
    differing = sorted(
        key
        for key in set(meta) | set(on_disk)
        if key not in meta
        or key not in on_disk
        or _canonical(meta[key]) != _canonical(on_disk[key])
    )
    if differing:
        first = differing[0]

        def shown(source: dict[str, Any]) -> str:
            text = _canonical(source[first]) if first in source else absent
            return text if len(text) <= 60 else text[:57] + "..."

        raise PoisonStoreError(
            f"poison store: '{meta_file}' contradicts the meta inside '{file}' in "
            f"{len(differing)} keys {differing[:5]} (first: {first} is {shown(meta)} in "
            f"{POISON_FILE}, {shown(on_disk)} in {META_FILE}); an interrupted or foreign write "
            "left them apart: remake the poison"
        )


def _fingerprint_difference(want: str, found: object) -> str | None:
    """Why a stored fingerprint does not fit the data's, or ``None`` if it does."""
    if found == want:
        return None
    want_mode, found_mode = fingerprint_mode_of(want), fingerprint_mode_of(found)
    option = "the data module's `fingerprint` init argument (--data.init_args.fingerprint)"
    if want_mode is not None and found_mode is None and isinstance(found, str):
        # a store from before the modes: its plain hex is the stat hash
        if want_mode == "stat":
            if found == want.partition(":")[2]:
                return None
            return (
                f"fingerprint: expected {want!r}, found {found!r} (a stat hash from before "
                "fingerprint modes existed: file names, sizes or labels differ)"
            )
        return (
            f"fingerprint: the poison was made before fingerprint modes existed (plain hash "
            f"'{found[:12]}...' of file names and sizes only) and this data module uses "
            f"'{want_mode}'; set {option} to 'stat' to check it that way, or remake the poison"
        )
    if want_mode is not None and found_mode is not None and found_mode != want_mode:
        return (
            f"fingerprint: the poison was made with fingerprint mode '{found_mode}', this data "
            f"module uses '{want_mode}'; set {option} to '{found_mode}', or remake the poison"
        )
    return f"fingerprint: expected {want!r}, found {found!r}"


def _subset_name(train_subset: object) -> str:
    """How a message names a training split: ``train_subset N`` or the full split."""
    return "the full training split" if train_subset is None else f"train_subset {train_subset}"


def _check_against(file: Path, meta: dict[str, Any], expected: DatasetInfo) -> None:
    wanted = {
        "dataset": expected.name,
        "split": expected.split,
        "num_samples": expected.num_samples,
        "image_shape": list(expected.image_shape),
    }
    made_for = meta.get("train_subset")  # absent: a store from before subsets, the full split
    if made_for != expected.train_subset:
        # the length and fingerprint differ because the subsets do: name the subsets instead
        others = [
            f"{key}: expected {wanted[key]!r}, found {meta.get(key)!r}"
            for key in ("dataset", "split", "image_shape")
            if meta.get(key) != wanted[key]
        ]
        setting = "null" if made_for is None else made_for
        raise PoisonStoreError(
            f"poison store: '{file}' was made for {_subset_name(made_for)}, this data module "
            f"uses {_subset_name(expected.train_subset)} (set "
            f"--data.init_args.train_subset={setting})" + "".join(f"; {d}" for d in others)
        )
    differences = [
        f"{key}: expected {want!r}, found {meta.get(key)!r}"
        for key, want in wanted.items()
        if meta.get(key) != want
    ]
    fingerprint = _fingerprint_difference(expected.fingerprint, meta.get("fingerprint"))
    if fingerprint is not None:
        differences.append(fingerprint)
    if differences:
        raise PoisonStoreError(
            f"poison store: '{file}' was made for other data than this data module's training "
            f"split; " + "; ".join(differences)
        )


def load_poison(path: str | Path, expected: DatasetInfo | None = None) -> StoredPoison:
    """Read and check a poison store.

    Checks the file format (tensors and plain values only), the version, that a
    ``meta.json`` beside the file (if any) holds the same meta, the tensors' dtypes and
    shapes, the indices, the budget on every sample, and, given ``expected``, that the
    poison was made for that data (training subset, name, split, length, image shape,
    fingerprint, whose mode must match too).

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
    _check_meta_file(file, meta)
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
