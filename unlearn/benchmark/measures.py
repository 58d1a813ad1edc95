"""The UD measures of a benchmark cell, each against the clean cell of the same seed.

``headline`` is the paper's count UD of ``sal.csv``; ``heldout`` (exploratory (a)) the same
count UD of ``sal_heldout.csv``, SAL on clean held-out images; ``scale_free`` (exploratory
(b)) the count UD of SAL / (L0 + 1) from ``sal.csv``. Each has its own noise floor.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measure:
    """Where a measure's SAL comes from and how the report names it.

    Attributes:
        column: Its UD column of ``results.csv``.
        sal_file: The SAL table in the cell's run directory.
        value: What :meth:`~unlearn.sharpness.ud.SalTable.read` takes from that table.
        name: Its name in sentences (hypotheses' answers).
        header: Its column header in the report's exploratory table.
        label: The heading of its noise-floor part of the report.
    """

    column: str
    sal_file: str
    value: str
    name: str
    header: str
    label: str


#: The measures by name, the headline first (the order of the report's tables and floors).
MEASURES: dict[str, Measure] = {
    "headline": Measure(
        "ud", "sal.csv", "sal", "UD", "UD (headline)", "Headline UD (count UD of sal.csv)"
    ),
    "heldout": Measure(
        "ud_heldout",
        "sal_heldout.csv",
        "sal",
        "held-out UD",
        "UD held-out",
        "Exploratory (a): held-out UD (count UD of sal_heldout.csv, SAL on clean held-out images)",
    ),
    "scale_free": Measure(
        "ud_scale_free",
        "sal.csv",
        "scale_free",
        "scale-free UD",
        "UD scale-free",
        "Exploratory (b): scale-free UD (count UD of SAL / (L0 + 1) from sal.csv)",
    ),
}
