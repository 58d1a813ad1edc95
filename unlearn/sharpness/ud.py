"""Learnable-layer counts (#LP) and the Unlearnable Distance (UD) from SAL tables.

A SAL table holds SAL_l(t) for the checkpoints t = 1..T of one run and its measured
layers l, as written to ``sal.csv`` (one row per checkpoint and layer). A multi-task run's
file has a further column ``task`` (one row per checkpoint, task and layer); a table is then
one task's rows (``SalTable.read(path, task=...)``, :func:`sal_tasks` lists them). With beta the
threshold of the clean reference run (:func:`mean_threshold` of its table),

- ``#LP(run) = |{(t, l): SAL_l(t) > beta}| / T`` (mean number of learnable layers per
  checkpoint); the weighted variant sums the layers' parameter counts instead;
- ``UD = #LP(poisoned) / #LP(clean)``, both with the clean beta.

``UD(t)`` uses the first ``t`` checkpoints of each run (beta stays that of the whole
clean run). Where ``#LP(clean)`` is 0 the ratio is ``inf`` (``nan`` if ``#LP(poisoned)``
is 0 too); with the 2-means beta this cannot happen unless every clean SAL is equal.

A SAL value that is not finite (``nan``, ``inf``: a run that diverged) never enters a count:
``nan > beta`` is false, so it would read as "not learnable". :meth:`SalTable.divergence`
finds the first such checkpoint; :func:`ud` refuses a clean reference that has one and
raises :class:`SalDivergedError` for a poisoned run that has one.
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


@dataclass(frozen=True)
class Divergence:
    """The first checkpoint of a SAL table with a non-finite value.

    Attributes:
        source: The table's file.
        epoch: The checkpoint's epoch (0-based, as in ``sal.csv``).
        step: Its global step.
        layers: The layers whose SAL is ``nan`` or ``inf`` there, in the table's order.
        values: Their values, as written (``nan``, ``inf``, ``-inf``).
        task: The task of a multi-task run's table; ``None`` for a single-task run.
    """

    source: str
    epoch: int
    step: int
    layers: list[str]
    values: list[str]
    task: str | None = None

    def describe(self) -> str:
        """``diverged at epoch E (step S), task T, layer(s) a, b (SAL nan, nan)``."""
        task = "" if self.task is None else f", task {self.task}"
        shown = ", ".join(self.layers[:4]) + (
            f" and {len(self.layers) - 4} more" if len(self.layers) > 4 else ""
        )
        values = ", ".join(dict.fromkeys(self.values))
        return (
            f"diverged at epoch {self.epoch} (step {self.step}){task}, layer(s) {shown} "
            f"(SAL {values})"
        )


class SalDivergedError(SalTableError):
    """A run whose SAL is not finite at some checkpoint: it has no UD.

    Attributes:
        divergence: Where it happened first.
    """

    def __init__(self, divergence: Divergence) -> None:
        super().__init__(f"{divergence.source}: {divergence.describe()}; no UD for this run")
        self.divergence = divergence


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

#: Column naming the task of each row in a multi-task run's ``sal.csv``.
TASK_COLUMN = "task"

#: What a table holds per (checkpoint, layer): ``sal``, the paper's SAL (a loss change);
#: ``scale_free``, SAL / (L0 + 1) with L0 the probe loss at the checkpoint (``loss0``), an
#: exploratory variant that does not grow with the logit scale (docs/sal_ud.md).
SAL_VALUES: tuple[str, ...] = ("sal", "scale_free")

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
        task: The task of a multi-task run's table; ``None`` for a single-task run.
    """

    source: str
    checkpoints: list[tuple[int, int]]
    layers: list[str]
    numel: np.ndarray
    sal: np.ndarray
    task: str | None = None

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[Mapping[str, Any]],
        source: str,
        task: str | None = None,
        value: str = "sal",
    ) -> SalTable:
        """Build a table from ``sal.csv`` rows (dicts with at least :data:`SAL_COLUMNS`).

        Args:
            rows: The rows; those of a multi-task run also have a ``task``.
            source: Where they came from, for error messages.
            task: Keep only this task's rows; needed where the rows hold several tasks.
            value: What the table holds, one of :data:`SAL_VALUES`.

        Raises:
            SalTableError: Naming ``source``: a missing column or unreadable value, a
                duplicate (checkpoint, layer), checkpoints with different layer sets,
                a layer whose parameter count changes, or no rows at all; several tasks and
                no ``task`` chosen, or a ``task`` that is not in the rows (listing those that
                are).
        """
        if value not in SAL_VALUES:
            raise SalTableError(f"SAL value must be one of {list(SAL_VALUES)}, got {value!r}")
        rows = list(rows)
        found = _tasks_of(rows, source)
        if task is None and len(found) > 1:
            raise SalTableError(
                f"{source}: a multi-task SAL table (tasks {found}); choose one task, e.g. "
                f"SalTable.read(path, task={found[0]!r})"
            )
        if task is not None and task not in found:
            present = f"tasks in it: {found}" if found else "it has no task column"
            raise SalTableError(f"{source}: no rows of task {task!r}; {present}")
        if found:
            task = task or found[0]
        by_ckpt: dict[tuple[int, int], dict[str, float]] = {}
        numel: dict[str, int] = {}
        for i, row in enumerate(rows, start=2):  # line 1 is the header of a file
            if task is not None and row[TASK_COLUMN] != task:
                continue
            missing = [c for c in SAL_COLUMNS if c not in row]
            if missing:
                raise SalTableError(
                    f"{source}: missing column(s) {missing}; expected {SAL_COLUMNS}"
                )
            try:
                key = (int(row["epoch"]), int(row["step"]))
                n, number = int(row["numel"]), float(row["sal"])
                if value == "scale_free":
                    loss0 = float(row["loss0"])
                    if not loss0 >= 0:  # a mean loss; also refuses nan
                        raise ValueError(f"loss0 must be >= 0 for scale_free, got {loss0}")
                    number /= loss0 + 1.0
            except (TypeError, ValueError) as err:
                raise SalTableError(f"{source}, row {i}: unreadable value ({err})") from None
            layer = str(row["layer"])
            ckpt = by_ckpt.setdefault(key, {})
            if layer in ckpt:
                raise SalTableError(
                    f"{source}: layer {layer!r} twice at epoch {key[0]} step {key[1]}"
                )
            ckpt[layer] = number
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
        return cls(source, checkpoints, layers, np.array([numel[n] for n in layers]), sal, task)

    @classmethod
    def read(cls, path: str | Path, task: str | None = None, value: str = "sal") -> SalTable:
        """Read a ``sal.csv`` file (see :data:`SAL_COLUMNS`), or one task's rows of it.

        Args:
            path: The file.
            task: The task to read from a multi-task run's file (one with a ``task``
                column); may be left out where the file holds a single task.
            value: What the table holds, one of :data:`SAL_VALUES`.
        """
        return cls.from_rows(_read_rows(path), str(path), task, value)

    @classmethod
    def read_tasks(cls, path: str | Path, value: str = "sal") -> dict[str, SalTable]:
        """Every task's table of a multi-task run's file, in the order of the file.

        Raises:
            SalTableError: The file has no ``task`` column (a single-task run).
        """
        rows = _read_rows(path)
        tasks = _tasks_of(rows, str(path))
        if not tasks:
            raise SalTableError(f"{path}: no task column; it is a single-task SAL table")
        return {task: cls.from_rows(rows, str(path), task, value) for task in tasks}

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
        return SalTable(
            self.source, self.checkpoints[:t], self.layers, self.numel, self.sal[:t], self.task
        )

    def aligned(self, layers: Sequence[str]) -> np.ndarray:
        """SAL values ``[T, L]`` with the columns in the order of ``layers``."""
        index = {name: i for i, name in enumerate(self.layers)}
        return self.sal[:, [index[name] for name in layers]]

    def divergence(self) -> Divergence | None:
        """The first checkpoint with a ``nan`` or ``inf`` SAL value; ``None`` if all are finite."""
        bad = ~np.isfinite(self.sal)
        if not bad.any():
            return None
        t = int(np.flatnonzero(bad.any(axis=1))[0])
        columns = np.flatnonzero(bad[t])
        epoch, step = self.checkpoints[t]
        return Divergence(
            self.source,
            epoch,
            step,
            [self.layers[i] for i in columns],
            [str(float(self.sal[t, i])) for i in columns],
            self.task,
        )

    def require_finite(self) -> None:
        """Refuse a clean reference with a non-finite value (its beta would be meaningless).

        Raises:
            SalTableError: Naming the file, the epoch and the layers.
        """
        found = self.divergence()
        if found is not None:
            raise SalTableError(
                f"{self.source}: {found.describe()}; a clean reference needs finite SAL values "
                "(rerun it, e.g. with a lower learning rate)"
            )


