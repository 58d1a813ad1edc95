"""Poison store: round trip, refusals, clean data untouched, poisoned data modules, export."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from poison_fixtures import tree_digest, write_cifar10

from unlearn.data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule
from unlearn.poisons import LSP, OPS, RandomNoise, load_poison, save_poison
from unlearn.poisons.command import generate_poison
from unlearn.poisons.export import export_poison
from unlearn.poisons.store import PoisonStoreError


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    write_cifar10(tmp_path / "data")
    return tmp_path / "data"


def _meta(info, **extra: object) -> dict:
    return {
        "method": "test",
        "norm": "linf",
        "eps": 8 / 255,
        "dataset": info.name,
        "split": info.split,
        "num_samples": info.num_samples,
        "image_shape": list(info.image_shape),
        "fingerprint": info.fingerprint,
        "seed": 0,
        "poison_ratio": 1.0,
        **extra,
    }


def test_round_trip(cifar_root: Path, tmp_path: Path) -> None:
    info = CIFAR10DataModule(root=cifar_root).info()
    delta = (torch.rand(40, 3, 32, 32) * 2 - 1) * 8 / 255
    patterns = torch.rand(10, 3, 32, 32) * 0.01
    indices = torch.arange(40).flip(0)  # unsorted rows are stored sorted, rows follow
    path = save_poison(tmp_path / "p", delta, indices, _meta(info, params={"a": [1, 2]}), patterns)
    stored = load_poison(path.parent, expected=info)
    assert torch.equal(stored.indices, torch.arange(40))
    assert torch.equal(stored.delta, delta.flip(0).half())
    assert torch.equal(stored.class_patterns, patterns.half())
    assert stored.meta["params"] == {"a": [1, 2]} and stored.meta["version"] == 1
    on_disk = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert on_disk == stored.meta
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["meta.json", "poison.pt"]
    raw = torch.load(path, weights_only=True)  # tensors and plain values only
    assert set(raw) == {"format", "version", "delta", "indices", "class_patterns", "meta"}


def test_refuses_a_poison_made_for_other_data(cifar_root: Path, tmp_path: Path) -> None:
    digits = generate_poison(DigitsDataModule(), RandomNoise(), tmp_path / "digits")
    with pytest.raises(PoisonStoreError) as err:
        CIFAR10DataModule(root=cifar_root, poison=digits.parent).setup()
    message = str(err.value)
    assert "dataset: expected 'cifar10', found 'digits'" in message
    assert "num_samples: expected 40, found 1438" in message
    assert "image_shape: expected [3, 32, 32], found [1, 32, 32]" in message
    assert "fingerprint" in message and str(digits.parent) in message


def test_refuses_a_poison_for_changed_data(cifar_root: Path, tmp_path: Path) -> None:
    path = generate_poison(CIFAR10DataModule(root=cifar_root), RandomNoise(), tmp_path / "p")
    write_cifar10(cifar_root.parent / "other", seed=1)
    with pytest.raises(PoisonStoreError, match=r"fingerprint: expected '[0-9a-f]+', found"):
        CIFAR10DataModule(root=cifar_root.parent / "other", poison=path.parent).setup()


def test_refuses_truncated_and_pickled_files(cifar_root: Path, tmp_path: Path) -> None:
    path = generate_poison(CIFAR10DataModule(root=cifar_root), RandomNoise(), tmp_path / "p")
    truncated = tmp_path / "truncated" / "poison.pt"
    truncated.parent.mkdir()
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PoisonStoreError, match="truncated or not a torch file"):
        load_poison(truncated.parent)
    pickled = tmp_path / "pickled" / "poison.pt"
    pickled.parent.mkdir()
    payload = torch.load(path, weights_only=True)
    payload["meta"]["evil"] = Path("/etc/passwd")  # an arbitrary object: needs full unpickling
    torch.save(payload, pickled)
    with pytest.raises(PoisonStoreError, match="objects other than tensors and plain values"):
        load_poison(pickled.parent)
    with pytest.raises(PoisonStoreError, match="not found"):
        load_poison(tmp_path / "missing")


def test_refuses_a_poison_over_budget(cifar_root: Path, tmp_path: Path) -> None:
    path = generate_poison(CIFAR10DataModule(root=cifar_root), RandomNoise(), tmp_path / "p")
    payload = torch.load(path, weights_only=True)
    payload["delta"][3, 0, 0, 0] = 0.2
    torch.save(payload, path)
    with pytest.raises(
        PoisonStoreError, match=r"1 of 40 samples exceed the linf budget 0\.0313725"
    ):
        load_poison(path.parent)
    payload["delta"] = payload["delta"][:10]
    torch.save(payload, path)
    with pytest.raises(PoisonStoreError, match="40 indices but 10 rows of delta"):
        load_poison(path.parent)


def test_clean_data_on_disk_is_unchanged(cifar_root: Path, tmp_path: Path) -> None:
    before = tree_digest(cifar_root)
    data = CIFAR10DataModule(root=cifar_root)
    path = generate_poison(data, OPS(), tmp_path / "ops")
    poisoned = CIFAR10DataModule(root=cifar_root, poison=path.parent)
    poisoned.setup()
    for batch in poisoned.train_dataloader():
        assert batch["image"].shape[1:] == (3, 32, 32)
    export_poison(path.parent, tmp_path / "export")
    assert tree_digest(cifar_root) == before


def test_poisoned_data_module_serves_clamped_poison(cifar_root: Path, tmp_path: Path) -> None:
    path = generate_poison(CIFAR10DataModule(root=cifar_root), LSP(), tmp_path / "lsp")
    stored = load_poison(path.parent)
    clean = CIFAR10DataModule(root=cifar_root, augment=False)
    data = CIFAR10DataModule(root=cifar_root, augment=False, poison=path.parent, poison_ratio=0.5)
    data.setup()
    train = data.train_dataset()
    poisoned_rows = 0
    for i in range(len(train)):
        item, reference = train[i], clean.train_dataset()[i]
        expected = (reference["image"] + stored.delta[item["index"]].float()).clamp(0, 1)
        if torch.equal(item["image"], reference["image"]):
            continue
        assert torch.equal(item["image"], expected)
        assert item["image"].min() >= 0 and item["image"].max() <= 1
        poisoned_rows += 1
    assert poisoned_rows == 20  # poison_ratio 0.5 of 40
    for split in ("val_dataset", "test_dataset"):
        served, reference = getattr(data, split)(), getattr(clean, split)()
        assert all(torch.equal(served[i]["image"], reference[i]["image"]) for i in range(10))


def test_export_writes_an_image_folder_that_reads_back(cifar_root: Path, tmp_path: Path) -> None:
    path = generate_poison(CIFAR10DataModule(root=cifar_root), RandomNoise(), tmp_path / "p")
    out = export_poison(path.parent, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "train", "val"]
    assert len(list((out / "train").rglob("*.png"))) == 40
    assert len(list((out / "val").rglob("*.png"))) == 10
    folder = ImageFolderDataModule(root=out, num_classes=10, image_size=32, augment=False)
    reread = folder.train_dataset()
    poisoned = CIFAR10DataModule(root=cifar_root, augment=False, poison=path.parent)
    source = poisoned.train_dataset()
    for i in range(len(reread)):
        item = reread[i]
        index = int(folder.train_source.paths[i].stem)
        expected = source[index]["image"].mul(255).round().div(255)
        assert int(item["label"]) == int(source[index]["label"])
        assert torch.allclose(item["image"], expected, atol=1e-6)
        clean = CIFAR10DataModule(root=cifar_root).train_source.image(index).float() / 255
        assert (item["image"] - clean).abs().max() <= 8 / 255 + 1e-6  # budget after rounding
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_poison(path.parent, out)


def test_an_interrupted_save_keeps_the_old_poison(
    cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """meta.json is replaced first, poison.pt last; a failed write of poison.pt leaves the old
    one whole and no temporary file behind, and the store is refused until written again."""
    info = CIFAR10DataModule(root=cifar_root).info()
    delta = torch.full((40, 3, 32, 32), 4 / 255)
    save_poison(tmp_path / "p", delta, torch.arange(40), _meta(info, method="old"))
    real_save = torch.save

    def save_half_then_fail(obj: object, path: object) -> None:
        real_save({"partial": torch.zeros(3)}, path)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_poison(tmp_path / "p", -delta, torch.arange(40), _meta(info, method="new"))
    monkeypatch.setattr(torch, "save", real_save)
    old = torch.load(tmp_path / "p" / "poison.pt", weights_only=True)
    assert old["meta"]["method"] == "old" and torch.equal(old["delta"], delta.half())
    assert json.loads((tmp_path / "p" / "meta.json").read_text())["method"] == "new"
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["meta.json", "poison.pt"]
    # the new meta.json names another perturbation (its hash) and method than the old poison.pt
    with pytest.raises(PoisonStoreError, match=r"contradicts .* \['delta_sha256', 'method'\]"):
        load_poison(tmp_path / "p", expected=info)
    save_poison(tmp_path / "p", -delta, torch.arange(40), _meta(info, method="new"))
    assert load_poison(tmp_path / "p", expected=info).meta["method"] == "new"


def _small_store(directory: Path) -> Path:
    """A valid 4-sample poison store without data behind it (for format checks)."""
    meta = {
        "method": "test",
        "norm": "linf",
        "eps": 0.5,
        "dataset": "none",
        "split": "train",
        "num_samples": 4,
        "image_shape": [1, 2, 2],
        "fingerprint": "0" * 64,
        "seed": 0,
        "poison_ratio": 1.0,
        "params": {"steps": [1, 2]},
        "info": {"accuracy": float("nan")},  # NaN survives the meta.json round trip
    }
    return save_poison(directory, torch.full((4, 1, 2, 2), 0.25), torch.arange(4), meta)


def test_meta_json_must_agree_with_poison_pt(tmp_path: Path) -> None:
    path = _small_store(tmp_path / "p")
    meta_file = path.parent / "meta.json"
    assert load_poison(path.parent).meta["eps"] == 0.5  # as written: they agree
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "eps": 0.75, "seed": 3, "extra": 1}))
    with pytest.raises(PoisonStoreError) as err:
        load_poison(path)
    message = str(err.value)
    assert str(meta_file) in message and str(path) in message and "\n" not in message
    assert "3 keys ['eps', 'extra', 'seed']" in message
    assert "eps is 0.5 in poison.pt, 0.75 in meta.json" in message
    meta_file.write_text('{"method": "test", ')  # cut short
    with pytest.raises(PoisonStoreError, match=r"meta.json' is not valid JSON \(Expecting"):
        load_poison(path.parent)
    meta_file.write_text("[1, 2]")
    with pytest.raises(PoisonStoreError, match="holds a list, not the meta dict"):
        load_poison(path.parent)
    meta_file.unlink()  # the meta inside poison.pt is authoritative
    assert load_poison(path.parent).meta["params"] == {"steps": [1, 2]}


def test_the_meta_holds_the_content_hash_of_the_stored_perturbation(tmp_path: Path) -> None:
    stored = load_poison(_small_store(tmp_path / "a"))
    digest = stored.meta["delta_sha256"]
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["delta_sha256"] == digest
    assert (
        digest
        == hashlib.sha256(
            stored.delta.numpy().tobytes() + stored.indices.numpy().tobytes()
        ).hexdigest()
    )
    assert load_poison(_small_store(tmp_path / "b")).meta["delta_sha256"] == digest  # same
    meta = {k: v for k, v in stored.meta.items() if k not in ("version", "delta_sha256")}
    changed = torch.full((4, 1, 2, 2), 0.25)
    changed[3, 0, 1, 1] = 0.125  # one value of one sample
    other = load_poison(save_poison(tmp_path / "c", changed, torch.arange(4), meta))
    assert other.meta["delta_sha256"] != digest


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("empty", r"is empty \(0 bytes\)"),
        ("truncated", r"truncated or not a torch file \(\d+ bytes, a zip archive without"),
        ("random", r"truncated or not a torch file \(4096 bytes, not the zip archive"),
        ("json", r"truncated or not a torch file \(\d+ bytes, not the zip archive"),
        ("text", r"truncated or not a torch file \(\d+ bytes, not the zip archive"),
    ],
)
def test_unreadable_poison_files_give_one_line(tmp_path: Path, case: str, expected: str) -> None:
    real = _small_store(tmp_path / "real").read_bytes()
    contents = {
        "empty": b"",
        "truncated": real[: len(real) // 2],
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "json": (tmp_path / "real" / "meta.json").read_bytes(),  # a meta.json renamed
        "text": b"hello world\n",
    }
    file = tmp_path / "bad" / "poison.pt"
    file.parent.mkdir()
    file.write_bytes(contents[case])
    with pytest.raises(PoisonStoreError, match=expected) as err:
        load_poison(file.parent)
    assert f"'{file}'" in str(err.value) and "\n" not in str(err.value)
    assert os.path.getsize(file) == len(contents[case])  # never modified
