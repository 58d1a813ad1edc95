"""TaskonomyDataModule on fixtures written in each layout and encoding of the public release."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unlearn.data.base import DataNotFoundError
from unlearn.data.synthetic_scenes import MARKER, NotSyntheticRootError
from unlearn.data.taskonomy import TINY_SPLIT, TaskonomyDataModule, crop_sample, flip_sample
from unlearn.data.taskonomy_domains import CorruptFileError, decode, domain
from unlearn.errors import UnlearnError

DOMAINS = [
    "rgb",
    "segment_semantic",
    "depth_euclidean",
    "normal",
    "keypoints2d",
    "edge_texture",
    "class_scene",
]
SUFFIX = {"segment_semantic": "segmentsemantic", "class_scene": "class_places"}
LAYOUTS = {
    "omnidata": lambda root, d, b: root / d / "taskonomy" / b,
    "domain_building": lambda root, d, b: root / d / b,
    "building_domain": lambda root, d, b: root / b / d,
    "building_underscore_domain": lambda root, d, b: root / f"{b}_{d}" / d,
}
SIZE = 16


def raw_sample(seed: int) -> dict[str, np.ndarray]:
    """Raw file contents with known decoded values (see test_decoded_values)."""
    rng = np.random.default_rng(seed)
    depth = rng.integers(0, 64500, (SIZE, SIZE)).astype(np.uint16)
    depth[0, 0], depth[0, 1], depth[0, 2], depth[0, 3] = 512, 1280, 64500, 65535
    seg = rng.integers(0, 18, (SIZE, SIZE)).astype(np.uint8)
    seg[1, 0], seg[1, 1], seg[1, 2] = 0, 1, 17
    normal = rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    normal[2, 0] = (255, 127, 0)
    scene = rng.random(365).astype(np.float32)
    scene[100 + seed] = 5.0
    return {
        "rgb": rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8),
        "segment_semantic": seg,
        "depth_euclidean": depth,
        "normal": normal,
        "keypoints2d": rng.integers(0, 65536, (SIZE, SIZE)).astype(np.uint16),
        "edge_texture": rng.integers(0, 65536, (SIZE, SIZE)).astype(np.uint16),
        "class_scene": scene,
    }


def write(
    root: Path,
    layout: str,
    building: str,
    point: int,
    view: int,
    arrays: dict[str, np.ndarray],
    skip: tuple[str, ...] = (),
) -> None:
    for name, array in arrays.items():
        if name in skip:
            continue
        folder = LAYOUTS[layout](root, name, building)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"point_{point}_view_{view}_domain_{SUFFIX.get(name, name)}"
        if name == "class_scene":
            np.save(folder / f"{stem}.npy", array)
        else:
            Image.fromarray(array).save(folder / f"{stem}.png")


def module(root: Path, **kwargs) -> TaskonomyDataModule:
    args = dict(
        root=root,
        domains=DOMAINS,
        train_buildings=["hanson"],
        val_buildings=["darden"],
        test_buildings=["ihlen"],
        image_size=SIZE,
        batch_size=2,
        augment=False,
    )
    args.update(kwargs)
    return TaskonomyDataModule(**args)


def fixture(root: Path, layout: str = "omnidata", n: int = 3) -> list[dict[str, np.ndarray]]:
    samples = [raw_sample(i) for i in range(n)]
    for i, arrays in enumerate(samples):
        write(root, layout, "hanson", 10 + i, i % 2, arrays)
    for building in ("darden", "ihlen"):
        write(root, layout, building, 0, 0, raw_sample(9))
    return samples


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_decoded_values(tmp_path: Path, layout: str) -> None:
    raw = fixture(tmp_path, layout)
    data = module(tmp_path)
    data.setup("fit")
    dataset = data.train_dataset()
    assert len(dataset) == 3
    for i, arrays in enumerate(raw):
        s = dataset[i]
        assert s["index"] == i
        assert torch.equal(s["rgb"], torch.from_numpy(arrays["rgb"]).permute(2, 0, 1) / 255)
        assert s["image"] is s["rgb"]
        depth, mask = s["depth_euclidean"][0], s["depth_euclidean_mask"][0]
        assert depth[0, 0] == 1.0 and depth[0, 1] == 2.5  # 1/512 m units
        assert not mask[0, 2] and not mask[0, 3] and depth[0, 2] == 0 and depth[0, 3] == 0
        valid = arrays["depth_euclidean"] < 64500
        assert torch.equal(mask, torch.from_numpy(valid))
        expected = torch.from_numpy(arrays["depth_euclidean"].astype(np.float32) / 512)
        assert torch.allclose(depth[mask], expected[mask])
        seg = s["segment_semantic"]
        assert seg.dtype == torch.int64 and torch.equal(
            seg, torch.from_numpy(arrays["segment_semantic"].astype(np.int64))
        )
        assert not s["segment_semantic_mask"][1, 0] and s["segment_semantic_mask"][1, 1]
        normal = s["normal"]
        assert torch.allclose(normal[:, 2, 0], torch.tensor([1.0, 127 / 255 * 2 - 1, -1.0]))
        assert torch.allclose(
            normal, torch.from_numpy(arrays["normal"]).permute(2, 0, 1).float() / 255 * 2 - 1
        )
        for name in ("keypoints2d", "edge_texture"):
            assert torch.allclose(
                s[name][0], torch.from_numpy(arrays[name].astype(np.float32)) / 65535
            )
        assert s["class_scene"] == 100 + i == s["label"]
        assert s["class_scene_soft"].shape == (365,)
        assert s["class_scene_soft"].sum() == pytest.approx(1.0)


def test_batches_and_shapes(tmp_path: Path) -> None:
    fixture(tmp_path)
    data = module(tmp_path)
    data.setup("fit")
    assert data.num_classes == 365 and data.image_shape == (3, SIZE, SIZE)
    batch = next(iter(data.train_dataloader()))
    assert batch["rgb"].shape == (2, 3, SIZE, SIZE)
    assert batch["segment_semantic"].shape == (2, SIZE, SIZE)
    assert (
        batch["depth_euclidean"].shape == batch["depth_euclidean_mask"].shape == (2, 1, SIZE, SIZE)
    )
    assert batch["normal_mask"].shape == (2, 1, SIZE, SIZE)
    assert batch["class_scene"].shape == batch["index"].shape == (2,)
    assert len(data.val_dataset()) == len(data.test_dataset()) == 1


def test_scene_classes_subset_and_resize(tmp_path: Path) -> None:
    fixture(tmp_path)
    data = module(tmp_path, scene_classes=[100, 101, 102], image_size=8)
    assert data.num_classes == 3
    data.setup("fit")
    s = data.train_dataset()[1]
    assert s["class_scene"] == 1  # Places 101 is the second listed class
    assert s["rgb"].shape == (3, 8, 8) and s["segment_semantic"].shape == (8, 8)
    # nearest resizing never blends depth with invalid values
    raw = raw_sample(1)["depth_euclidean"]
    values = set((raw[raw < 64500] / 512).tolist()) | {0.0}
    assert set(s["depth_euclidean"].flatten().tolist()) <= values
    assert data.train_source.labels.tolist() == [0, 1, 2]


def test_tiny_split_is_built_in() -> None:
    assert len(TINY_SPLIT["train"]) == 25 and len(TINY_SPLIT["val"]) == 5
    assert TINY_SPLIT["test"] == ("ihlen", "muleshoe", "uvalda", "noxapater", "mcdade")
    assert not set(TINY_SPLIT["train"]) & (set(TINY_SPLIT["val"]) | set(TINY_SPLIT["test"]))
    data = TaskonomyDataModule(root="x")
    assert data.buildings["train"][0] == "hanson" and data.buildings["val"][-1] == "darden"


def test_missing_domain_raise_or_skip(tmp_path: Path) -> None:
    fixture(tmp_path)
    write(tmp_path, "omnidata", "hanson", 99, 0, raw_sample(5), skip=("depth_euclidean",))
    with pytest.raises(DataNotFoundError, match="point 99 view 0 has no 'depth_euclidean'"):
        module(tmp_path).setup("fit")
    with pytest.warns(UserWarning, match=r"skipped 1 missing files \(\{'depth_euclidean': 1\}"):
        data = module(tmp_path, on_bad_sample="skip")
        data.setup("fit")
    assert len(data.train_dataset()) == 3


def test_no_data_names_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="rgb/taskonomy/hanson/point_0_view_0_domain_rgb"):
        module(tmp_path).setup("fit")


def test_corrupt_file_raise_skip_and_verify(tmp_path: Path) -> None:
    fixture(tmp_path)
    bad = tmp_path / "depth_euclidean/taskonomy/hanson/point_11_view_1_domain_depth_euclidean.png"
    bad.write_bytes(b"\x89PNG not really")
    data = module(tmp_path)
    data.setup("fit")
    with pytest.raises(CorruptFileError, match=str(bad)):
        data.train_dataset()[1]
    data = module(tmp_path, on_bad_sample="skip")
    data.setup("fit")
    dataset = data.train_dataset()
    with pytest.warns(UserWarning, match="corrupt file"):
        sample = dataset[1]
    assert sample["index"] == 2 and str(bad) in dataset.skipped_files[0]
    with pytest.warns(UserWarning, match=r"skipped 1 samples with corrupt files: .*point_11"):
        data = module(tmp_path, on_bad_sample="skip", verify=True)
        data.setup("fit")
    assert len(data.train_dataset()) == 2


def test_wrong_encoding_is_named(tmp_path: Path) -> None:
    fixture(tmp_path)
    path = tmp_path / "depth_euclidean/taskonomy/hanson/point_10_view_0_domain_depth_euclidean.png"
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(path)  # 8-bit, not 16-bit
    data = module(tmp_path)
    data.setup("fit")
    with pytest.raises(CorruptFileError, match="16-bit"):
        data.train_dataset()[0]
    scene = tmp_path / "class_scene/taskonomy/hanson/point_11_view_1_domain_class_places.npy"
    np.save(scene, np.zeros(10, np.float32))
    with pytest.raises(CorruptFileError, match="365"):
        data.train_dataset()[1]


def test_flip_is_consistent_and_negates_normal_x() -> None:
    g = torch.Generator().manual_seed(0)
    sample = {
        "rgb": torch.rand(3, 4, 5, generator=g),
        "normal": torch.rand(3, 4, 5, generator=g),
        "segment_semantic": torch.randint(0, 18, (4, 5), generator=g),
        "depth_euclidean_mask": torch.rand(1, 4, 5, generator=g) > 0.5,
        "class_scene": torch.tensor(3),
    }
    flipped = flip_sample(sample)
    assert torch.equal(flipped["rgb"], sample["rgb"].flip(-1))
    assert torch.equal(flipped["segment_semantic"][:, 0], sample["segment_semantic"][:, -1])
    assert torch.equal(flipped["normal"][0], -sample["normal"][0].flip(-1))
    assert torch.equal(flipped["normal"][1:], sample["normal"][1:].flip(-1))
    assert flipped["class_scene"] == 3
    cropped = crop_sample(sample, 2, 0, 0)
    assert cropped["segment_semantic"].shape == (4, 5)
    assert (cropped["segment_semantic"][:2] == 0).all()  # padding is "ignore"
    assert not cropped["depth_euclidean_mask"][:, :2].any()
    assert torch.equal(cropped["rgb"][:, 2:, 2:], sample["rgb"][:, :2, :3])


def test_augmented_training_keeps_domains_aligned(tmp_path: Path) -> None:
    fixture(tmp_path)
    data = module(tmp_path, augment=True, crop_padding=2)
    data.setup("fit")
    clean = data.probe_dataset()[0]
    keys = (
        "rgb",
        "segment_semantic",
        "depth_euclidean",
        "depth_euclidean_mask",
        "normal",
        "normal_mask",
        "keypoints2d",
        "edge_texture",
    )
    candidates = [
        crop_sample(flip_sample(clean) if flip else clean, 2, top, left)
        for flip in (False, True)
        for top in range(5)
        for left in range(5)
    ]
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        s = data.train_dataset()[0]
        # one flip-and-crop explains every domain at once
        matches = [
            i for i, c in enumerate(candidates) if all(torch.equal(s[k], c[k]) for k in keys)
        ]
        assert matches, "domains were augmented differently"
        seen.add(matches[0] >= 25)
        assert s["class_scene"] == clean["class_scene"] and s["image"] is s["rgb"]
    assert seen == {True, False}  # both flipped and unflipped samples occurred


def test_rgb_from_another_root_labels_from_clean(tmp_path: Path) -> None:
    raw = fixture(tmp_path / "clean")
    poisoned = tmp_path / "poisoned"
    for i in range(3):
        folder = poisoned / "rgb" / "taskonomy" / "hanson"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((SIZE, SIZE, 3), 7 * i, np.uint8)).save(
            folder / f"point_{10 + i}_view_{i % 2}_domain_rgb.png"
        )
    data = module(tmp_path / "clean", rgb_root=poisoned)
    data.setup("fit")
    s = data.train_dataset()[2]
    assert (s["rgb"] == 14 / 255).all()
    assert s["class_scene"] == 102
    assert s["segment_semantic"].tolist() == raw[2]["segment_semantic"].tolist()
    clean = data.clean_train_dataset()[2]["image"]
    assert torch.equal(clean, torch.from_numpy(raw[2]["rgb"]).permute(2, 0, 1) / 255)
    assert len(data.val_dataset()) == 1  # validation stays on the clean root


def test_missing_building_warns(tmp_path: Path) -> None:
    fixture(tmp_path)
    data = module(tmp_path, train_buildings=["hanson", "merom"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data.setup("fit")
    assert any("merom" in str(w.message) for w in caught)


def test_synthetic_scenes_deterministic_and_consistent(tmp_path: Path) -> None:
    from unlearn.data.synthetic_scenes import (
        OBJECTS,
        SCENE_OBJECTS,
        SCENE_PLACES_INDICES,
        SCENES,
        generate,
    )

    kwargs = dict(
        buildings=["hanson", "wiconisco", "ihlen"],
        points_per_building=4,
        views_per_point=2,
        size=24,
    )
    a = generate(tmp_path / "a", **kwargs)
    b = generate(tmp_path / "b", **kwargs, layout="building_domain")
    c = generate(tmp_path / "c", **kwargs, seed=1)
    rel = "rgb/taskonomy/hanson/point_1_view_0_domain_rgb.png"
    assert (a / rel).read_bytes() == (b / "hanson/rgb/point_1_view_0_domain_rgb.png").read_bytes()
    assert (a / rel).read_bytes() != (c / rel).read_bytes()
    domains = DOMAINS
    for root in (a, b):
        data = TaskonomyDataModule(
            root=root,
            synthetic=True,
            domains=domains,
            image_size=24,
            train_buildings=["hanson"],
            augment=False,
        )
        assert data.num_classes == len(SCENES) and data.scene_classes == list(SCENE_PLACES_INDICES)
        data.setup("fit")
        dataset = data.train_dataset()
        assert len(dataset) == 8
        labels = data.train_source.labels
        assert labels.bincount().tolist() == [2, 2, 2, 2]  # room types cycle over points
        for i in range(len(dataset)):
            s = dataset[i]
            scene = SCENES[int(s["class_scene"])]
            allowed = {0, 1} | {2 + OBJECTS.index(o) for o in SCENE_OBJECTS[scene]}
            assert set(s["segment_semantic"].unique().tolist()) <= allowed
            depth, mask = s["depth_euclidean"], s["depth_euclidean_mask"]
            assert ((depth > 0.1) & (depth < 20))[mask].all()
            # invalid depth only on the room (the window), never on an object
            assert (s["segment_semantic"][~mask[0]] <= 1).all()
            lengths = s["normal"].norm(dim=0)
            assert ((lengths - 1).abs() < 0.02).all()
            assert 0 <= s["keypoints2d"].min() and s["keypoints2d"].max() <= 1


def test_labels_and_depth_resize_to_the_pixel_under_each_centre(tmp_path: Path) -> None:
    """6 -> 4 takes rows and columns 0, 2, 3, 5 (the pixel under each output pixel's centre,
    as PIL's NEAREST does), not torch "nearest"'s 0, 1, 3, 4."""
    rows, cols = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
    code = rows * 16 + cols  # each pixel's value says where it came from
    labels, depth = tmp_path / "labels.png", tmp_path / "depth.png"
    Image.fromarray(code.astype(np.uint8), "L").save(labels)
    Image.fromarray((code + 1).astype(np.uint16)).save(depth)  # 16-bit, all valid depths
    seg = decode(domain("segment_semantic"), labels, (4, 4))["segment_semantic"].numpy()
    raw = decode(domain("depth_euclidean"), depth, (4, 4))["depth_euclidean"][0].double()
    raw = (raw * 512).round().long().numpy() - 1  # metres back to the stored values
    for decoded in (seg, raw):
        assert (decoded // 16).tolist() == [[0] * 4, [2] * 4, [3] * 4, [5] * 4]
        assert (decoded % 16).tolist() == [[0, 2, 3, 5]] * 4
    for path, decoded in ((labels, seg), (depth, raw + 1)):
        with Image.open(path) as img:
            expected = np.asarray(img.resize((4, 4), Image.Resampling.NEAREST)).astype(np.int64)
        assert np.array_equal(decoded, expected)


def test_synthetic_on_a_real_root_says_how_to_read_it(tmp_path: Path) -> None:
    fixture(tmp_path)  # a (tiny) real-layout root: no synthetic_scenes.json
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    data = module(tmp_path, synthetic=True)
    with pytest.raises(NotSyntheticRootError) as raised:
        data.prepare_data()
    message = str(raised.value)
    assert isinstance(raised.value, UnlearnError) and isinstance(raised.value, FileExistsError)
    assert "\n" not in message
    assert f"data.init_args.root '{tmp_path}'" in message  # the field and what it was
    assert f"no {MARKER}" in message  # what was expected
    assert "holds 7 entries: class_scene, depth_euclidean, edge_texture, ..." in message  # found
    assert "set data.init_args.synthetic: false" in message  # how to read a real root
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # untouched
