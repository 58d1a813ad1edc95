"""Write a poison made for a :class:`TaskonomyDataModule` as rgb PNGs in the Taskonomy layout.

The perturbation is made (by ``python -m unlearn poison``) at the data module's
``image_size``: on the clean rgb resized to ``image_size`` x ``image_size`` (bilinear,
antialiased, rounded to 8 bits). The export writes, for every training sample,
``clamp(clean + delta, 0, 1)`` at that same resolution, rounded to 8 bits, to::

    {output}/rgb/taskonomy/{building}/point_{p}_view_{v}_domain_rgb.png
    {output}/taskonomy_poison.json      the poison's meta and how it was carried

Rounding goes to the nearest grey level; an image whose rounded perturbation would break the
budget (possible for L2 budgets, or L_inf budgets that are not a whole number of levels)
is rounded towards the clean value instead, which keeps every pixel's change at most as large
as before and so keeps every norm within budget. Train on it with ``rgb_root: {output}`` and
the same ``image_size``; the label domains are still read from the clean ``root``, which is
never written. Usage::

    python -m unlearn.poisons.taskonomy_export --poison poisons/scenes/em --output data/scenes_em
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from unlearn.data.taskonomy import TaskonomyDataModule
from unlearn.data.taskonomy_domains import domain
from unlearn.errors import UnlearnError
from unlearn.io import atomic_directory, write_json_atomic
from unlearn.poisons.export import poison_and_data

EXPORT_FILE = "taskonomy_poison.json"


def within_budget(change: Tensor, norm: str, eps: float, tol: float = 1e-6) -> bool:
    """Whether a perturbation ``[C, H, W]`` (in ``[0, 1]`` units) satisfies the budget."""
    if norm == "linf":
        return float(change.abs().max()) <= eps + tol
    if norm == "l2":
        return float(change.norm()) <= eps + tol
    if norm == "l0":
        return int((change != 0).any(0).sum()) <= eps + tol
    raise ValueError(f"unknown norm '{norm}'")


def to_8bit(clean: Tensor, delta: Tensor, norm: str, eps: float) -> tuple[Tensor, bool]:
    """``clamp(clean + delta)`` rounded to 8 bits within the budget.

    Args:
        clean: ``uint8 [C, H, W]``.
        delta: ``float [C, H, W]`` perturbation in ``[0, 1]`` units.
        norm: ``linf``, ``l2`` or ``l0``.
        eps: the budget.

    Returns:
        The poisoned image ``uint8 [C, H, W]`` and whether it was rounded towards the clean
        value to stay within the budget.
    """
    levels = (clean.double() + delta.double() * 255).clamp(0, 255)
    nearest = levels.round()
    if within_budget((nearest - clean.double()) / 255, norm, eps):
        return nearest.to(torch.uint8), False
    change = torch.trunc(levels - clean.double())
    return (clean.double() + change).to(torch.uint8), True


def export_taskonomy_poison(
    poison: str | Path,
    output: str | Path,
    data: TaskonomyDataModule | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the poisoned training rgb of ``data`` under ``output`` in the Taskonomy layout.

    Args:
        poison: the poison store (made for ``data``'s training split).
        output: root of the poisoned copy; must not be, contain or lie in ``data.root``.
        data: the clean data module (``None``: rebuilt from the poison's meta).
        overwrite: replace an existing ``output``.

    Returns:
        ``output``.
    """
    output = Path(output)
    stored, data = poison_and_data(poison, data, TaskonomyDataModule)
    root, out = data.root.resolve(), output.resolve()
    if out == root or root in out.parents or out in root.parents:
        raise UnlearnError(f"output '{output}' overlaps the clean root '{data.root}'")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    source = data.train_source
    row_of = {int(i): r for r, i in enumerate(stored.indices.tolist())}
    norm, eps = stored.meta["norm"], float(stored.meta["eps"])
    fallback = 0
    rgb = domain("rgb")
    with atomic_directory(output) as staging:
        for i, (building, point, view) in enumerate(source.index.keys):
            clean = source.image(i)
            row = row_of.get(i)
            if row is None:
                image = clean
            else:
                image, fell_back = to_8bit(clean, stored.delta[row].float(), norm, eps)
                fallback += fell_back
            folder = staging / "rgb" / "taskonomy" / building
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB").save(
                folder / rgb.file_name(point, view)
            )
        summary = {
            "poison": str(Path(poison)),
            "clean_root": str(data.root),
            "image_size": data.image_size,
            "resolution": "perturbation made and stored at image_size x image_size (the clean "
            "rgb resized bilinear with antialiasing, 8-bit)",
            "rounding": "nearest 8-bit level; towards the clean value where nearest breaks the "
            "budget",
            "images": len(source),
            "poisoned": len(row_of),
            "rounded_towards_clean": fallback,
            "meta": stored.meta,
        }
        write_json_atomic(staging / EXPORT_FILE, summary)
    return output


def main(args: Sequence[str] | None = None) -> None:
    """``python -m unlearn.poisons.taskonomy_export --poison DIR --output ROOT``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--poison", required=True, help="the poison store directory")
    parser.add_argument("--output", required=True, help="root of the poisoned rgb copy")
    parser.add_argument("--overwrite", action="store_true")
    ns = parser.parse_args(args)
    print(f"wrote {export_taskonomy_poison(ns.poison, ns.output, overwrite=ns.overwrite)}")


if __name__ == "__main__":
    main()
