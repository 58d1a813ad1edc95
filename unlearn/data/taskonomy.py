"""Taskonomy: the data module for the real release's layouts and the built-in scenes.

Layouts read (per domain and building, the first that exists wins)::

    {root}/{domain}/taskonomy/{building}/point_{p}_view_{v}_domain_{suffix}.{png|npy}
    {root}/{domain}/{building}/...
    {root}/{building}/{domain}/...
    {root}/{building}_{domain}/{domain}/...   and   {root}/{building}_{domain}/...

Samples are matched across domains on ``(building, point, view)``. Batches are dicts::

    rgb, image            float [B, 3, H, W] in [0, 1] (the same pixels; "image" lets
                          classification tasks, poisons and defenses use the module)
    segment_semantic      int64 [B, H, W], 0 = ignore     + segment_semantic_mask bool
    depth_euclidean       float [B, 1, H, W] metres       + depth_euclidean_mask bool
    normal                float [B, 3, H, W] in [-1, 1]   + normal_mask bool [B, 1, H, W]
    keypoints2d, edge_texture   float [B, 1, H, W] in [0, 1]
    class_scene, label    int64 [B] scene class           + class_scene_soft float [B, K]
    index                 int64 [B] position in the split

Only the requested ``domains`` appear. See ``docs/taskonomy.md``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from unlearn.data.base import DataNotFoundError
from unlearn.data.classification import ImageClassificationDataModule
from unlearn.data.datasets import (
    FingerprintMode,
    IndexedImageDataset,
    PoisonOverlay,
    check_fingerprint_mode,
    file_sha256,
)
from unlearn.data.taskonomy_domains import (
    FILE_PATTERN,
    PLACES_CLASSES,
    SEGMENT_IGNORE,
    CorruptFileError,
    decode,
    decode_rgb,
    domain,
)
from unlearn.errors import UnlearnError

#: the official tiny split (``train_val_test_tiny.csv``)
TINY_SPLIT: dict[str, tuple[str, ...]] = {
    "train": (
        "hanson",
        "merom",
        "klickitat",
        "onaga",
        "leonardo",
        "marstons",
        "newfields",
        "pinesdale",
        "lakeville",
        "cosmos",
        "benevolence",
        "pomaria",
        "tolstoy",
        "shelbyville",
        "allensville",
        "wainscott",
        "beechwood",
        "coffeen",
        "stockman",
        "hiteman",
        "woodbine",
        "lindenwood",
        "forkland",
        "mifflinburg",
        "ranchester",
    ),
    "val": ("wiconisco", "corozal", "collierville", "markleeville", "darden"),
    "test": ("ihlen", "muleshoe", "uvalda", "noxapater", "mcdade"),
}
SampleKey = tuple[str, int, int]
OnBad = Literal["raise", "skip"]


def building_dir(root: Path, dom: str, building: str) -> Path | None:
    """The folder holding ``dom``'s files of ``building`` in any known layout, or ``None``."""
    for candidate in (
        root / dom / "taskonomy" / building,
        root / dom / building,
        root / building / dom,
        root / f"{building}_{dom}" / dom,
        root / f"{building}_{dom}",
    ):
        if candidate.is_dir():
            return candidate
    return None


def scan_domain(root: Path, dom: str, building: str) -> dict[tuple[int, int], Path]:
    """``{(point, view): file}`` of one domain of one building (empty if absent)."""
    folder = building_dir(root, dom, building)
    if folder is None:
        return {}
    ext = domain(dom).ext
    found = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            match = FILE_PATTERN.match(entry.name)
            if match and match.group(4) == ext:
                found[(int(match.group(1)), int(match.group(2)))] = Path(entry.path)
    return found


