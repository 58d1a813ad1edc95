"""Built-in multi-task data: procedural indoor scenes in the real Taskonomy layout and encodings.

Each *point* is a box-shaped room (floor, ceiling, side and back walls) furnished with 2-4
objects; each *view* looks at it from the same place with another yaw. A ray caster renders,
per pixel, the visible surface's distance, normal and label, so every domain is consistent
with the rgb:

- ``rgb``: Lambert shading of the surfaces' colours plus a little noise (8-bit PNG);
- ``segment_semantic``: 1 room surfaces, 2..17 object classes, 0 on a one-pixel ring around
  each object (uncertain, as at object boundaries of the real data);
- ``depth_euclidean``: ray length in 1/512 m (16-bit PNG), a window on the back wall has the
  invalid value 65535;
- ``normal``: camera-frame normals (x right, y up, z towards the viewer) as ``(n+1)/2*255``;
- ``keypoints2d``: Gaussian blobs at the objects' projected centres (16-bit);
- ``edge_texture``: Sobel magnitude of the grey image (16-bit);
- ``class_scene``: a 365-d Places vector peaked at the room type's index.

The room type (scene class) decides which objects furnish it (:data:`SCENE_OBJECTS`); wall
and floor colours are random, so the scene is learnable only from the objects. Generation is
deterministic given the seed. Default: 6 buildings of the tiny split (4 train, 1 val, 1 test)
x 15 points x 4 views = 360 samples of 64 x 64, about 5 MB, 20 s on one CPU core::

    python -m unlearn.data.synthetic_scenes --root data/scenes
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from unlearn.data.taskonomy_domains import DEPTH_UNITS_PER_METRE, PLACES_CLASSES, domain
from unlearn.errors import UnlearnError
from unlearn.io import atomic_directory

#: room types and their Places365 indices (bathroom, bedroom, kitchen, living room)
SCENES: tuple[str, ...] = ("bathroom", "bedroom", "kitchen", "living_room")
SCENE_PLACES_INDICES: tuple[int, ...] = (45, 52, 203, 215)
#: object classes, labels 2..17 in this order
OBJECTS: tuple[str, ...] = (
    "chair",
    "couch",
    "potted_plant",
    "bed",
    "toilet",
    "tv",
    "dining_table",
    "oven",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "microwave",
    "bathtub",
    "lamp",
)
SCENE_OBJECTS: dict[str, tuple[str, ...]] = {
    "bathroom": ("toilet", "sink", "bathtub", "vase"),
    "bedroom": ("bed", "lamp", "clock", "book"),
    "kitchen": ("oven", "refrigerator", "microwave", "dining_table"),
    "living_room": ("couch", "tv", "potted_plant", "chair"),
}
#: per object: shape, (width, height, depth) in metres (radius for spheres), rgb albedo
OBJECT_STYLE: dict[str, tuple[str, tuple[float, float, float], tuple[float, float, float]]] = {
    "chair": ("box", (0.5, 0.9, 0.5), (0.55, 0.35, 0.2)),
    "couch": ("box", (1.8, 0.8, 0.8), (0.2, 0.3, 0.7)),
    "potted_plant": ("sphere", (0.35, 0.35, 0.35), (0.15, 0.6, 0.15)),
    "bed": ("box", (1.6, 0.6, 2.0), (0.85, 0.85, 0.95)),
    "toilet": ("box", (0.4, 0.8, 0.6), (0.95, 0.95, 0.95)),
    "tv": ("box", (1.2, 0.7, 0.1), (0.05, 0.05, 0.08)),
    "dining_table": ("box", (1.4, 0.75, 0.9), (0.6, 0.45, 0.3)),
    "oven": ("box", (0.6, 0.9, 0.6), (0.3, 0.3, 0.3)),
    "sink": ("box", (0.6, 0.85, 0.5), (0.75, 0.8, 0.85)),
    "refrigerator": ("box", (0.8, 1.9, 0.7), (0.9, 0.9, 0.85)),
    "book": ("box", (0.3, 0.3, 0.2), (0.8, 0.1, 0.1)),
    "clock": ("sphere", (0.25, 0.25, 0.25), (0.9, 0.8, 0.2)),
    "vase": ("sphere", (0.25, 0.25, 0.25), (0.2, 0.7, 0.8)),
    "microwave": ("box", (0.5, 0.35, 0.4), (0.4, 0.4, 0.45)),
    "bathtub": ("box", (1.7, 0.6, 0.8), (0.9, 0.95, 1.0)),
    "lamp": ("sphere", (0.3, 0.3, 0.3), (1.0, 0.95, 0.6)),
}
DEFAULT_BUILDINGS: dict[str, tuple[str, ...]] = {
    "train": ("hanson", "merom", "klickitat", "onaga"),
    "val": ("wiconisco",),
    "test": ("ihlen",),
}
WRITTEN_DOMAINS: tuple[str, ...] = (
    "rgb",
    "segment_semantic",
    "depth_euclidean",
    "normal",
    "keypoints2d",
    "edge_texture",
    "class_scene",
)
MARKER = "synthetic_scenes.json"
CAMERA_HEIGHT = 1.4  # metres above the floor


def _rays(size: int, yaw: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions ``[H, W, 3]`` in world and camera frames (fov about 60 deg)."""
    focal = size / (2 * np.tan(np.radians(30)))
    v, u = np.mgrid[0:size, 0:size] + 0.5
    cam = np.stack([(u - size / 2) / focal, -(v - size / 2) / focal, np.ones_like(u)], -1)
    cam /= np.linalg.norm(cam, axis=-1, keepdims=True)
    c, s = np.cos(yaw), np.sin(yaw)
    world = cam.copy()
    world[..., 0] = c * cam[..., 0] + s * cam[..., 2]
    world[..., 2] = -s * cam[..., 0] + c * cam[..., 2]
    return world, cam


