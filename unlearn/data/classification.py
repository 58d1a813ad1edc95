"""The image-classification data module that every classification data set subclasses."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from unlearn.data.base import BaseDataModule, DatasetInfo
from unlearn.data.datasets import (
    ImageSource,
    IndexedImageDataset,
    PoisonOverlay,
    SubsetImageSource,
    Transform,
    balanced_subset,
)
from unlearn.data.poison_store import load_poison
from unlearn.errors import ConfigError, check_number


class ImageClassificationDataModule(BaseDataModule):
    """Serves a classification data set as dict batches, optionally poisoned.

    Batches are ``{"image": float [B, C, H, W] in [0, 1], "label": int64 [B],
    "index": int64 [B]}`` where ``index`` is the position in the training split.
    Images are not normalised; models see pixel values in ``[0, 1]``.

    Validation uses ``val_fraction`` of the training split (held out by ``seed``, served clean
    and without augmentation) or, when ``val_fraction`` is 0, the test split.

    With ``train_subset`` the training split *is* a class-balanced subset of the data set's
    training split (:func:`~unlearn.data.datasets.balanced_subset`: ``train_subset // K`` per
    class, one more for the first ``train_subset % K`` classes, drawn with a fixed seed, so
    that it does not change with ``seed`` or a run's ``seed_everything``), indexed
    ``0..train_subset-1`` in the original order: validation split, poisons, probe set and
    :meth:`info` see only the subset (``train_source.indices`` holds the original positions).

    Args:
        root: directory holding the data set's files.
        batch_size: samples per batch.
        num_workers: data loader worker processes.
        val_fraction: fraction of the training split held out for validation, in ``[0, 1)``.
        seed: seed of the validation split and of the poisoned subset.
        augment: random augmentation of training images (each data set defines its own).
        download: fetch missing files from the internet (torchvision data sets only).
        poison: directory of a stored poison (``poison.pt`` + ``meta.json``) made for this
            data set's training split; ``None`` trains on clean data.
        poison_ratio: fraction of the training samples served poisoned, in ``[0, 1]``; the
            subset is drawn by ``seed`` from the samples the poison covers.
        train_subset: serve this many samples of the training split as the training split
            (class-balanced, fixed; see above); ``None``: the whole split. Must be below the
            split's size; a class with too few samples is refused.
    """

    #: the data set's name as recorded in a poison's meta
    name: str = "images"
    num_classes: int
    image_shape: tuple[int, int, int]

    def __init__(
        self,
        root: str | Path = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        val_fraction: float = 0.0,
        seed: int = 0,
        augment: bool = True,
        download: bool = False,
        poison: str | Path | None = None,
        poison_ratio: float = 1.0,
        train_subset: int | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        owner = type(self).__name__
        check_number(owner, "val_fraction", val_fraction, minimum=0.0, below=1.0)
        check_number(owner, "poison_ratio", poison_ratio, minimum=0.0, maximum=1.0)
        if train_subset is not None and (
            isinstance(train_subset, bool) or not isinstance(train_subset, int)
        ):
            raise ConfigError(
                f"{owner}: train_subset must be a whole number or null, got {train_subset!r}"
            )
        check_number(owner, "train_subset", train_subset, minimum=1)
        self.root = Path(root)
        self.val_fraction = val_fraction
        self.augment = augment
        self.download = download
        self.poison = Path(poison) if poison is not None else None
        self.poison_ratio = poison_ratio
        self.train_subset = train_subset
        self._train_source: ImageSource | None = None
        self._test_source: ImageSource | None = None
        self._overlay: PoisonOverlay | None = None

    # ------------------------------------------------------------------ subclass interface
    @abstractmethod
    def load_split(self, train: bool) -> ImageSource:
        """Read the training (``train=True``) or test split; raise a clear error if missing."""

    def train_augmentation(self) -> Transform | None:
        """Random augmentation of one training image ``float [C, H, W]`` (default: none)."""
        return None

    def fetch(self) -> None:
        """Download the data set's files when ``download`` is set (default: nothing to fetch)."""

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Download once per node when ``download`` is set, then read the splits and poison.

        Read here, before the trainer's loggers create the run's directory: a missing or bad
        file (or poison) stops the run before it has written anything. ``setup`` finds them
        read (in another process it reads them itself).
        """
        if self.download:
            self.fetch()
        self.setup()

    def setup(self, stage: str | None = None) -> None:
        """Read the splits and the poison (once); check the validation split's size."""
        self._read_splits()
        self._split_indices()
        if self.poison is not None and self._overlay is None:
            self._overlay = self._load_overlay()

    def _read_splits(self) -> None:
        if self._train_source is None:
            train = self.load_split(train=True)
            test = self.load_split(train=False)
            if self.train_subset is not None:
                indices = balanced_subset(
                    train.labels, self.train_subset, self.num_classes, type(self).__name__
                )
                train = SubsetImageSource(train, indices)
            self._train_source, self._test_source = train, test

    # ------------------------------------------------------------------ splits
    @property
    def train_source(self) -> ImageSource:
        """The clean training split, the subset if ``train_subset`` (reads it on first use)."""
        self._read_splits()
        assert self._train_source is not None
        return self._train_source

    @property
    def test_source(self) -> ImageSource:
        """The clean test split (reads it on first use)."""
        self._read_splits()
        assert self._test_source is not None
        return self._test_source

    def _split_indices(self) -> tuple[Tensor, Tensor]:
        """Training-split indices ``(fit, validation)``; validation empty if not held out."""
        n = len(self.train_source)
        n_val = round(self.val_fraction * n)
        if self.val_fraction > 0 and not 0 < n_val < n:
            raise ConfigError(
                f"{type(self).__name__}: val_fraction {self.val_fraction} of the {n} training "
                f"samples holds out {n_val} for validation, leaving {n - n_val} to train on; "
                "both need at least 1 (or set val_fraction 0 to validate on the test split)"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return order[n_val:].sort().values, order[:n_val].sort().values

    def info(self) -> DatasetInfo:
        """Identity of the clean training split, recorded in and checked against poisons."""
        source = self.train_source
        return DatasetInfo(
            name=self.name,
            split="train",
            num_samples=len(source),
            image_shape=source.image_shape,
            num_classes=self.num_classes,
            fingerprint=source.fingerprint(),
            train_subset=self.train_subset,
        )

    def _load_overlay(self) -> PoisonOverlay:
        assert self.poison is not None
        stored = load_poison(self.poison, expected=self.info())
        indices, delta = stored.indices, stored.delta
        if self.poison_ratio < 1.0:
            keep = round(self.poison_ratio * indices.numel())
            if keep == 0 and self.poison_ratio > 0:
                raise ConfigError(
                    f"{type(self).__name__}: poison_ratio {self.poison_ratio} of the "
                    f"{indices.numel()} samples of poison '{self.poison}' serves 0 of them "
                    f"poisoned; use at least {1 / indices.numel():.3g} (or poison_ratio 0 to "
                    "train on clean data)"
                )
            generator = torch.Generator().manual_seed(self.seed)
            rows = torch.randperm(indices.numel(), generator=generator)[:keep].sort().values
            indices, delta = indices[rows], delta[rows]
        return PoisonOverlay(delta, indices, len(self.train_source))

    # ------------------------------------------------------------------ datasets
    def clean_train_dataset(self) -> IndexedImageDataset:
        """The whole clean training split, no augmentation (what poisons are made from)."""
        return IndexedImageDataset(self.train_source)

    def probe_dataset(self) -> IndexedImageDataset:
        """The training samples as the model trains on them (poisoned), no augmentation."""
        self.setup()
        fit_indices, _ = self._split_indices()
        return IndexedImageDataset(self.train_source, fit_indices, self._overlay)

    def heldout_probe_dataset(self) -> IndexedImageDataset:
        """The clean test split, no augmentation: the SAL callback's ``probe: test`` source.

        Independent of ``seed``, ``val_fraction``, ``train_subset`` and the poison: the same
        samples in every run on this data set.
        """
        return self.test_dataset()

    def train_dataset(self) -> IndexedImageDataset:
        """The training samples with poison and augmentation."""
        augmentation = self.train_augmentation() if self.augment else None
        return self.probe_dataset().with_transform(augmentation)

    def val_dataset(self) -> IndexedImageDataset:
        """Held-out clean training samples, or the test split when none are held out."""
        _, val_indices = self._split_indices()
        if val_indices.numel() == 0:
            return self.test_dataset()
        return IndexedImageDataset(self.train_source, val_indices)

    def test_dataset(self) -> IndexedImageDataset:
        """The clean test split."""
        return IndexedImageDataset(self.test_source)

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: IndexedImageDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (poisoned and augmented as configured)."""
        return self._loader(self.train_dataset(), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Clean validation batches."""
        return self._loader(self.val_dataset(), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Clean test batches."""
        return self._loader(self.test_dataset(), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Clean test batches."""
        return self.test_dataloader()


def crop_and_flip(size: tuple[int, int], padding: int, flip: bool = True) -> Transform:
    """Random crop with zero padding, then (optionally) a random horizontal flip."""
    steps: list = [v2.RandomCrop(size, padding=padding)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)