class TaskonomyIndex:
    """The samples of some buildings that have every requested domain.

    Args:
        root: the data root (label domains; also rgb unless ``rgb_root``).
        buildings: buildings to index, in order.
        domains: domains every sample must have.
        rgb_root: another root to read ``rgb`` from (a poisoned copy).
        on_bad: ``"raise"``: a sample missing a domain is an error; ``"skip"``: it is dropped
            and counted in a warning.
        max_per_building: keep at most this many samples per building (sorted order).
        what: the split's name, for messages.
    """

    def __init__(
        self,
        root: Path,
        buildings: list[str],
        domains: list[str],
        rgb_root: Path | None = None,
        on_bad: OnBad = "raise",
        max_per_building: int | None = None,
        what: str = "train",
    ) -> None:
        self.keys: list[SampleKey] = []
        self.paths: list[dict[str, Path]] = []
        missing: Counter[str] = Counter()
        first_missing = ""
        absent = []
        for building in buildings:
            per_domain = {
                d: scan_domain(rgb_root if d == "rgb" and rgb_root else root, d, building)
                for d in domains
            }
            if not any(per_domain.values()):
                absent.append(building)
                continue
            kept = 0
            for pv in sorted(set().union(*per_domain.values())):
                lacking = [d for d in domains if pv not in per_domain[d]]
                if lacking:
                    where = f"building '{building}' point {pv[0]} view {pv[1]}"
                    if on_bad == "raise":
                        base = rgb_root if lacking[0] == "rgb" and rgb_root else root
                        raise DataNotFoundError(
                            f"taskonomy: {where} has no '{lacking[0]}' file (expected "
                            f"{base}/{lacking[0]}/.../{domain(lacking[0]).file_name(*pv)}); "
                            "set on_bad_sample: skip to drop such samples"
                        )
                    missing.update(lacking)
                    first_missing = first_missing or f"{where} lacks {lacking}"
                    continue
                if max_per_building is not None and kept >= max_per_building:
                    continue
                self.keys.append((building, *pv))
                self.paths.append({d: per_domain[d][pv] for d in domains})
                kept += 1
        if absent and len(absent) < len(buildings):
            warnings.warn(
                f"taskonomy {what}: {len(absent)} of {len(buildings)} buildings have no files "
                f"under '{root}' and are left out: {', '.join(absent)}",
                stacklevel=2,
            )
        if missing:
            warnings.warn(
                f"taskonomy {what}: skipped {sum(missing.values())} missing files "
                f"({dict(missing)}) - samples lacking a requested domain are left out "
                f"(first: {first_missing})",
                stacklevel=2,
            )
        if not self.keys:
            raise DataNotFoundError(
                f"taskonomy {what}: no sample with all of {domains} under '{root}' for "
                f"buildings {buildings}; expected e.g. "
                f"{root}/rgb/taskonomy/{buildings[0] if buildings else '<building>'}/"
                f"{domain('rgb').file_name(0, 0)}. Make the built-in data with "
                "`python -m unlearn.data.synthetic_scenes --root ROOT`, or see docs/taskonomy.md"
            )

    def __len__(self) -> int:
        return len(self.keys)

    def drop(self, rows: set[int]) -> None:
        """Remove samples by position."""
        self.keys = [k for i, k in enumerate(self.keys) if i not in rows]
        self.paths = [p for i, p in enumerate(self.paths) if i not in rows]


