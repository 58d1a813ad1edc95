"""A clean run's ``sal.csv`` as the reference of UD during training, checked against a model.

A single-task reference holds one table; a multi-task one (a ``task`` column) one table per
task. :meth:`SalReference.resolve` pairs the reference with the measured layers of a model
(``None``: the single task; otherwise task names) and refuses every mismatch, naming the file.
A reference must be finite (a clean run that diverged is refused when it is read), and it
carries the settings recorded beside it (``sal.json``, :mod:`unlearn.sharpness.sidecar`) for
the caller to compare with its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unlearn.sharpness.sidecar import read_sidecar, sidecar_path
from unlearn.sharpness.ud import SalTable, SalTableError, sal_tasks


class SalReference:
    """The clean run's tables: ``{None: table}`` or ``{task: table}`` in the file's order.

    Args:
        tables: The tables.
        source: The file they came from, for error messages.
        settings: The SAL settings recorded with it (``None``: not recorded).
    """

    def __init__(
        self,
        tables: Mapping[str | None, SalTable],
        source: str,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.tables = dict(tables)
        self.source = source
        self.settings = dict(settings) if settings is not None else None

    @classmethod
    def read(cls, path: str | Path) -> SalReference:
        """Read a single-task or a multi-task run's ``sal.csv`` and its ``sal.json``.

        Raises:
            SalTableError: An unreadable file, or a non-finite SAL value (naming the file,
                the epoch and the layers).
        """
        tables = SalTable.read_tasks(path) if sal_tasks(path) else {None: SalTable.read(path)}
        for table in tables.values():
            table.require_finite()
        return cls(tables, str(path), read_sidecar(path))

    @property
    def settings_source(self) -> str:
        """The sidecar the settings come from (it may not exist)."""
        return str(sidecar_path(self.source))

    @property
    def multi_task(self) -> bool:
        """Whether the file has a ``task`` column."""
        return None not in self.tables

    def resolve(self, layers: Mapping[str | None, Sequence[str]]) -> dict[str | None, SalTable]:
        """The reference table of each measured task, after checking that they match.

        Args:
            layers: The measured layers: ``{None: names}`` for a single-task model,
                ``{task: names}`` for a multi-task one.

        Returns:
            ``{None: table}`` or ``{task: table}``; a multi-task reference with one task
            serves a single-task model.

        Raises:
            SalTableError: A multi-task reference of several tasks for a single-task model (or a
                single-task one for a multi-task model), other tasks, or other layers; the
                message names the file and what differs.
        """
        if None in layers:
            if self.multi_task and len(self.tables) > 1:
                raise SalTableError(
                    f"the reference {self.source} is a multi-task run's (tasks "
                    f"{list(self.tables)}); this model has a single task"
                )
            (table,) = self.tables.values()
            _check_layers(layers[None], table, "")
            return {None: table}
        if not self.multi_task:
            raise SalTableError(
                f"the reference {self.source} has no task column; a multi-task run needs a "
                "multi-task clean run's sal.csv"
            )
        ours, theirs = list(layers), list(self.tables)
        if set(ours) != set(theirs):
            raise SalTableError(
                f"the tasks differ from the reference {self.source}: only in this model: "
                f"{[t for t in ours if t not in theirs]}; only in the reference: "
                f"{[t for t in theirs if t not in ours]}"
            )
        for task, names in layers.items():
            _check_layers(names, self.tables[task], f" of {task}")
        return {task: self.tables[task] for task in ours}


def _check_layers(names: Sequence[str], reference: SalTable, what: str) -> None:
    if set(names) != set(reference.layers):
        raise SalTableError(
            f"the measured layers{what} differ from the reference {reference.source}: only in "
            f"this model: {sorted(set(names) - set(reference.layers))}; only in the reference: "
            f"{sorted(set(reference.layers) - set(names))}"
        )
