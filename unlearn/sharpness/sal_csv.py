"""Writing ``sal.csv``: one row per checkpoint and layer (and task, in a multi-task run).

The file is read back by :class:`~unlearn.sharpness.ud.SalTable` (which needs only
:data:`~unlearn.sharpness.ud.SAL_COLUMNS`); the writer adds the accuracy variant's parts and
whether the layer's frozen prefix was cached.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unlearn.io import write_text_atomic
from unlearn.sharpness.ud import SAL_COLUMNS, TASK_COLUMN

#: Columns of a single-task run's ``sal.csv``: the required ones, then extras.
CSV_COLUMNS: tuple[str, ...] = (*SAL_COLUMNS, "acc0", "acc_rise", "acc_drop", "cached")
#: Columns of a multi-task run's ``sal.csv``: those of :data:`CSV_COLUMNS`, then ``task``.
TASK_CSV_COLUMNS: tuple[str, ...] = (*CSV_COLUMNS, TASK_COLUMN)


def columns_of(multi_task: bool) -> tuple[str, ...]:
    """The columns of a multi-task or a single-task run's ``sal.csv``."""
    return TASK_CSV_COLUMNS if multi_task else CSV_COLUMNS


def write_sal_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` (the whole history) to ``path`` atomically (temporary file, rename).

    Args:
        path: The file; replaced as a whole.
        rows: Dicts with the keys of :data:`CSV_COLUMNS`, or of :data:`TASK_CSV_COLUMNS`
            where they have a ``task`` (the first row decides).
    """
    columns = columns_of(bool(rows) and TASK_COLUMN in rows[0])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
