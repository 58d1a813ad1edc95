"""Taskonomy domains: where their files live, how they are encoded, how to decode them.

Encodings (public Taskonomy / Omnidata releases):

=================  =========================  ==========================================
domain             file                       decoded as
=================  =========================  ==========================================
rgb                8-bit RGB PNG              ``uint8 [3, H, W]`` (the data set gives
                                              ``float`` in ``[0, 1]``)
segment_semantic   8-bit label PNG            ``int64 [H, W]``: 0 uncertain (ignored),
                                              1 background, 2..17 object classes
depth_euclidean,   16-bit PNG, 1/512 m        ``float [1, H, W]`` in metres; raw values
depth_zbuffer                                 ``>= 64500`` are invalid (mask False, 0 m)
normal             8-bit RGB, centred on 127  ``float [3, H, W]`` = ``v / 255 * 2 - 1``
keypoints2d,       16-bit single channel      ``float [1, H, W]`` = ``v / 65535``
edge_texture
class_scene        ``.npy`` 365-d Places      ``int64 []`` arg-max label (over
                   vector                     ``scene_classes`` when given) and the
                                              renormalised soft vector
=================  =========================  ==========================================

Files are ``point_{p}_view_{v}_domain_{suffix}.{png|npy}``; the suffix need not equal the
folder's name (``segment_semantic`` files end ``_domain_segmentsemantic.png``,
``class_scene`` files ``_domain_class_places.npy``), so samples are matched on
``(building, point, view)`` only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from unlearn.errors import UnlearnError

#: raw 16-bit depth values at or above this are invalid (sky, holes, far range)
DEPTH_INVALID = 64500
#: depth units per metre in the 16-bit PNGs
DEPTH_UNITS_PER_METRE = 512.0
#: label of uncertain pixels in ``segment_semantic`` (ignored by losses and metrics)
SEGMENT_IGNORE = 0
#: number of label values of ``segment_semantic`` (0 ignore, 1 background, 2..17 objects)
SEGMENT_CLASSES = 18
#: length of the ``class_scene`` vectors (Places365)
PLACES_CLASSES = 365

FILE_PATTERN = re.compile(r"^point_(\d+)_view_(\d+)_domain_([A-Za-z0-9_]+)\.(png|npy)$")

Kind = Literal["rgb", "labels", "depth", "normal", "scalar16", "scene"]


class CorruptFileError(UnlearnError):
    """A Taskonomy file cannot be decoded or does not have its domain's encoding."""


@dataclass(frozen=True)
class Domain:
    """How one domain is stored.

    Attributes:
        name: folder name, also the batch key.
        kind: decoding rule (see the module docstring).
        suffix: the ``_domain_{suffix}`` part of the file names the public release uses.
        ext: file extension.
        has_mask: whether decoding also yields ``{name}_mask``.
    """

    name: str
    kind: Kind
    suffix: str
    ext: str = "png"
    has_mask: bool = False

    def file_name(self, point: int, view: int) -> str:
        """The file name of ``(point, view)`` as the public release writes it."""
        return f"point_{point}_view_{view}_domain_{self.suffix}.{self.ext}"


DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain("rgb", "rgb", "rgb"),
        Domain("segment_semantic", "labels", "segmentsemantic", has_mask=True),
        Domain("depth_euclidean", "depth", "depth_euclidean", has_mask=True),
        Domain("depth_zbuffer", "depth", "depth_zbuffer", has_mask=True),
        Domain("normal", "normal", "normal", has_mask=True),
        Domain("keypoints2d", "scalar16", "keypoints2d"),
        Domain("edge_texture", "scalar16", "edge_texture"),
        Domain("class_scene", "scene", "class_places", ext="npy"),
    )
}


def domain(name: str) -> Domain:
    """The :class:`Domain` called ``name``; a clear error for an unknown one."""
    try:
        return DOMAINS[name]
    except KeyError:
        raise UnlearnError(
            f"unknown Taskonomy domain '{name}'; known domains: {sorted(DOMAINS)}"
        ) from None