class TaskonomySource:
    """The rgb images and scene labels of an index, as poisons and classifiers read them.

    Args:
        index: the samples.
        image_size: ``(H, W)`` every image is resized to.
        scene_classes: Places indices forming the label set (``None``: all 365).
        fingerprint_mode: how :meth:`fingerprint` identifies the data (``content`` or
            ``stat``, see :data:`unlearn.data.datasets.FINGERPRINT_MODES`).
    """

    #: the domains whose files define a sample as poisons see it (image and label)
    IDENTITY_DOMAINS = ("rgb", "class_scene")

    def __init__(
        self,
        index: TaskonomyIndex,
        image_size: tuple[int, int],
        scene_classes: list[int] | None,
        fingerprint_mode: FingerprintMode = "content",
    ) -> None:
        self.index = index
        self.size = image_size
        self.scene_classes = scene_classes
        self.fingerprint_mode = check_fingerprint_mode(fingerprint_mode, "TaskonomySource")
        self._labels: Tensor | None = None
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(3, H, W)``."""
        return (3, *self.size)

    def image(self, i: int) -> Tensor:
        """The ``i``-th rgb image, ``uint8 [3, H, W]``."""
        return decode_rgb(self.index.paths[i]["rgb"], self.size)

    @property
    def labels(self) -> Tensor:
        """Scene labels ``int64 [N]`` (arg-max of ``class_scene``; read on first use)."""
        if self._labels is None:
            if "class_scene" not in self.index.paths[0]:
                raise UnlearnError("scene labels need the 'class_scene' domain in `domains`")
            scene = domain("class_scene")
            self._labels = torch.stack(
                [
                    decode(scene, p["class_scene"], None, self.scene_classes)["class_scene"]
                    for p in self.index.paths
                ]
            )
        return self._labels

    def fingerprint(self) -> str:
        """``"{mode}:{sha256}"`` of this clean data; computed on the first call, then cached.

        Both modes hash the image shape, the scene classes and, per sample in order, its key
        ``(building, point, view)``; for the ``rgb`` and ``class_scene`` files of each sample
        ``content`` adds the SHA-256 of their bytes, ``stat`` their byte sizes instead (the
        hash unlearn used before content fingerprints).
        """
        if self._fingerprint is None:
            digest = hashlib.sha256(f"{self.image_shape}{self.scene_classes}".encode())
            for key, paths in zip(self.index.keys, self.index.paths, strict=True):
                present = [d for d in self.IDENTITY_DOMAINS if d in paths]
                if self.fingerprint_mode == "content":
                    hashes = [f"{d}={file_sha256(paths[d])}" for d in present]
                    digest.update(f"{key}:{hashes}\n".encode())
                else:
                    sizes = [paths[d].stat().st_size for d in present]
                    digest.update(f"{key}:{sizes}\n".encode())
            self._fingerprint = f"{self.fingerprint_mode}:{digest.hexdigest()}"
        return self._fingerprint


def flip_sample(sample: dict[str, Tensor]) -> dict[str, Tensor]:
    """Mirror every spatial tensor left-right; the normals' x component changes sign."""
    out = {}
    for key, value in sample.items():
        if value.ndim >= 2:
            value = value.flip(-1)
            if key == "normal":
                value = value * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
        out[key] = value
    return out


def crop_sample(sample: dict[str, Tensor], padding: int, top: int, left: int) -> dict[str, Tensor]:
    """Zero-pad every spatial tensor by ``padding`` and cut the window at ``(top, left)``.

    Padding is invalid everywhere: masks are False, labels are the ignore value 0.
    """
    out = {}
    for key, value in sample.items():
        if value.ndim >= 2 and padding > 0:
            h, w = value.shape[-2:]
            padded = torch.nn.functional.pad(value, (padding,) * 4, value=SEGMENT_IGNORE)
            value = padded[..., top : top + h, left : left + w]
        out[key] = value
    return out


