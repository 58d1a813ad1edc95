"""Image sources and the indexed dataset every classification data module serves.

A *source* gives clean images as ``uint8`` tensors ``[C, H, W]`` and integer labels; the
dataset turns them into the batch items the tasks consume::

    {"image": float32 [C, H, W] in [0, 1], "label": int64 [], "index": int64 []}

``index`` is the sample's position in the full training split, which sample-wise poisons
are keyed by. A collated batch has the same keys with a leading batch dimension.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

Transform = Callable[[Tensor], Tensor]


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
        """SHA-256 of the raw pixels and labels, the identity of this clean data."""
        digest = hashlib.sha256()
        digest.update(str(tuple(self.images.shape)).encode())
        digest.update(self.images.contiguous().numpy().tobytes())
        digest.update(self.labels.numpy().astype("int64").tobytes())
        return digest.hexdigest()


class FileImageSource:
    """Images read lazily from files (an ImageFolder tree), resized to a fixed size.

    Args:
        paths: one image file per sample.
        labels: ``int64`` tensor ``[N]``.
        image_size: ``(H, W)`` every image is resized to.
        channels: 3 for RGB, 1 for grayscale.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Tensor,
        image_size: tuple[int, int],
        channels: int = 3,
    ) -> None:
        if len(paths) != labels.shape[0]:
            raise ValueError(f"{len(paths)} paths but {labels.shape[0]} labels")
        self.paths = list(paths)
        self.labels = labels.long()
        self.size = image_size
        self.channels = channels

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
        """SHA-256 of the relative file names, sizes and labels (cheap; no pixel read)."""
        digest = hashlib.sha256()
        digest.update(str(self.image_shape).encode())
        for path, label in zip(self.paths, self.labels.tolist(), strict=True):
            digest.update(
                f"{path.parent.name}/{path.name}:{path.stat().st_size}:{label}\n".encode()
            )
        return digest.hexdigest()


ImageSource = TensorImageSource | FileImageSource


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

    def with_transform(self, transform: Transform | None) -> IndexedImageDataset:
        """The same samples and poison with another transform."""
        return IndexedImageDataset(self.source, self.indices, self.poison, transform)
