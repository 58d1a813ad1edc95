"""The base data module and the facts about a data set that a poison is checked against."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from lightning import LightningDataModule

from unlearn.errors import UnlearnError


class DataNotFoundError(UnlearnError, FileNotFoundError):
    """A data set's files are missing; the message says which file and how to get it."""


def require_files(dataset: str, root: Path, files: list[str], how_to_get: str) -> None:
    """Raise :class:`DataNotFoundError` naming the first missing file.

    Args:
        dataset: the data set's name, for the message.
        root: the data module's ``root``.
        files: paths relative to ``root`` that must exist.
        how_to_get: one sentence telling the user how to obtain the files.
    """
    for name in files:
        path = root / name
        if not path.is_file():
            raise DataNotFoundError(
                f"{dataset}: expected file '{path}' was not found (root: '{root}'). {how_to_get}"
            )


@dataclass(frozen=True)
class DatasetInfo:
    """What identifies the clean training data a poison was made for.

    Attributes:
        name: data set name, e.g. ``"cifar10"``.
        split: ``"train"``.
        num_samples: length of the split.
        image_shape: ``(C, H, W)``.
        num_classes: number of classes.
        fingerprint: hash of the clean data (see the sources' ``fingerprint``).
    """

    name: str
    split: str
    num_samples: int
    image_shape: tuple[int, int, int]
    num_classes: int
    fingerprint: str

    def to_dict(self) -> dict:
        """Plain-value form for ``meta.json``."""
        out = asdict(self)
        out["image_shape"] = list(self.image_shape)
        return out


class BaseDataModule(LightningDataModule):
    """Base of every data module that ``python -m unlearn fit`` accepts.

    Args:
        batch_size: samples per training batch (evaluation uses the same).
        num_workers: data loader worker processes.
        seed: seed of every random choice the data module makes (splits, subsets).
    """

    def __init__(self, batch_size: int = 128, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
