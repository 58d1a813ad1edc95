"""Image sources and the indexed dataset every classification data module serves.

A *source* gives clean images as ``uint8`` tensors ``[C, H, W]`` and integer labels; the
dataset turns them into the batch items the tasks consume::

    {"image": float32 [C, H, W] in [0, 1], "label": int64 [], "index": int64 []}

``index`` is the sample's position in the training split (a data module's ``train_subset``
re-indexes its subset ``0..M-1``), which sample-wise poisons are keyed by. A collated batch
has the same keys with a leading batch dimension.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from unlearn.errors import ConfigError, UnlearnError

Transform = Callable[[Tensor], Tensor]

#: How a file-backed source fingerprints its clean data (the data modules' ``fingerprint``
#: option): ``content`` hashes the bytes of every file that defines a sample; ``stat`` only
#: the file names and byte sizes (no file is read; a same-size replacement goes unnoticed).
#: The fingerprint string starts with the mode and a colon, e.g. ``"content:9f2c..."``.
FingerprintMode = Literal["content", "stat"]
FINGERPRINT_MODES: tuple[str, ...] = ("content", "stat")
#: bytes read at a time while hashing a file
_CHUNK = 1 << 20
#: seed of :func:`balanced_subset`'s draw: a constant, so that a training subset depends on the
#: data and its size only (never on a data module's or a training run's seed)
SUBSET_SEED = 0


def check_fingerprint_mode(mode: str, owner: str) -> FingerprintMode:
    """Return ``mode`` if it is one of :data:`FINGERPRINT_MODES`, else raise naming ``owner``."""
    if mode not in FINGERPRINT_MODES:
        raise UnlearnError(
            f"{owner}: fingerprint must be one of {list(FINGERPRINT_MODES)}, got {mode!r}"
        )
    return mode  # type: ignore[return-value]


def fingerprint_mode_of(fingerprint: object) -> str | None:
    """``content``/``stat`` for a file-backed data fingerprint, ``None`` for plain hex."""
    if not isinstance(fingerprint, str):
        return None
    mode, sep, _ = fingerprint.partition(":")
    return mode if sep and mode in FINGERPRINT_MODES else None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read once in chunks of 1 MiB."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class TensorImageSource:
    """Images held in memory.

    Args:
        images: ``uint8`` tensor ``[N, C, H, W]``.
        labels: ``int64`` tensor ``[N]``.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                "images must be a uint8 tensor [N, C, H, W], "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape [{images.shape[0]}], got {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.long()
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def image(self, i: int) -> Tensor:
        """The ``i``-th image, ``uint8 [C, H, W]``."""
        return self.images[i]

    def fingerprint(self) -> str:
        """SHA-256 of the raw pixels and labels (plain hex; computed once, then cached)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(str(tuple(self.images.shape)).encode())
            digest.update(self.images.contiguous().numpy().tobytes())
            digest.update(self.labels.numpy().astype("int64").tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


class FileImageSource:
    """Images read lazily from files (an ImageFolder tree), resized to a fixed size.

    Args:
        paths: one image file per sample.
        labels: ``int64`` tensor ``[N]``.
        image_size: ``(H, W)`` every image is resized to.
        channels: 3 for RGB, 1 for grayscale.
        fingerprint_mode: how :meth:`fingerprint` identifies the data (see
            :data:`FINGERPRINT_MODES`).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Tensor,
        image_size: tuple[int, int],
        channels: int = 3,
        fingerprint_mode: FingerprintMode = "content",
    ) -> None:
        if len(paths) != labels.shape[0]:
            raise ValueError(f"{len(paths)} paths but {labels.shape[0]} labels")
        self.paths = list(paths)
        self.labels = labels.long()
        self.size = image_size
        self.channels = channels
        self.fingerprint_mode = check_fingerprint_mode(fingerprint_mode, "FileImageSource")
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return (self.channels, *self.size)

    def image(self, i: int) -> Tensor:
        """The ``i``-th image, ``uint8 [C, H, W]``, resized with bilinear interpolation."""
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB" if self.channels == 3 else "L")
                if img.size != (self.size[1], self.size[0]):
                    img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
                array = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        except OSError as err:
            raise OSError(f"cannot read image file {path}: {err}") from err
        return array.view(self.size[0], self.size[1], self.channels).permute(2, 0, 1).contiguous()

    def fingerprint(self) -> str:
        """``"{mode}:{sha256}"`` of this clean data; computed on the first call, then cached.

        Both modes hash the image shape and, per sample in order, the relative file name
        (``class/file``) and the label; ``content`` adds the SHA-256 of the file's bytes,
        ``stat`` its byte size instead (the hash unlearn used before content fingerprints).
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(str(self.image_shape).encode())
            for path, label in zip(self.paths, self.labels.tolist(), strict=True):
                name = f"{path.parent.name}/{path.name}"
                if self.fingerprint_mode == "content":
                    digest.update(f"{name}:{label}:{file_sha256(path)}\n".encode())
                else:
                    digest.update(f"{name}:{path.stat().st_size}:{label}\n".encode())
            self._fingerprint = f"{self.fingerprint_mode}:{digest.hexdigest()}"
        return self._fingerprint


def balanced_subset(labels: Tensor, count: int, num_classes: int, owner: str) -> Tensor:
    """Positions of a class-balanced selection of ``count`` samples, sorted.

    Class ``c`` (of ``0..num_classes-1``) gives ``count // num_classes`` samples, one more for
    the first ``count % num_classes`` classes; each class's samples are the first of a random
    order of its members drawn with :data:`SUBSET_SEED`. The selection depends on ``labels``
    and ``count`` only, and a smaller count selects a part of a larger one's samples.

    Args:
        labels: ``int64 [N]`` class of each sample.
        count: samples to select, in ``[1, N)``.
        num_classes: ``K``.
        owner: who has the setting ``train_subset``, for messages (a class name).

    Returns:
        ``int64 [count]`` strictly increasing positions in ``[0, N)``.

    Raises:
        ConfigError: ``count`` is not below ``N``, or a class has fewer samples than it gives.
    """
    n = labels.numel()
    if count >= n:
        raise ConfigError(
            f"{owner}: train_subset {count} is not smaller than the {n} samples of the training "
            "split; leave train_subset unset (null) to train on all of them"
        )
    sizes = torch.bincount(labels, minlength=num_classes)[:num_classes].tolist()
    base, extra = divmod(count, num_classes)
    wants = [base + (c < extra) for c in range(num_classes)]
    short = next((c for c in range(num_classes) if sizes[c] < wants[c]), None)
    if short is not None:
        least = min(sizes)
        # the largest count every class can give: `least` each, one more for the leading
        # classes that have more than `least`
        lead = next(c for c in range(num_classes) if sizes[c] == least)
        raise ConfigError(
            f"{owner}: train_subset {count} takes {wants[short]} samples of class {short} but "
            f"the training split has {sizes[short]} of class {short} (class sizes "
            f"{least}..{max(sizes)}); use train_subset <= {min(least * num_classes + lead, n - 1)}"
        )
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    chosen = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        order = torch.randperm(members.numel(), generator=generator)
        chosen.append(members[order[: wants[c]]])
    return torch.cat(chosen).sort().values


class SubsetImageSource:
    """Some samples of another source, served as positions ``0..M-1`` in the parent's order.

    Args:
        parent: the full source.
        indices: ``int64 [M]`` strictly increasing positions in ``parent``.
    """

    def __init__(self, parent: TensorImageSource | FileImageSource, indices: Tensor) -> None:
        self.parent = parent
        self.indices = torch.as_tensor(indices).long()
        self.labels = parent.labels[self.indices]
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return self.indices.numel()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return self.parent.image_shape

    @property
    def images(self) -> Tensor | None:
        """``uint8 [M, C, H, W]`` for an in-memory parent, else ``None`` (read by :meth:`image`)."""
        images = getattr(self.parent, "images", None)
        return images[self.indices] if isinstance(images, Tensor) else None

    def image(self, i: int) -> Tensor:
        """The ``i``-th image of the subset, ``uint8 [C, H, W]``."""
        return self.parent.image(int(self.indices[i]))

    def fingerprint(self) -> str:
        """SHA-256 of the parent's fingerprint and the selected positions (cached).

        Keeps the parent's mode prefix (``"content:"``/``"stat:"``) if it has one.
        """
        if self._fingerprint is None:
            parent = self.parent.fingerprint()
            digest = hashlib.sha256(f"subset of {parent}:".encode())
            digest.update(self.indices.numpy().astype("<i8").tobytes())
            mode = fingerprint_mode_of(parent)
            self._fingerprint = f"{mode}:{digest.hexdigest()}" if mode else digest.hexdigest()
        return self._fingerprint


ImageSource = TensorImageSource | FileImageSource | SubsetImageSource


class PoisonOverlay:
    """Sample-wise additive perturbations for part of a training split.

    ``poisoned = clamp(clean + delta[row], 0, 1)`` for samples with a row, clean otherwise.

    Args:
        delta: ``[M, C, H, W]`` perturbations (any float dtype; kept as stored).
        indices: ``int64 [M]`` training-split indices the rows of ``delta`` belong to.
        num_samples: length of the training split.
    """

    def __init__(self, delta: Tensor, indices: Tensor, num_samples: int) -> None:
        self.delta = delta
        self.row_of = torch.full((num_samples,), -1, dtype=torch.long)
        self.row_of[indices.long()] = torch.arange(indices.numel())

    def __len__(self) -> int:
        return self.delta.shape[0]

    def apply(self, image: Tensor, index: int) -> Tensor:
        """Perturb one ``float [C, H, W]`` image in ``[0, 1]`` if its index is poisoned."""
        row = int(self.row_of[index])
        if row < 0:
            return image
        return (image + self.delta[row].to(image.dtype)).clamp_(0.0, 1.0)


class IndexedImageDataset(Dataset):
    """A view of a source: a subset of its samples, an optional poison, optional transforms.

    Args:
        source: where the clean images come from.
        indices: which samples of the source this view serves (default: all).
        poison: perturbations applied before ``transform``.
        transform: per-sample transform of ``float [C, H, W]`` images (augmentation).
    """

    def __init__(
        self,
        source: ImageSource,
        indices: Sequence[int] | Tensor | None = None,
        poison: PoisonOverlay | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.source = source
        self.indices = (
            torch.arange(len(source)) if indices is None else torch.as_tensor(indices).long()
        )
        self.poison = poison
        self.transform = transform

    def __len__(self) -> int:
        return self.indices.numel()

    def __getitem__(self, item: int) -> dict[str, Tensor]:
        index = int(self.indices[item])
        image = self.source.image(index).float().div_(255.0)
        if self.poison is not None:
            image = self.poison.apply(image, index)
        if self.transform is not None:
            image = self.transform(image)
        return {
            "image": image,
            "label": self.source.labels[index],
            "index": torch.tensor(index, dtype=torch.long),
        }

    @property
    def labels(self) -> Tensor:
        """``int64 [len(self)]``: the ``label`` of each item, read without loading an image."""
        return self.source.labels[self.indices]

    def with_transform(self, transform: Transform | None) -> IndexedImageDataset:
        """The same samples and poison with another transform."""
        return IndexedImageDataset(self.source, self.indices, self.poison, transform)
