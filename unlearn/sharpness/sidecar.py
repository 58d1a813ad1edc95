"""``sal.json``: the settings a ``sal.csv`` was measured with, written beside it.

UD compares two runs measured the same way; a clean reference measured with another probe
size, batch, number of iterations or radius gives other SAL values and so another UD. The
settings therefore travel with every ``sal.csv`` in a sidecar file (``sal.csv`` itself stays
a plain CSV, readable by ``csv``, pandas or a spreadsheet), and every comparison of two runs
(the callback's ``reference:``, ``python -m unlearn ud``) checks them first.

The file (``<name>.json`` for ``<name>.csv``), an object with the keys

- ``format``: :data:`FORMAT`;
- ``settings``: the values of :data:`COMPARED` and of :data:`RECORDED` (a file written
  before ``probe`` existed has none: it is read as ``"train"``, see :data:`DEFAULTS`);
- ``non_finite``: the marker of a diverged run: one entry ``{"epoch", "step", "layers"}``
  (and ``"task"`` in a multi-task run) per checkpoint and task whose SAL is ``nan`` or
  ``inf`` in ``sal.csv`` (``[]`` for a finite run).

It is rewritten atomically with ``sal.csv`` (after it) at every measurement.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unlearn.io import write_json_atomic
from unlearn.sharpness.ud import TASK_COLUMN, SalTableError

#: Version of the file's layout.
FORMAT = 1

#: Settings that change the SAL values, or which checkpoints UD(t) pairs up
#: (``every_n_epochs``): two runs are compared only where these agree. ``probe`` is the
#: probe's source (``"train"``: the training images as the model sees them; ``"test"``: a
#: clean held-out set): SAL on one is no reference for SAL on the other.
COMPARED: tuple[str, ...] = (
    "probe",
    "probe_size",
    "probe_batch_size",
    "steps_per_iter",
    "eps",
    "iters",
    "lr_min",
    "lr_max",
    "every_n_epochs",
)

#: Settings recorded for the reader but not compared: the layer filter (the measured layer
#: sets themselves are compared, from the tables), the probe draw's seed (a clean and a
#: poisoned run draw from different data anyway) and the callback's ``name`` (the file stem
#: and TensorBoard prefix). ``cache_prefix`` and ``pair_directions`` give the same values and
#: are left out.
RECORDED: tuple[str, ...] = ("layers", "seed", "name")

#: The value of a compared setting that a sidecar written before it existed does not record.
DEFAULTS: dict[str, Any] = {"probe": "train"}


class SalSettingsError(SalTableError):
    """Two SAL tables measured with different settings, or an unreadable ``sal.json``."""


def sidecar_path(csv_path: str | Path) -> Path:
    """``sal.json`` for ``sal.csv`` (the name with ``.json`` for its suffix)."""
    csv_path = Path(csv_path)
    path = csv_path.with_suffix(".json")
    return path if path != csv_path else csv_path.with_name(f"{csv_path.name}.json")


def non_finite_checkpoints(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per checkpoint (and task) with a ``nan``/``inf`` SAL, in the rows' order.

    Args:
        rows: ``sal.csv`` rows (``epoch``, ``step``, ``layer``, ``sal``, maybe ``task``).
    """
    found: dict[tuple[int, int, Any], list[str]] = {}
    for row in rows:
        if not math.isfinite(float(row["sal"])):
            key = (int(row["epoch"]), int(row["step"]), row.get(TASK_COLUMN))
            found.setdefault(key, []).append(str(row["layer"]))
    return [
        {"epoch": e, "step": s, **({} if t is None else {"task": t}), "layers": layers}
        for (e, s, t), layers in found.items()
    ]


def write_sidecar(
    csv_path: str | Path, settings: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> Path:
    """Write the sidecar of ``csv_path`` atomically; return its path.

    Args:
        csv_path: The ``sal.csv`` it describes.
        settings: At least the keys of :data:`COMPARED` (JSON values).
        rows: The rows of ``sal.csv`` (for the ``non_finite`` marker).
    """
    missing = [k for k in COMPARED if k not in settings]
    if missing:
        raise ValueError(f"SAL settings without {missing}")
    path = sidecar_path(csv_path)
    value = {
        "format": FORMAT,
        "settings": dict(settings),
        "non_finite": non_finite_checkpoints(rows),
    }
    write_json_atomic(path, value)
    return path


def read_sidecar(csv_path: str | Path) -> dict[str, Any] | None:
    """The settings recorded beside ``csv_path``; ``None`` where it has no sidecar.

    Raises:
        SalSettingsError: The sidecar is not JSON or has no ``settings`` object (naming it).
    """
    path = sidecar_path(csv_path)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SalSettingsError(f"{path}: unreadable SAL settings ({err})") from None
    if not isinstance(value, dict) or not isinstance(value.get("settings"), dict):
        raise SalSettingsError(
            f"{path}: expected a JSON object with a 'settings' object, found "
            f"{type(value).__name__}{'' if not isinstance(value, dict) else ' without it'}"
        )
    return value["settings"]


def differences(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """``"field a vs b"`` for each field of :data:`COMPARED` whose values differ.

    A field a side does not record has its :data:`DEFAULTS` value (``"(not recorded)"``
    where it has none).
    """

    def value(settings: Mapping[str, Any], key: str) -> Any:
        return settings.get(key, DEFAULTS.get(key, "(not recorded)"))

    return [
        f"{k} {value(ours, k)} vs {value(theirs, k)}"
        for k in COMPARED
        if value(ours, k) != value(theirs, k)
    ]


def unchecked_note(csv_file: str | Path, other: str) -> str:
    """The warning for a ``sal.csv`` without a sidecar, compared with ``other`` (a label)."""
    return (
        f"{csv_file} has no {sidecar_path(csv_file).name} beside it: cannot check that it was "
        f"measured with the same SAL settings as {other}"
    )


def require_same_settings(
    ours: Mapping[str, Any],
    ours_file: str | Path | None,
    theirs: Mapping[str, Any],
    theirs_file: str | Path,
) -> None:
    """Refuse two runs measured with different settings (the fields of :data:`COMPARED`).

    Args:
        ours: One run's settings.
        ours_file: Its ``sal.csv``; ``None`` for the run being measured ("this run").
        theirs: The other run's settings.
        theirs_file: Its ``sal.csv``.

    Raises:
        SalSettingsError: One line naming both sidecars (or "this run's settings") and each
            differing field, ``ours`` value first.
    """
    found = differences(ours, theirs)
    if found:
        mine = "this run's settings" if ours_file is None else str(sidecar_path(ours_file))
        raise SalSettingsError(
            f"{mine} and {sidecar_path(theirs_file)} record different SAL settings: "
            f"{', '.join(found)}; UD compares runs measured the same way"
        )
