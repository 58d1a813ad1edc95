"""Learnable-layer counts (#LP) and the Unlearnable Distance (UD) from SAL tables.

A SAL table holds SAL_l(t) for the checkpoints t = 1..T of one run and its measured
layers l, as written to ``sal.csv`` (one row per checkpoint and layer). With beta the
threshold of the clean reference run (:func:`mean_threshold` of its table),

- ``#LP(run) = |{(t, l): SAL_l(t) > beta}| / T`` (mean number of learnable layers per
  checkpoint); the weighted variant sums the layers' parameter counts instead;
- ``UD = #LP(poisoned) / #LP(clean)``, both with the clean beta.

``UD(t)`` uses the first ``t`` checkpoints of each run (beta stays that of the whole
clean run). Where ``#LP(clean)`` is 0 the ratio is ``inf`` (``nan`` if ``#LP(poisoned)``
is 0 too); with the 2-means beta this cannot happen unless every clean SAL is equal.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unlearn.errors import UnlearnError
from unlearn.sharpness.threshold import mean_threshold, percentile_threshold


class SalTableError(UnlearnError, ValueError):
    """A SAL table that cannot be used: the message names the file and what is wrong."""


class SalTableNotFoundError(UnlearnError, FileNotFoundError):
    """A SAL table path that does not exist."""


#: Columns every ``sal.csv`` has, in this order (more columns may follow).
SAL_COLUMNS: tuple[str, ...] = (
    "epoch",
    "step",
    "layer",
    "numel",
    "sal",
    "s_max",
    "s_min",
    "sal_acc",
    "loss0",
    "seconds",
)
_INT_COLUMNS = ("epoch", "step", "numel")

#: Percentiles of the clean SAL values used as alternative thresholds.
PERCENTILES: tuple[int, ...] = (50, 75, 90)


@dataclass
class SalTable:
    """SAL values of one run: checkpoints x layers.

    Attributes:
        source: Where the values came from (a file path), for error messages.
        checkpoints: ``(epoch, step)`` of each checkpoint, in training order, ``T`` of them.
        layers: Layer names, ``L`` of them, in the order of the first checkpoint.
        numel: Parameter count of each layer, ``[L]``.
        sal: SAL values, ``[T, L]``.
    """

    source: str
    checkpoints: list[tuple[int, int]]
    layers: list[str]
    numel: np.ndarray
    sal: np.ndarray

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], source: str) -> SalTable:
        """Build a table from ``sal.csv`` rows (dicts with at least :data:`SAL_COLUMNS`).

        Raises:
            SalTableError: Naming ``source``: a missing column or unreadable value, a
                duplicate (checkpoint, layer), checkpoints with different layer sets,
                a layer whose parameter count changes, or no rows at all.
        """
        by_ckpt: dict[tuple[int, int], dict[str, float]] = {}
        numel: dict[str, int] = {}
        for i, row in enumerate(rows, start=2):  # line 1 is the header of a file
            missing = [c for c in SAL_COLUMNS if c not in row]
            if missing:
                raise SalTableError(
                    f"{source}: missing column(s) {missing}; expected {SAL_COLUMNS}"
                )
            try:
                key = (int(row["epoch"]), int(row["step"]))
                n, value = int(row["numel"]), float(row["sal"])
            except (TypeError, ValueError) as err:
                raise SalTableError(f"{source}, row {i}: unreadable value ({err})") from None
            layer = str(row["layer"])
            ckpt = by_ckpt.setdefault(key, {})
            if layer in ckpt:
                raise SalTableError(
                    f"{source}: layer {layer!r} twice at epoch {key[0]} step {key[1]}"
                )
            ckpt[layer] = value
            if numel.setdefault(layer, n) != n:
                raise SalTableError(f"{source}: layer {layer!r} has numel {numel[layer]} and {n}")
        if not by_ckpt:
            raise SalTableError(f"{source}: no SAL rows (too few checkpoints: 0)")
        checkpoints = sorted(by_ckpt)
        layers = list(by_ckpt[checkpoints[0]])
        for key in checkpoints[1:]:
            if set(by_ckpt[key]) != set(layers):
                diff = sorted(set(by_ckpt[key]) ^ set(layers))
                raise SalTableError(
                    f"{source}: epoch {key[0]} step {key[1]} has a different layer set than "
                    f"epoch {checkpoints[0][0]} step {checkpoints[0][1]} (differing: {diff})"
                )
        sal = np.array([[by_ckpt[k][name] for name in layers] for k in checkpoints])
        return cls(source, checkpoints, layers, np.array([numel[n] for n in layers]), sal)

    @classmethod
    def read(cls, path: str | Path) -> SalTable:
        """Read a ``sal.csv`` file (see :data:`SAL_COLUMNS`)."""
        path = Path(path)
        if not path.is_file():
            raise SalTableNotFoundError(f"{path}: no such SAL table")
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in SAL_COLUMNS if c not in header]
            if missing:
                raise SalTableError(f"{path}: missing column(s) {missing}; expected {SAL_COLUMNS}")
            return cls.from_rows(reader, str(path))

    def first(self, t: int | None) -> SalTable:
        """The table of the first ``t`` checkpoints (all where ``t`` is None).

        Raises:
            ValueError: ``t`` exceeds the number of checkpoints.
        """
        if t is None:
            return self
        if not 1 <= t <= len(self.checkpoints):
            raise SalTableError(
                f"{self.source}: too few checkpoints: {len(self.checkpoints)}, need {t}"
            )
        return SalTable(self.source, self.checkpoints[:t], self.layers, self.numel, self.sal[:t])

    def aligned(self, layers: Sequence[str]) -> np.ndarray:
        """SAL values ``[T, L]`` with the columns in the order of ``layers``."""
        index = {name: i for i, name in enumerate(self.layers)}
        return self.sal[:, [index[name] for name in layers]]


def check_same_layers(clean: SalTable, poisoned: SalTable) -> None:
    """Raise ``ValueError`` naming both files where the measured layers differ."""
    if set(clean.layers) != set(poisoned.layers):
        only_c = sorted(set(clean.layers) - set(poisoned.layers))
        only_p = sorted(set(poisoned.layers) - set(clean.layers))
        raise SalTableError(
            f"different layer sets: only in {clean.source}: {only_c}; "
            f"only in {poisoned.source}: {only_p}"
        )


def beta(clean: SalTable) -> float:
    """The learnable threshold: exact 2-means midpoint per checkpoint, averaged."""
    return mean_threshold(clean.sal, k=2)


def thresholds(clean: SalTable) -> dict[str, float]:
    """All thresholds of a clean run: ``2means`` (beta), ``3means``, ``p50``, ``p75``, ``p90``.

    The 3-means threshold is the upper cluster boundary (middle/upper midpoint) averaged
    over checkpoints; it needs at least 3 layers. Percentiles pool all clean SAL values.
    """
    out = {"2means": beta(clean)}
    if len(clean.layers) >= 3:
        out["3means"] = mean_threshold(clean.sal, k=3)
    for q in PERCENTILES:
        out[f"p{q}"] = percentile_threshold(clean.sal, q)
    return out


def lp_count(table: SalTable, threshold: float) -> tuple[float, float]:
    """#LP of a run at a threshold.

    Returns:
        (mean number of layers with SAL > threshold per checkpoint, mean summed parameter
        count of those layers per checkpoint).
    """
    above = table.sal > threshold
    t = len(table.checkpoints)
    return float(above.sum() / t), float((above * table.numel[None, :]).sum() / t)


def ratio(num: float, den: float) -> float:
    """``num / den`` with ``inf`` for x/0 and ``nan`` for 0/0."""
    if den == 0:
        return math.nan if num == 0 else math.inf
    return num / den


def ud(clean: SalTable, poisoned: SalTable, t: int | None = None) -> dict[str, Any]:
    """UD of ``poisoned`` against ``clean`` with every threshold variant.

    Args:
        clean: The clean reference run (gives every threshold).
        poisoned: The run to score.
        t: Use the first ``t`` checkpoints of each run (``UD(t)``); all where None.

    Returns:
        A row: ``poisoned``, ``clean`` (sources), ``checkpoints``, ``beta``, ``lp_clean``,
        ``lp_poisoned``, ``ud``, ``lp_weighted_clean``, ``lp_weighted_poisoned``,
        ``ud_weighted``, and for each other threshold ``v`` (``3means``, ``p50``, ...):
        ``beta_v``, ``lp_clean_v``, ``lp_poisoned_v``, ``ud_v``.

    Raises:
        ValueError: Different layer sets, or fewer than ``t`` checkpoints in a run.
    """
    check_same_layers(clean, poisoned)
    betas = thresholds(clean)
    c, p = clean.first(t), poisoned.first(t)
    row: dict[str, Any] = {
        "poisoned": poisoned.source,
        "clean": clean.source,
        "checkpoints": len(p.checkpoints) if t is None else t,
    }
    for name, value in betas.items():
        lc, wc = lp_count(c, value)
        lp_, wp = lp_count(p, value)
        if name == "2means":
            row.update(beta=value, lp_clean=lc, lp_poisoned=lp_, ud=ratio(lp_, lc))
            row.update(lp_weighted_clean=wc, lp_weighted_poisoned=wp, ud_weighted=ratio(wp, wc))
        else:
            row.update(
                {
                    f"beta_{name}": value,
                    f"lp_clean_{name}": lc,
                    f"lp_poisoned_{name}": lp_,
                    f"ud_{name}": ratio(lp_, lc),
                }
            )
    return row
