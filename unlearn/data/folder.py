"""ImageFolder trees (``{root}/{split}/{class}/*.png``), e.g. ImageNet-100-style subsets."""

from __future__ import annotations

from pathlib import Path

import torch

from unlearn.data.base import DataFileError, DataNotFoundError
from unlearn.data.classification import ImageClassificationDataModule, crop_and_flip
from unlearn.data.datasets import (
    FileImageSource,
    FingerprintMode,
    Transform,
    check_fingerprint_mode,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def scan_image_folder(directory: Path) -> tuple[list[Path], list[str], torch.Tensor]:
    """List ``directory/{class}/{file}`` in sorted order.

    Returns:
        The files, the sorted class names, and each file's class index ``int64 [N]``.
    """
    if not directory.is_dir():
        raise DataNotFoundError(
            f"ImageFolderDataModule: expected directory '{directory}' with one sub-folder per "
            "class was not found."
        )
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir())
    paths: list[Path] = []
    labels: list[int] = []
    empty: list[Path] = []  # class folders without an image: a class no sample has
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (directory / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            empty.append(directory / name)
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise DataNotFoundError(
            f"ImageFolderDataModule: '{directory}' holds no images in class sub-folders "
            f"(looked for {sorted(IMAGE_SUFFIXES)})."
        )
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataFileError(
            f"ImageFolderDataModule: class folder '{empty[0]}'{more} holds no images (looked "
            f"for {sorted(IMAGE_SUFFIXES)}); add its images or remove the folder"
        )
    return paths, classes, torch.tensor(labels, dtype=torch.long)


class ImageFolderDataModule(ImageClassificationDataModule):
    """Images in ``{root}/{train_dir}/{class}/`` and ``{root}/{test_dir}/{class}/``.

    Class indices follow the sorted class folder names of the training split; the test split
    must have the same class folders. Images are resized to ``image_size`` and read lazily.

    Args:
        num_classes: expected number of class folders (checked).
        image_size: side length in pixels that every image is resized to.
        channels: 3 (RGB) or 1 (grayscale).
        train_dir: training split's folder under ``root``.
        test_dir: test split's folder under ``root``.
        name: the data set's name recorded in poisons.
        fingerprint: how the training split is identified to poisons: ``"content"`` (SHA-256
            of every image file's bytes, names and labels; reads every file once) or
            ``"stat"`` (file names, byte sizes and labels only: cheap, but a replaced image
            of the same byte size goes unnoticed). A poison is checked in the mode it was
            made with.
        **others: see :class:`ImageClassificationDataModule`.
    """

    def __init__(
        self,
        root: str | Path = "data/imagenet100",
        num_classes: int = 100,
        image_size: int = 224,
        channels: int = 3,
        train_dir: str = "train",
        test_dir: str = "val",
        name: str = "imagefolder",
        batch_size: int = 128,
        num_workers: int = 4,
        val_fraction: float = 0.0,
        seed: int = 0,
        augment: bool = True,
        poison: str | Path | None = None,
        poison_ratio: float = 1.0,
        fingerprint: FingerprintMode = "content",
        train_subset: int | None = None,
    ) -> None:
        super().__init__(
            root,
            batch_size,
            num_workers,
            val_fraction,
            seed,
            augment,
            False,
            poison,
            poison_ratio,
            train_subset,
        )
        self.fingerprint_mode = check_fingerprint_mode(fingerprint, "ImageFolderDataModule")
        self.num_classes = num_classes
        self.image_shape = (channels, image_size, image_size)
        self.name = name
        self.train_dir = train_dir
        self.test_dir = test_dir
        self._classes: list[str] | None = None

    def load_split(self, train: bool) -> FileImageSource:
        """Scan one split's folder tree."""
        directory = self.root / (self.train_dir if train else self.test_dir)
        paths, classes, labels = scan_image_folder(directory)
        if self._classes is None:
            if len(classes) != self.num_classes:
                raise DataFileError(
                    f"ImageFolderDataModule: num_classes is {self.num_classes} but '{directory}' "
                    f"has {len(classes)} class folders"
                )
            self._classes = classes
        elif classes != self._classes:
            missing = sorted(set(self._classes) ^ set(classes))
            raise DataFileError(
                f"ImageFolderDataModule: '{directory}' has other class folders than the training "
                f"split (differing: {missing[:5]})"
            )
        return FileImageSource(
            paths, labels, self.image_shape[1:], self.image_shape[0], self.fingerprint_mode
        )

    def train_augmentation(self) -> Transform:
        """Random crop with 1/8 padding and horizontal flip."""
        return crop_and_flip(self.image_shape[1:], padding=self.image_shape[-1] // 8)