class TaskonomyDataset(Dataset):
    """Decoded multi-domain samples of an index, optionally poisoned and augmented.

    Args:
        index: the samples.
        domains: domains to decode.
        image_size: ``(H, W)``.
        scene_classes: Places indices of the scene label set (``None``: all 365).
        poison: perturbations of the rgb (by position in ``index``), before augmentation.
        augment: random horizontal flip and padded crop, the same for every domain.
        crop_padding: padding of the random crop, in pixels.
        on_bad: ``"raise"``: a corrupt file raises :class:`CorruptFileError` naming it;
            ``"skip"``: a warning names it, it is listed in ``skipped_files`` and the next
            sample is served instead.
        cache: keep decoded samples in memory (small data sets).
    """

    def __init__(
        self,
        index: TaskonomyIndex,
        domains: list[str],
        image_size: tuple[int, int],
        scene_classes: list[int] | None = None,
        poison: PoisonOverlay | None = None,
        augment: bool = False,
        crop_padding: int = 0,
        on_bad: OnBad = "raise",
        cache: bool = False,
    ) -> None:
        self.index = index
        self.domains = domains
        self.size = image_size
        self.scene_classes = scene_classes
        self.poison = poison
        self.augment = augment
        self.crop_padding = crop_padding
        self.on_bad = on_bad
        self.cache: dict[int, dict[str, Tensor]] | None = {} if cache else None
        self.skipped_files: list[str] = []

    def __len__(self) -> int:
        return len(self.index)

    def decoded(self, i: int) -> dict[str, Tensor]:
        """Every requested domain of sample ``i``, unaugmented and clean."""
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        sample: dict[str, Tensor] = {}
        for name in self.domains:
            sample.update(
                decode(domain(name), self.index.paths[i][name], self.size, self.scene_classes)
            )
        if self.cache is not None:
            self.cache[i] = sample
        return sample

    def __getitem__(self, item: int) -> dict[str, Tensor]:
        for attempt in range(len(self)):
            i = (item + attempt) % len(self)
            try:
                sample = dict(self.decoded(i))
                break
            except CorruptFileError as err:
                if self.on_bad == "raise":
                    raise
                self.skipped_files.append(str(err))
                warnings.warn(f"taskonomy: skipped a corrupt file: {err}", stacklevel=2)
        else:
            raise CorruptFileError("taskonomy: every sample of the split has a corrupt file")
        if "rgb" in sample:
            rgb = sample["rgb"].float().div_(255.0)
            if self.poison is not None:
                rgb = self.poison.apply(rgb, i)
            sample["rgb"] = rgb
        if self.augment:
            if torch.rand(()) < 0.5:
                sample = flip_sample(sample)
            if self.crop_padding > 0:
                top, left = torch.randint(0, 2 * self.crop_padding + 1, (2,)).tolist()
                sample = crop_sample(sample, self.crop_padding, top, left)
        if "rgb" in sample:
            sample["image"] = sample["rgb"]
        if "class_scene" in sample:
            sample["label"] = sample["class_scene"]
        sample["index"] = torch.tensor(i)
        return sample

    def verify(self) -> list[int]:
        """Decode every sample; return the positions of corrupt ones (raise if ``on_bad``)."""
        bad = []
        for i in range(len(self)):
            try:
                self.decoded(i)
            except CorruptFileError as err:
                if self.on_bad == "raise":
                    raise
                bad.append(i)
                self.skipped_files.append(str(err))
        return bad