def _room_hits(
    d: np.ndarray, half_width: float, depth: float, height: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance, world normal and surface id (0 floor..4 back) of the room's inside."""
    with np.errstate(divide="ignore", invalid="ignore"):
        tx = np.where(d[..., 0] > 0, half_width, -half_width) / d[..., 0]
        ty = np.where(d[..., 1] > 0, height - CAMERA_HEIGHT, -CAMERA_HEIGHT) / d[..., 1]
        tz = np.where(d[..., 2] > 0, depth, -1.0) / d[..., 2]
    ts = np.stack([np.abs(tx), np.abs(ty), np.abs(tz)], -1)
    axis = np.argmin(ts, axis=-1)
    t = np.take_along_axis(ts, axis[..., None], -1)[..., 0]
    normal = np.zeros(d.shape)
    idx = np.indices(axis.shape)
    normal[idx[0], idx[1], axis] = -np.sign(np.take_along_axis(d, axis[..., None], -1)[..., 0])
    surface = np.select(
        [axis == 1, axis == 0, axis == 2],
        [np.where(d[..., 1] < 0, 0, 1), np.where(d[..., 0] < 0, 2, 3), 4],
    )
    return t, normal, surface


def _box_hit(d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry distance (inf if missed) and world normal of rays from the origin into a box."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = lo / d, hi / d
    tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
    t_enter, axis = tmin.max(-1), tmin.argmax(-1)
    hit = (t_enter <= tmax.min(-1)) & (t_enter > 0)
    normal = np.zeros(d.shape)
    idx = np.indices(axis.shape)
    normal[idx[0], idx[1], axis] = -np.sign(np.take_along_axis(d, axis[..., None], -1)[..., 0])
    return np.where(hit, t_enter, np.inf), normal


def _sphere_hit(d: np.ndarray, centre: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Entry distance (inf if missed) and world normal of rays from the origin into a sphere."""
    b = d @ centre
    disc = b**2 - (centre @ centre - radius**2)
    t = np.where(disc > 0, b - np.sqrt(np.maximum(disc, 0)), np.inf)
    t = np.where(t > 0, t, np.inf)
    point = d * np.where(np.isfinite(t), t, 0)[..., None]
    normal = (point - centre) / radius
    return t, normal


def render_view(
    rng: np.random.Generator, room: dict, yaw: float, size: int
) -> dict[str, np.ndarray]:
    """Render one view of a room as the raw arrays of every written domain."""
    d, _ = _rays(size, yaw)
    t, normal, surface = _room_hits(d, room["half_width"], room["depth"], room["height"])
    albedo = np.asarray(room["colours"])[surface]
    labels = np.ones((size, size), np.int64)
    invalid = np.zeros((size, size), bool)
    point = d * t[..., None]
    win = room["window"]
    invalid |= (
        (surface == 4)
        & (np.abs(point[..., 0] - win[0]) < win[2])
        & (np.abs(point[..., 1] - win[1]) < win[3])
    )
    object_id = np.full((size, size), -1)
    for k, obj in enumerate(room["objects"]):
        if obj["shape"] == "box":
            ot, on = _box_hit(d, obj["lo"], obj["hi"])
        else:
            ot, on = _sphere_hit(d, obj["centre"], obj["radius"])
        closer = ot < t
        t = np.where(closer, ot, t)
        normal = np.where(closer[..., None], on, normal)
        albedo = np.where(closer[..., None], obj["colour"], albedo)
        labels = np.where(closer, obj["label"], labels)
        invalid &= ~closer
        object_id = np.where(closer, k, object_id)
    # camera-frame normals (x right, y up, z towards the viewer)
    c, s = np.cos(yaw), np.sin(yaw)
    n_cam = np.stack(
        [
            c * normal[..., 0] - s * normal[..., 2],
            normal[..., 1],
            -(s * normal[..., 0] + c * normal[..., 2]),
        ],
        -1,
    )
    light = np.array([0.3, 0.8, -0.5]) / np.linalg.norm([0.3, 0.8, -0.5])
    shade = 0.45 + 0.55 * np.clip(normal @ light, 0, 1) / (1 + 0.04 * t)
    rgb = albedo * shade[..., None] + rng.normal(0, 0.02, (size, size, 3))
    rgb = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
    # uncertain ring around objects: pixels whose 4-neighbourhood has another object
    ring = np.zeros_like(labels, bool)
    for axis in (0, 1):
        step = np.diff(object_id, axis=axis) != 0
        if axis == 0:
            ring[1:] |= step
            ring[:-1] |= step
        else:
            ring[:, 1:] |= step
            ring[:, :-1] |= step
    labels = np.where(ring, 0, labels)
    depth = np.clip(np.round(t * DEPTH_UNITS_PER_METRE), 0, 64499).astype(np.uint16)
    depth[invalid] = 65535
    normal_png = np.clip(np.round((n_cam + 1) / 2 * 255), 0, 255).astype(np.uint8)
    focal = size / (2 * np.tan(np.radians(30)))
    keypoints = np.zeros((size, size))
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for obj in room["objects"]:
        centre = obj["centre"]
        x = c * centre[0] - s * centre[2]
        z = s * centre[0] + c * centre[2]
        if z <= 0.1:
            continue
        u, v = size / 2 + focal * x / z, size / 2 - focal * centre[1] / z
        keypoints = np.maximum(keypoints, np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / 4.0))
    grey = rgb.astype(np.float64).mean(-1) / 255
    gx, gy = np.zeros_like(grey), np.zeros_like(grey)
    gx[:, 1:-1] = grey[:, 2:] - grey[:, :-2]
    gy[1:-1] = grey[2:] - grey[:-2]
    edges = np.clip(np.hypot(gx, gy), 0, 1)
    return {
        "rgb": rgb,
        "segment_semantic": labels.astype(np.uint8),
        "depth_euclidean": depth,
        "normal": normal_png,
        "keypoints2d": np.round(keypoints * 65535).astype(np.uint16),
        "edge_texture": np.round(edges * 65535).astype(np.uint16),
    }


def make_room(rng: np.random.Generator, scene: int) -> dict:
    """A random room of scene class ``scene`` (index into :data:`SCENES`)."""
    half_width, depth, height = rng.uniform(2.0, 3.0), rng.uniform(4.0, 6.5), rng.uniform(2.4, 3)
    colours = [rng.uniform(0.25, 0.9, 3) for _ in range(5)]
    colours[1] = colours[1] * 0.3 + 0.65  # light ceiling
    colours[3] = colours[2]  # side walls alike
    names = list(SCENE_OBJECTS[SCENES[scene]])
    count = int(rng.integers(2, 5))
    chosen = [names[i] for i in rng.choice(len(names), size=count, replace=False)]
    objects = []
    for name in chosen:
        shape, dims, colour = OBJECT_STYLE[name]
        scale = rng.uniform(0.85, 1.15)
        colour = np.clip(np.asarray(colour) + rng.normal(0, 0.05, 3), 0, 1)
        x = rng.uniform(-half_width + 0.6, half_width - 0.6)
        z = rng.uniform(2.2, depth - 0.6)
        obj = {"name": name, "shape": shape, "colour": colour, "label": 2 + OBJECTS.index(name)}
        if shape == "box":
            w, h, dd = (v * scale for v in dims)
            base = -CAMERA_HEIGHT + (
                rng.uniform(0.6, 0.9) if name in ("tv", "microwave", "book") else 0.0
            )
            obj["lo"] = np.array([x - w / 2, base, z - dd / 2])
            obj["hi"] = np.array([x + w / 2, base + h, z + dd / 2])
            obj["centre"] = (obj["lo"] + obj["hi"]) / 2
        else:
            r = dims[0] * scale
            lift = rng.uniform(0.7, 1.4) if name in ("clock", "lamp") else 0.0
            obj["radius"] = r
            obj["centre"] = np.array([x, -CAMERA_HEIGHT + r + lift, z])
        objects.append(obj)
    window = (rng.uniform(-1, 1), rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.6), 0.3)
    return {
        "half_width": half_width,
        "depth": depth,
        "height": height,
        "colours": colours,
        "objects": objects,
        "window": window,
    }


def scene_vector(rng: np.random.Generator, scene: int) -> np.ndarray:
    """A 365-d Places vector, most mass on the scene's index (soft labels as released)."""
    vector = rng.dirichlet(np.full(PLACES_CLASSES, 0.1)) * 0.1
    others = rng.dirichlet(np.ones(len(SCENES))) * 0.2
    vector[list(SCENE_PLACES_INDICES)] += others
    vector[SCENE_PLACES_INDICES[scene]] += 0.7
    return (vector / vector.sum()).astype(np.float32)


def _folder(root: Path, dom: str, building: str, layout: str) -> Path:
    if layout == "omnidata":
        return root / dom / "taskonomy" / building
    if layout == "domain_building":
        return root / dom / building
    if layout == "building_domain":
        return root / building / dom
    raise ValueError(f"unknown layout '{layout}'")


def write_sample(
    root: Path,
    building: str,
    point: int,
    view: int,
    arrays: dict[str, np.ndarray],
    vector: np.ndarray,
    layout: str,
) -> None:
    """Write one sample's files in the given layout with the release's file names."""
    for name, array in arrays.items():
        folder = _folder(root, name, building, layout)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / domain(name).file_name(point, view))
    folder = _folder(root, "class_scene", building, layout)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / domain("class_scene").file_name(point, view), vector)


def generate(
    root: str | Path,
    buildings: Sequence[str] | None = None,
    points_per_building: int = 15,
    views_per_point: int = 4,
    size: int = 64,
    seed: int = 0,
    layout: str = "omnidata",
) -> Path:
    """Write the synthetic scenes under ``root`` (replacing what a previous run wrote).

    Args:
        root: the data root to write.
        buildings: building names (default: 4 train, 1 val, 1 test building of the tiny split).
        points_per_building: rooms per building; scene classes cycle over the points.
        views_per_point: camera yaws per room.
        size: image side in pixels.
        seed: seed of everything random.
        layout: ``omnidata`` ({domain}/taskonomy/{building}), ``domain_building`` or
            ``building_domain``.

    Returns:
        ``root``.
    """
    root = Path(root)
    names = (
        list(buildings)
        if buildings is not None
        else [b for split in DEFAULT_BUILDINGS.values() for b in split]
    )
    with atomic_directory(root) as staging:
        for b, building in enumerate(names):
            for point in range(points_per_building):
                rng = np.random.default_rng([seed, b, point])
                scene = (point + b) % len(SCENES)
                room = make_room(rng, scene)
                for view in range(views_per_point):
                    yaw = rng.uniform(-0.35, 0.35)
                    arrays = render_view(rng, room, yaw, size)
                    write_sample(
                        staging, building, point, view, arrays, scene_vector(rng, scene), layout
                    )
        settings = {
            "buildings": names,
            "points_per_building": points_per_building,
            "views_per_point": views_per_point,
            "size": size,
            "seed": seed,
            "layout": layout,
            "scenes": list(SCENES),
            "scene_places_indices": list(SCENE_PLACES_INDICES),
            "objects": {name: 2 + i for i, name in enumerate(OBJECTS)},
        }
        (staging / MARKER).write_text(json.dumps(settings, indent=2) + "\n")
    return root


class NotSyntheticRootError(UnlearnError, FileExistsError):
    """``synthetic: true`` was given a root that holds other data than the built-in scenes."""


def ensure_synthetic_scenes(root: str | Path) -> Path:
    """Generate the default scenes under ``root`` unless a previous generation is there.

    Raises:
        NotSyntheticRootError: ``root`` holds other files (e.g. a real Taskonomy release),
            which are never overwritten.
    """
    root = Path(root)
    if not (root / MARKER).is_file():
        entries = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        if entries or (root.exists() and not root.is_dir()):
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
            found = f"{count}: {shown}" if entries else "a file"
            raise NotSyntheticRootError(
                f"data.init_args.root '{root}' holds {found} but no {MARKER}, so it is not the "
                "built-in scenes that data.init_args.synthetic: true expects (an empty or new "
                "directory to write them to, or one they were written to); to read a real "
                "Taskonomy root set data.init_args.synthetic: false "
                "(--data.init_args.synthetic=false), else choose another data.init_args.root"
            )
        generate(root)
    return root


def main(args: Sequence[str] | None = None) -> None:
    """``python -m unlearn.data.synthetic_scenes --root data/scenes``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="data/scenes")
    parser.add_argument("--points_per_building", type=int, default=15)
    parser.add_argument("--views_per_point", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--layout", default="omnidata", choices=["omnidata", "domain_building", "building_domain"]
    )
    ns = parser.parse_args(args)
    root = generate(
        ns.root, None, ns.points_per_building, ns.views_per_point, ns.size, ns.seed, ns.layout
    )
    print(f"wrote the synthetic scenes to {root}")


if __name__ == "__main__":
    main()
