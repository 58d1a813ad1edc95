"""File writes: atomic replacements and whole-row appends to a CSV log.

After an atomic write a reader sees the old file (or directory) or the new one, never a
partial one. :func:`atomic_path` and :func:`atomic_directory` are the one implementation of
"write beside, then rename"; the other writers here are built on them.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _beside(path: Path, suffix: str) -> Path:
    """A fresh hidden name in ``path``'s directory (same file system, so rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.{suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write the file to.

    When the block ends without error the file is flushed to disk and renamed onto ``path``
    (replacing an existing file); when the block raises, the temporary file is removed and
    ``path`` is left as it was. The temporary file does not exist yet: the writer creates it
    (``torch.save(obj, tmp)``, ``fig.savefig(tmp)``, ``open(tmp, "wb")``), so it gets the usual
    permissions.

    Args:
        path: the file to write (its directory is created if missing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(path, "tmp")
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to the temporary file of '{path}'")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory beside ``path`` for the caller to fill.

    When the block ends without error the staging directory is renamed to ``path``; an
    existing ``path`` is moved aside first and deleted after (so ``path`` is, for an instant,
    absent, but never partial). When the block raises, the staging directory is deleted and
    ``path`` is left as it was. Callers decide beforehand whether replacing is allowed.

    Args:
        path: the directory to create or replace (its parent is created if missing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _beside(path, "partial")
    old = _beside(path, "old")
    staging.mkdir()
    try:
        yield staging
        if path.exists():
            os.replace(path, old)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not path.exists():  # the last rename failed: put the old one back
            os.replace(old, path)
        raise
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    with atomic_path(path) as tmp, open(tmp, "xb") as file:
        file.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, value: Any) -> None:
    """Atomically write ``value`` as indented JSON."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def append_csv_row(path: str | Path, fields: Sequence[str], row: Mapping[str, Any]) -> None:
    """Append one row to the CSV file ``path``, writing the header first if it is new.

    One ``write`` per row, so an interrupted sweep leaves whole rows (a log to resume from).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        if new:
            writer.writeheader()
        writer.writerow(row)