class TaskonomyDataModule(ImageClassificationDataModule):
    """Taskonomy (real release or the built-in synthetic scenes) as multi-domain dict batches.

    The training split can be poisoned in two ways, both on the rgb only: ``poison`` (a
    poison store made by ``python -m unlearn poison`` for this module, applied in memory at
    ``image_size``) or ``rgb_root`` (a Taskonomy-layout copy of the poisoned rgb, written by
    :func:`unlearn.poisons.taskonomy_export.export_taskonomy_poison`). Label domains always
    come from ``root``; validation and test are always clean.

    Args:
        root: the data root (any layout in the module docstring).
        domains: domains to load; ``rgb`` is always loaded.
        split: ``"tiny"``: the official tiny split's buildings.
        train_buildings: buildings to train on (overrides the split's).
        val_buildings: validation buildings (overrides the split's).
        test_buildings: test buildings (overrides the split's).
        image_size: side of the square images every domain is resized to, in pixels.
        batch_size: samples per batch.
        num_workers: data loader worker processes.
        seed: seed of the poisoned subset.
        augment: random flip and padded crop of training samples, consistent over domains.
        crop_padding: padding of the random crop (``None``: ``image_size // 8``).
        scene_classes: Places365 indices forming the scene label set, mapped to
            ``0..K-1`` in this order (``None``: all 365).
        rgb_root: read the training rgb from this root instead (a poisoned copy).
        poison: a poison store for this module's training split.
        poison_ratio: fraction of the poison's samples served poisoned.
        on_bad_sample: ``"raise"``: a missing domain or a corrupt file is an error naming
            it; ``"skip"``: such samples are dropped, counted and listed in warnings.
        verify: decode every file at setup (finds corrupt files before training).
        max_samples_per_building: keep at most this many samples of each building (the
            first in (point, view) order).
        cache: keep decoded samples in memory (for the built-in data).
        synthetic: the built-in synthetic scenes: written to ``root`` first if it has none;
            the buildings and ``scene_classes`` default to theirs.
        fingerprint: how the training split is identified to poisons: ``"content"`` (SHA-256
            of each sample's rgb and class_scene files and its key; reads those files once)
            or ``"stat"`` (keys and byte sizes only: cheap, but a replaced file of the same
            size goes unnoticed). A poison is checked in the mode it was made with.
    """

    name = "taskonomy"

    def __init__(
        self,
        root: str | Path = "data/taskonomy",
        domains: list[str] | None = None,
        split: Literal["tiny"] = "tiny",
        train_buildings: list[str] | None = None,
        val_buildings: list[str] | None = None,
        test_buildings: list[str] | None = None,
        image_size: int = 256,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = True,
        crop_padding: int | None = None,
        scene_classes: list[int] | None = None,
        rgb_root: str | Path | None = None,
        poison: str | Path | None = None,
        poison_ratio: float = 1.0,
        on_bad_sample: OnBad = "raise",
        verify: bool = False,
        max_samples_per_building: int | None = None,
        cache: bool = False,
        synthetic: bool = False,
        fingerprint: FingerprintMode = "content",
    ) -> None:
        super().__init__(
            root=root,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            augment=augment,
            poison=poison,
            poison_ratio=poison_ratio,
        )
        if split != "tiny":
            raise UnlearnError(f"taskonomy: unknown split '{split}'; expected 'tiny'")
        if on_bad_sample not in ("raise", "skip"):
            raise UnlearnError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
        if image_size < 8:
            raise UnlearnError(f"image_size must be >= 8, got {image_size}")
        names = list(domains) if domains is not None else ["rgb", "class_scene"]
        for name in names:
            domain(name)
        self.domains = ["rgb", *[d for d in dict.fromkeys(names) if d != "rgb"]]
        split_buildings = TINY_SPLIT
        if synthetic:
            from unlearn.data.synthetic_scenes import DEFAULT_BUILDINGS as split_buildings
        self.buildings = {
            "train": list(train_buildings or split_buildings["train"]),
            "val": list(val_buildings or split_buildings["val"]),
            "test": list(test_buildings or split_buildings["test"]),
        }
        self.image_size = image_size
        self.crop_padding = image_size // 8 if crop_padding is None else crop_padding
        if scene_classes is not None and (
            len(set(scene_classes)) != len(scene_classes)
            or not all(0 <= c < PLACES_CLASSES for c in scene_classes)
        ):
            raise UnlearnError(
                f"scene_classes must be distinct indices in [0, 365), got {scene_classes}"
            )
        self.synthetic = synthetic
        if synthetic and scene_classes is None:
            from unlearn.data.synthetic_scenes import SCENE_PLACES_INDICES

            scene_classes = list(SCENE_PLACES_INDICES)
        self.scene_classes = list(scene_classes) if scene_classes is not None else None
        self.num_classes = len(self.scene_classes) if self.scene_classes else PLACES_CLASSES
        self.image_shape = (3, image_size, image_size)
        self.rgb_root = Path(rgb_root) if rgb_root is not None else None
        if self.rgb_root is not None and poison is not None:
            raise UnlearnError("give either `poison` (a store) or `rgb_root` (poisoned PNGs)")
        self.on_bad_sample = on_bad_sample
        self.verify = verify
        self.max_samples_per_building = max_samples_per_building
        self.cache = cache
        self.fingerprint_mode = check_fingerprint_mode(fingerprint, "TaskonomyDataModule")
        self._indices: dict[str, TaskonomyIndex] = {}
        self._datasets: dict[str, TaskonomyDataset] = {}

    # ------------------------------------------------------------------ reading
    def prepare_data(self) -> None:
        """Write the built-in scenes to ``root`` when ``synthetic`` is set and it has none."""
        if self.synthetic:
            from unlearn.data.synthetic_scenes import ensure_synthetic_scenes

            ensure_synthetic_scenes(self.root)

    def index(self, stage: str, poisoned: bool = False) -> TaskonomyIndex:
        """The samples of ``stage`` (``train``, ``val`` or ``test``), scanned once.

        ``poisoned`` reads the rgb from ``rgb_root`` (training split only).
        """
        rgb_root = self.rgb_root if poisoned else None
        key = f"{stage}:{rgb_root}"
        if key not in self._indices:
            if self.synthetic:
                self.prepare_data()
            index = TaskonomyIndex(
                self.root,
                self.buildings[stage],
                self.domains,
                rgb_root,
                self.on_bad_sample,
                self.max_samples_per_building,
                stage if rgb_root is None else f"{stage} (rgb from {rgb_root})",
            )
            if self.verify:
                checker = self._dataset(index)
                bad = checker.verify()
                if bad:
                    listed = "; ".join(checker.skipped_files[:20])
                    warnings.warn(
                        f"taskonomy {stage}: skipped {len(bad)} samples with corrupt "
                        f"files: {listed}",
                        stacklevel=2,
                    )
                    index.drop(set(bad))
            self._indices[key] = index
        return self._indices[key]

    def load_split(self, train: bool) -> TaskonomySource:
        """The rgb and scene labels of the training (or test) buildings."""
        size = (self.image_size, self.image_size)
        index = self.index("train" if train else "test")
        return TaskonomySource(index, size, self.scene_classes, self.fingerprint_mode)

    def _split_indices(self) -> tuple[Tensor, Tensor]:
        """Every training sample is fit on; validation is the validation buildings."""
        return torch.arange(len(self.train_source)), torch.zeros(0, dtype=torch.long)

    def _dataset(
        self, index: TaskonomyIndex, poison: PoisonOverlay | None = None, augment: bool = False
    ) -> TaskonomyDataset:
        return TaskonomyDataset(
            index,
            self.domains,
            (self.image_size, self.image_size),
            self.scene_classes,
            poison=poison,
            augment=augment,
            crop_padding=self.crop_padding,
            on_bad=self.on_bad_sample,
            cache=self.cache,
        )

    def _cached(self, stage: str) -> TaskonomyDataset:
        if stage not in self._datasets:
            if stage == "train":
                index = self.index("train", poisoned=self.rgb_root is not None)
                self._datasets[stage] = self._dataset(index, self._overlay)
            else:
                self._datasets[stage] = self._dataset(self.index(stage))
        return self._datasets[stage]

    # ------------------------------------------------------------------ datasets
    def clean_train_dataset(self) -> IndexedImageDataset:
        """The clean training rgb and scene labels, unaugmented (what poisons are made from).

        Always read from ``root``, even when ``rgb_root`` is set.
        """
        return IndexedImageDataset(self.train_source)

    def probe_dataset(self) -> TaskonomyDataset:  # type: ignore[override]
        """The training samples as the model trains on them (poisoned), not augmented."""
        self.setup()
        return self._cached("train")

    def train_dataset(self) -> TaskonomyDataset:  # type: ignore[override]
        """Training samples, poisoned and augmented as configured."""
        probe = self.probe_dataset()
        dataset = self._dataset(probe.index, probe.poison, self.augment)
        dataset.cache = probe.cache  # decoded clean samples are shared
        return dataset

    def val_dataset(self) -> TaskonomyDataset:  # type: ignore[override]
        """The validation buildings, clean."""
        return self._cached("val")

    def test_dataset(self) -> TaskonomyDataset:  # type: ignore[override]
        """The test buildings, clean."""
        return self._cached("test")
