"""``python -m unlearn poison export``: write a poisoned training set as an ImageFolder tree.

The form a data owner would publish::

    {output}/train/{label}/{index}.png   poisoned training images (every sample; those the
                                         poison does not cover are clean)
    {output}/val/{label}/{index}.png     the clean test split (``--test true``, default)
    {output}/export.json                 the poison's meta and what was written

Labels and indices are zero-padded so that sorted folder and file names keep the numeric
order; :class:`~unlearn.data.ImageFolderDataModule` reads the tree back (``train_dir: train``,
``test_dir: val``). Pixels are rounded to 8 bits: for an L_inf budget that is a whole number of
grey levels (8/255) the rounded perturbation stays within it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import torch
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser
from PIL import Image

from unlearn.data import ImageClassificationDataModule
from unlearn.data.base import BaseDataModule
from unlearn.data.config import data_module_from_config, instantiate_config
from unlearn.data.datasets import IndexedImageDataset, PoisonOverlay
from unlearn.data.poison_store import META_FILE, StoredPoison, StoreExistsError, load_poison
from unlearn.io import atomic_directory, write_json_atomic

T = TypeVar("T", bound=BaseDataModule)


def poison_and_data(poison: str | Path, data: T | None, base: type[T]) -> tuple[StoredPoison, T]:
    """Load a poison store checked against its clean data module.

    Args:
        poison: the poison store's directory.
        data: the clean data module; ``None`` rebuilds it from the poison's ``meta.json``.
        base: the class the rebuilt data module must be (e.g. ``TaskonomyDataModule``).

    Returns:
        The store (verified to be for ``data``'s training split) and the data module.
    """
    if data is None:
        what = f"the poison's {Path(poison) / META_FILE}"
        data = data_module_from_config(load_poison(poison).meta.get("data"), base, what)
    return load_poison(poison, expected=data.info()), data


def _write_split(dataset: IndexedImageDataset, directory: Path, digits: tuple[int, int]) -> int:
    for item in range(len(dataset)):
        sample = dataset[item]
        image = sample["image"].mul(255).round().clamp(0, 255).to(torch.uint8)
        folder = directory / f"{int(sample['label']):0{digits[0]}d}"
        folder.mkdir(parents=True, exist_ok=True)
        array = image.permute(1, 2, 0).numpy()
        mode = "L" if array.shape[2] == 1 else "RGB"
        Image.fromarray(array[:, :, 0] if mode == "L" else array, mode).save(
            folder / f"{int(sample['index']):0{digits[1]}d}.png"
        )
    return len(dataset)


def export_poison(
    poison: str | Path,
    output: str | Path,
    data: ImageClassificationDataModule | None = None,
    test: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ``clamp(clean + delta, 0, 1)`` of every training sample as PNG files.

    Args:
        poison: the poison store's directory.
        output: the tree's root (must not exist unless ``overwrite``).
        data: the clean data module; ``None`` rebuilds it from the poison's meta.
        test: also write the clean test split under ``val/``.
        overwrite: replace an existing ``output``.

    Returns:
        ``output``.
    """
    output = Path(output)
    stored, data = poison_and_data(poison, data, ImageClassificationDataModule)
    if output.exists() and not overwrite:
        raise StoreExistsError(f"{output} exists; pass --overwrite to replace it")
    source = data.train_source
    n = len(source)
    digits = (len(str(max(0, data.num_classes - 1))), len(str(max(0, n - 1))))
    overlay = PoisonOverlay(stored.delta, stored.indices, n)
    with atomic_directory(output) as staging:
        train = IndexedImageDataset(source, poison=overlay)
        written = _write_split(train, staging / "train", digits)
        tested = 0
        if test:
            test_digits = (digits[0], len(str(max(0, len(data.test_source) - 1))))
            clean_test = IndexedImageDataset(data.test_source)
            tested = _write_split(clean_test, staging / "val", test_digits)
        summary = {
            "poison": str(Path(poison)),
            "train_images": written,
            "val_images": tested,
            "layout": "train/{label}/{index}.png (poisoned), val/{label}/{index}.png (clean test)",
            "meta": stored.meta,
        }
        write_json_atomic(staging / "export.json", summary)
    return output


def build_parser() -> ArgumentParser:
    """The parser of ``python -m unlearn poison export``."""
    import unlearn.data  # noqa: F401 - short class names

    parser = ArgumentParser(
        prog="python -m unlearn poison export",
        description="Write a poisoned training set (and the clean test split) as PNG files "
        "in an ImageFolder tree.",
    )
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--poison", type=str, required=True, help="the poison store directory")
    parser.add_argument("--output", type=str, required=True, help="root of the tree to write")
    parser.add_subclass_arguments(
        ImageClassificationDataModule,
        "data",
        required=False,
        help="the clean data module (default: the one recorded in the poison's meta)",
    )
    parser.add_argument("--test", action=ActionYesNo, default=True, help="also write val/")
    parser.add_argument("--overwrite", action=ActionYesNo, default=False)
    return parser


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m unlearn poison export``."""
    parser = build_parser()
    cfg = parser.parse_args(list(sys.argv[1:] if args is None else args))
    data = instantiate_config(parser, cfg).data if cfg.get("data") else None
    out = export_poison(cfg.poison, cfg.output, data, cfg.test, cfg.overwrite)
    print(f"wrote {out}")