def sal_tasks(path: str | Path) -> list[str]:
    """The tasks of a ``sal.csv`` file in the order they first appear (``[]``: no task column)."""
    return _tasks_of(_read_rows(path), str(path))


def _read_rows(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if path.is_dir():
        raise SalTableError(f"{path}: a directory, not a SAL table (expected its sal.csv)")
    if not path.is_file():
        raise SalTableNotFoundError(f"{path}: no such SAL table")
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in SAL_COLUMNS if c not in header]
            if missing:
                raise SalTableError(f"{path}: missing column(s) {missing}; expected {SAL_COLUMNS}")
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise SalTableError(f"{path}: not a CSV text file ({err})") from None


def _tasks_of(rows: Sequence[Mapping[str, Any]], source: str) -> list[str]:
    """The distinct tasks of rows, in order; ``[]`` where the rows have no task."""
    tasks = list(dict.fromkeys(row.get(TASK_COLUMN) or None for row in rows))
    if None in tasks and len(tasks) > 1:
        raise SalTableError(f"{source}: some rows have a task and some have none")
    return [str(t) for t in tasks if t is not None]


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
        A row: ``poisoned``, ``clean`` (sources), ``task`` (only where ``poisoned`` is one
        task of a multi-task run), ``checkpoints``, ``beta``, ``lp_clean``,
        ``lp_poisoned``, ``ud``, ``lp_weighted_clean``, ``lp_weighted_poisoned``,
        ``ud_weighted``, and for each other threshold ``v`` (``3means``, ``p50``, ...):
        ``beta_v``, ``lp_clean_v``, ``lp_poisoned_v``, ``ud_v``.

    Raises:
        SalTableError: Different layer sets, fewer than ``t`` checkpoints in a run, or a
            non-finite value in ``clean``.
        SalDivergedError: A non-finite value in ``poisoned`` (at any checkpoint, also one
            after the first ``t``: a run that diverged has no UD).
    """
    check_same_layers(clean, poisoned)
    clean.require_finite()
    diverged = poisoned.divergence()
    if diverged is not None:
        raise SalDivergedError(diverged)
    betas = thresholds(clean)
    c, p = clean.first(t), poisoned.first(t)
    row: dict[str, Any] = {"poisoned": poisoned.source, "clean": clean.source}
    if poisoned.task is not None:
        row["task"] = poisoned.task
    row["checkpoints"] = len(p.checkpoints) if t is None else t
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
