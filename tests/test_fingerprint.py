"""The identity check of file-backed data: content fingerprints, the ``stat`` mode, old stores.

The trees are written here with files whose byte size depends only on the image size (PNG
without compression, ``.npy``), so that a replacement of the same size is easy to make.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_random_poison
from PIL import Image

from unlearn.data import ImageFolderDataModule, TaskonomyDataModule
from unlearn.data.taskonomy_domains import domain
from unlearn.errors import UnlearnError
from unlearn.poisons.store import PoisonStoreError

SIZE = 8


def _png(path: Path, seed: int) -> None:
    """A random ``SIZE x SIZE`` RGB PNG stored uncompressed (its size depends on SIZE only)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, compress_level=0)


def _replace_keeping_size(path: Path, write) -> None:
    """Rewrite ``path`` with other content of exactly the same byte size (checked)."""
    before, size = path.read_bytes(), path.stat().st_size
    write(path)
    assert path.stat().st_size == size and path.read_bytes() != before


# ---------------------------------------------------------------------------- ImageFolder
def _folder_tree(root: Path) -> None:
    for s, split in enumerate(("train", "val")):
        for c, name in enumerate(("ant", "bee")):
            for i in range(2):
                _png(root / split / name / f"{i}.png", seed=100 * s + 10 * c + i)


def _folder(root: Path, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        root=root, num_classes=2, image_size=SIZE, batch_size=2, num_workers=0, **kwargs
    )


def test_image_folder_refuses_a_same_size_replacement(tmp_path: Path) -> None:
    _folder_tree(tmp_path / "a")
    store = write_random_poison(_folder(tmp_path / "a"), tmp_path / "poison")
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the same data elsewhere is accepted
    _folder(tmp_path / "b", poison=store).setup()
    _replace_keeping_size(tmp_path / "b/train/bee/1.png", lambda p: _png(p, seed=999))
    with pytest.raises(PoisonStoreError, match=r"fingerprint: expected 'content:[0-9a-f]{64}'"):
        _folder(tmp_path / "b", poison=store).setup()


def test_stat_mode_accepts_a_same_size_replacement_but_not_content_mode(tmp_path: Path) -> None:
    """``stat`` is the documented weak mode; a poison is checked in the mode it was made with."""
    _folder_tree(tmp_path)
    store = write_random_poison(_folder(tmp_path, fingerprint="stat"), tmp_path / "poison")
    _replace_keeping_size(tmp_path / "train/ant/0.png", lambda p: _png(p, seed=999))
    _folder(tmp_path, fingerprint="stat", poison=store).setup()  # not noticed in stat mode
    with pytest.raises(PoisonStoreError) as err:
        _folder(tmp_path, poison=store).setup()
    message = str(err.value)
    assert "made with fingerprint mode 'stat'" in message and "uses 'content'" in message
    assert "--data.init_args.fingerprint" in message and "\n" not in message


def test_a_store_from_before_the_modes_is_explained(tmp_path: Path) -> None:
    """A plain hex fingerprint (the names+sizes hash of earlier versions) is the stat hash."""
    _folder_tree(tmp_path)
    digest = hashlib.sha256(str((3, SIZE, SIZE)).encode())  # the earlier formula, spelled out
    for label, name in enumerate(("ant", "bee")):
        for i in range(2):
            size = (tmp_path / "train" / name / f"{i}.png").stat().st_size
            digest.update(f"{name}/{i}.png:{size}:{label}\n".encode())
    store = write_random_poison(_folder(tmp_path), tmp_path / "poison")
    payload = torch.load(store / "poison.pt", weights_only=True)
    assert payload["meta"]["fingerprint"].startswith("content:")
    payload["meta"]["fingerprint"] = digest.hexdigest()  # as an earlier version wrote it
    torch.save(payload, store / "poison.pt")
    (store / "meta.json").unlink()
    with pytest.raises(PoisonStoreError, match="made before fingerprint modes existed") as err:
        _folder(tmp_path, poison=store).setup()
    assert "to 'stat'" in str(err.value) and "remake the poison" in str(err.value)
    _folder(tmp_path, fingerprint="stat", poison=store).setup()  # the way to keep using it
    grown = tmp_path / "train/ant/1.png"
    grown.write_bytes(grown.read_bytes() + b"!")  # trailing bytes: the same image, a new size
    with pytest.raises(PoisonStoreError, match=r"fingerprint: expected 'stat:"):
        _folder(tmp_path, fingerprint="stat", poison=store).setup()  # a size change is seen


def test_fingerprint_is_computed_once_per_data_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import unlearn.data.datasets as datasets

    _folder_tree(tmp_path)
    store = write_random_poison(_folder(tmp_path), tmp_path / "poison")
    read = []
    real = datasets.file_sha256
    monkeypatch.setattr(datasets, "file_sha256", lambda p: read.append(p) or real(p))
    data = _folder(tmp_path, poison=store)
    first = data.info().fingerprint
    data.setup()  # checks the poison against info() again
    assert data.info().fingerprint == first and len(read) == 4  # each training file once
    assert sorted(p.name for p in read) == ["0.png", "0.png", "1.png", "1.png"]


def test_an_unknown_fingerprint_mode_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(UnlearnError, match=r"ImageFolderDataModule: fingerprint must be one of"):
        _folder(tmp_path, fingerprint="names")
    with pytest.raises(UnlearnError, match=r"TaskonomyDataModule: fingerprint must be one of"):
        TaskonomyDataModule(root=tmp_path, fingerprint="fast")


# ---------------------------------------------------------------------------- Taskonomy
def _scene(path: Path, seed: int) -> None:
    """A ``class_scene`` file: 365 float32 logits (the file size does not depend on values)."""
    logits = np.random.default_rng(seed).random(365).astype(np.float32)
    logits[seed % 365] = 5.0
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, logits)


def _scenes_tree(root: Path) -> None:
    for b, building in enumerate(("b1", "b2")):
        for point in range(2):
            _png(root / "rgb" / building / domain("rgb").file_name(point, 0), seed=10 * b + point)
            scene = root / "class_scene" / building / domain("class_scene").file_name(point, 0)
            _scene(scene, seed=10 * b + point)


def _taskonomy(root: Path, **kwargs) -> TaskonomyDataModule:
    return TaskonomyDataModule(
        root=root,
        domains=["rgb", "class_scene"],
        train_buildings=["b1"],
        val_buildings=["b2"],
        test_buildings=["b2"],
        image_size=SIZE,
        batch_size=2,
        augment=False,
        **kwargs,
    )


@pytest.mark.parametrize("changed", ["rgb", "class_scene"])
def test_taskonomy_refuses_a_same_size_replacement(tmp_path: Path, changed: str) -> None:
    _scenes_tree(tmp_path)
    store = write_random_poison(_taskonomy(tmp_path), tmp_path / "poison")
    stat_store = write_random_poison(_taskonomy(tmp_path, fingerprint="stat"), tmp_path / "stat")
    path = tmp_path / changed / "b1" / domain(changed).file_name(1, 0)
    rewrite = _png if changed == "rgb" else _scene
    _replace_keeping_size(path, lambda p: rewrite(p, seed=77))
    with pytest.raises(PoisonStoreError, match=r"fingerprint: expected 'content:[0-9a-f]{64}'"):
        _taskonomy(tmp_path, poison=store).setup()
    _taskonomy(tmp_path, fingerprint="stat", poison=stat_store).setup()  # the weak mode
    with pytest.raises(PoisonStoreError, match="made with fingerprint mode 'content'"):
        _taskonomy(tmp_path, fingerprint="stat", poison=store).setup()
