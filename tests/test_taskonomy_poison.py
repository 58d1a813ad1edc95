"""Poisons against the scene labels of Taskonomy-layout data, written back as rgb PNGs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unlearn.data.synthetic_scenes import generate
from unlearn.data.taskonomy import TaskonomyDataModule
from unlearn.errors import UnlearnError
from unlearn.poisons import AR, EM, LSP, OPS, RandomNoise
from unlearn.poisons.command import generate_poison
from unlearn.poisons.taskonomy_export import export_taskonomy_poison, to_8bit, within_budget

SIZE = 16
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes") / "clean"
    generate(
        root, ["hanson", "wiconisco", "ihlen"], points_per_building=4, views_per_point=2, size=32
    )
    return root


def data_module(root: Path, **kwargs) -> TaskonomyDataModule:
    return TaskonomyDataModule(
        root=root,
        synthetic=True,
        domains=["rgb", "class_scene", "segment_semantic"],
        train_buildings=["hanson"],
        val_buildings=["wiconisco"],
        test_buildings=["ihlen"],
        image_size=SIZE,
        batch_size=4,
        augment=False,
        **kwargs,
    )


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


METHODS = {
    "random": lambda: RandomNoise(eps=8 / 255),
    "em": lambda: EM(
        eps=8 / 255,
        model="small_cnn",
        train_steps=2,
        pgd_steps=2,
        step_size=2 / 255,
        max_rounds=2,
        batch_size=8,
    ),
    "lsp": lambda: LSP(eps_per_pixel=6 / 255, grid=2),
    "ops": lambda: OPS(pixels=1),
    "ar": lambda: AR(eps=1.0, crop=2, candidates=32),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_poison_written_in_layout_within_budget(scenes: Path, tmp_path: Path, method: str) -> None:
    before = tree_hash(scenes)
    data = data_module(scenes)
    store = generate_poison(
        data,
        METHODS[method](),
        tmp_path / "store",
        device="cpu",
    )
    out = export_taskonomy_poison(store.parent, tmp_path / "poisoned", data)
    assert tree_hash(scenes) == before  # the clean root is never written
    meta = data.info()
    assert meta.image_shape == (3, SIZE, SIZE) and meta.num_classes == 4
    stored = torch.load(store, weights_only=True)
    norm, eps = stored["meta"]["norm"], stored["meta"]["eps"]
    poisoned = data_module(scenes, rgb_root=out)
    poisoned.setup("fit")
    clean_source = data.train_source
    for i, (building, point, view) in enumerate(clean_source.index.keys):
        png = out / "rgb" / "taskonomy" / building / f"point_{point}_view_{view}_domain_rgb.png"
        written = torch.from_numpy(np.array(Image.open(png))).permute(2, 0, 1)
        clean = clean_source.image(i)
        assert written.shape == (3, SIZE, SIZE)  # stored at the resolution it was made at
        change = (written.double() - clean.double()) / 255
        assert within_budget(change, norm, eps), (method, i)
        target = (clean.double() / 255 + stored["delta"][i].double()).clamp(0, 1)
        assert (written.double() / 255 - target).abs().max() <= 1 / 255 + 1e-6
        sample = poisoned.train_dataset()[i]
        assert torch.equal(sample["rgb"], written.float() / 255)  # read back unchanged
        assert sample["class_scene"] == clean_source.labels[i]  # labels from the clean root
    assert len(poisoned.val_dataset()) == len(data.val_dataset())


def test_in_memory_poison_matches_store(scenes: Path, tmp_path: Path) -> None:
    data = data_module(scenes)
    store = generate_poison(data, RandomNoise(eps=4 / 255), tmp_path / "s", device="cpu")
    poisoned = data_module(scenes, poison=store.parent)
    poisoned.setup("fit")
    delta = torch.load(store, weights_only=True)["delta"].float()
    sample = poisoned.probe_dataset()[3]
    clean = data.clean_train_dataset()[3]["image"]
    assert torch.allclose(sample["rgb"], (clean + delta[3]).clamp(0, 1))


def test_rounding_falls_back_towards_clean() -> None:
    clean = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    delta = torch.full((3, 4, 4), 0.6 / 255)  # L2 = sqrt(48) * 0.6/255; nearest gives 1/255
    eps = float(delta.norm())
    image, fell_back = to_8bit(clean, delta, "l2", eps)
    assert fell_back and torch.equal(image, clean)
    image, fell_back = to_8bit(clean, torch.full((3, 4, 4), 8 / 255), "linf", 8 / 255)
    assert not fell_back and (image == 108).all()


def test_export_refuses_the_clean_root(scenes: Path, tmp_path: Path) -> None:
    data = data_module(scenes)
    store = generate_poison(data, RandomNoise(), tmp_path / "s", device="cpu")
    with pytest.raises(UnlearnError, match="overlaps the clean root"):
        export_taskonomy_poison(store.parent, scenes / "poisoned", data)


@pytest.mark.parametrize(
    "config",
    sorted([*REPO.glob("configs/scenes/poison_*.yaml"), *REPO.glob("configs/taskonomy/poison_*")]),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_poison_configs_parse(config: Path) -> None:
    from unlearn.poisons.command import build_parser

    cfg = build_parser().parse_args(["--config", str(config)])
    assert cfg.data.class_path.endswith("TaskonomyDataModule")
    assert cfg.method.class_path.rsplit(".", 1)[-1] in ("RandomNoise", "EM", "LSP", "OPS", "AR")