def _open_png(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise CorruptFileError(f"cannot decode '{path}': {err}") from err
    return img


def _array16(img: Image.Image, path: Path, what: str) -> np.ndarray:
    if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise CorruptFileError(
            f"'{path}' is a {img.mode!r} image; {what} must be a 16-bit single-channel PNG"
        )
    array = np.asarray(img).astype(np.int64)
    if array.ndim != 2 or array.min(initial=0) < 0 or array.max(initial=0) > 65535:
        raise CorruptFileError(f"'{path}' holds values outside the 16-bit range")
    return array


def _resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize ``[C, H, W]`` to ``size``; ``nearest`` for labels and depth, else bilinear.

    ``nearest`` takes, for output pixel ``i``, input pixel ``floor((i + 0.5) * in / out)``
    (the pixel under the output pixel's centre, as PIL and scikit-image do; torch's
    ``"nearest-exact"``). Torch's ``"nearest"`` takes ``floor(i * in / out)`` instead, which
    shifts the sampled grid by up to a pixel (6 -> 4 takes 0, 1, 3, 4 rather than 0, 2, 3, 5).
    """
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "nearest":
        resized = F.interpolate(x[None].float(), size=size, mode="nearest-exact")[0]
        return resized.to(x.dtype)
    return F.interpolate(
        x[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True
    )[0]


def decode_rgb(path: Path, size: tuple[int, int] | None = None) -> Tensor:
    """An 8-bit RGB PNG as ``uint8 [3, H, W]``, resized (bilinear, antialiased) to ``size``."""
    img = _open_png(path)
    if img.mode not in ("RGB", "RGBA"):
        raise CorruptFileError(f"'{path}' is a {img.mode!r} image; rgb must be 8-bit RGB")
    x = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
    if size is not None and tuple(x.shape[-2:]) != size:
        x = _resize(x, size, "bilinear").round().clamp(0, 255).to(torch.uint8)
    return x


def decode(
    dom: Domain,
    path: Path,
    size: tuple[int, int] | None = None,
    scene_classes: list[int] | None = None,
) -> dict[str, Tensor]:
    """Decode one file of domain ``dom``.

    Args:
        dom: the file's domain.
        path: the file.
        size: ``(H, W)`` to resize to (``None``: keep the file's size).
        scene_classes: Places indices that make up the scene label set (``class_scene``
            only); ``None`` uses all 365.

    Returns:
        ``{dom.name: tensor}`` plus ``{dom.name}_mask`` (bool, same spatial size) for the
        domains with a mask, and ``class_scene_soft`` for ``class_scene``.

    Raises:
        CorruptFileError: the file cannot be read or does not have the domain's encoding.
    """
    name = dom.name
    if dom.kind == "scene":
        return _decode_scene(path, scene_classes)
    if dom.kind == "rgb":
        return {name: decode_rgb(path, size)}
    img = _open_png(path)
    if dom.kind == "labels":
        if img.mode not in ("L", "P", "I;16", "I"):
            raise CorruptFileError(f"'{path}' is a {img.mode!r} image; labels must be 8-bit")
        labels = torch.from_numpy(np.asarray(img).astype(np.int64))
        if labels.ndim != 2:
            raise CorruptFileError(f"'{path}': expected a single-channel label image")
        if size is not None:
            labels = _resize(labels[None], size, "nearest")[0]
        return {name: labels, f"{name}_mask": labels != SEGMENT_IGNORE}
    if dom.kind == "depth":
        raw = torch.from_numpy(_array16(img, path, name))[None]
        if size is not None:
            raw = _resize(raw, size, "nearest")
        mask = raw < DEPTH_INVALID
        metres = torch.where(mask, raw.float() / DEPTH_UNITS_PER_METRE, 0.0)
        return {name: metres, f"{name}_mask": mask}
    if dom.kind == "normal":
        if img.mode not in ("RGB", "RGBA"):
            raise CorruptFileError(f"'{path}' is a {img.mode!r} image; normal must be 8-bit RGB")
        v = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1).float()
        vec = v / 255.0 * 2.0 - 1.0
        if size is not None:
            vec = _resize(vec, size, "bilinear")
        # the encoding of "no normal" is grey (about the zero vector)
        return {name: vec, f"{name}_mask": vec.norm(dim=0, keepdim=True) > 0.5}
    # scalar16: keypoints2d, edge_texture
    x = torch.from_numpy(_array16(img, path, name)).float()[None] / 65535.0
    if size is not None:
        x = _resize(x, size, "bilinear")
    return {name: x}


def _decode_scene(path: Path, scene_classes: list[int] | None) -> dict[str, Tensor]:
    try:
        vector = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise CorruptFileError(f"cannot decode '{path}': {err}") from err
    vector = np.asarray(vector, dtype=np.float64).reshape(-1)
    if vector.shape[0] != PLACES_CLASSES or not np.isfinite(vector).all():
        raise CorruptFileError(
            f"'{path}' holds {vector.shape[0]} values (finite: {np.isfinite(vector).all()}); "
            f"class_scene must be a finite {PLACES_CLASSES}-d vector"
        )
    if scene_classes is not None:
        vector = vector[scene_classes]
    soft = torch.from_numpy(vector).float().clamp_min(0)
    total = float(soft.sum())
    soft = soft / total if total > 0 else torch.full_like(soft, 1.0 / soft.numel())
    return {"class_scene": torch.tensor(int(np.argmax(vector))), "class_scene_soft": soft}
