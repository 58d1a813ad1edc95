"""``train_subset``: a data module's training split as a fixed, class-balanced subset.

The subset is what every consumer sees (validation split, poisons, probe set, ``info()``),
indexed ``0..M-1``; its identity differs from the full split's, is recorded in a poison's
``meta.json``, and a poison made for another subset is refused naming both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fake_data import write_image_folder
from lightning.fabric.utilities.seed import seed_everything
from poison_fixtures import write_cifar10

from unlearn.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    ImageClassificationDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    SVHNDataModule,
)
from unlearn.data.config import data_config, data_module_from_config
from unlearn.data.fashion_mnist import FashionMNISTDataModule
from unlearn.data.poison_store import PoisonStoreError
from unlearn.errors import ConfigError
from unlearn.poisons import RandomNoise
from unlearn.poisons.command import generate_poison
from unlearn.poisons.export import export_poison


def _full_labels() -> torch.Tensor:
    return DigitsDataModule().train_source.labels


def test_the_subset_is_class_balanced_and_indexed_from_zero() -> None:
    data = DigitsDataModule(train_subset=25, augment=False)
    data.setup()
    source = data.train_source
    assert len(source) == 25 and data.info().num_samples == 25
    # 25 over 10 classes: 2 each, one more for the first 5 classes in class order
    assert torch.bincount(source.labels, minlength=10).tolist() == [3] * 5 + [2] * 5
    served = data.probe_dataset()
    assert sorted(int(served[i]["index"]) for i in range(len(served))) == list(range(25))
    full = DigitsDataModule().train_source
    original = source.indices
    assert bool((original[1:] > original[:-1]).all())  # original order, no repeats
    for i in range(25):  # position i is the full split's sample original[i]
        j = int(original[i])
        assert torch.equal(source.image(i), full.image(j)) and source.labels[i] == full.labels[j]


def test_the_subset_does_not_depend_on_any_seed_and_is_the_same_in_two_modules() -> None:
    seed_everything(1, verbose=False)
    first = DigitsDataModule(train_subset=50, seed=0, val_fraction=0.2)
    first.setup()
    seed_everything(2, verbose=False)
    second = DigitsDataModule(train_subset=50, seed=7, val_fraction=0.2)
    second.setup()
    assert torch.equal(first.train_source.indices, second.train_source.indices)
    assert first.info() == second.info()
    # the data module's seed still draws the validation split, from the subset
    fit_a, val_a = first._split_indices()
    _, val_b = second._split_indices()
    assert len(fit_a) + len(val_a) == 50 and int(torch.cat([fit_a, val_a]).max()) < 50
    assert not torch.equal(val_a, val_b)
    assert len(first.val_dataset()) == 10 and len(first.train_dataset()) == 40


def test_a_smaller_subset_is_part_of_a_larger_one() -> None:
    small = DigitsDataModule(train_subset=30).train_source.indices
    large = DigitsDataModule(train_subset=60).train_source.indices
    assert set(small.tolist()) < set(large.tolist())


def test_the_identity_of_a_subset_differs_from_the_full_split_and_other_subsets() -> None:
    full = DigitsDataModule().info()
    a, b = DigitsDataModule(train_subset=40).info(), DigitsDataModule(train_subset=41).info()
    assert full.train_subset is None and (a.train_subset, b.train_subset) == (40, 41)
    assert len({full.fingerprint, a.fingerprint, b.fingerprint}) == 3


def test_a_subset_of_file_backed_data_keeps_the_fingerprint_mode(tmp_path: Path) -> None:
    write_image_folder(tmp_path, classes=("a", "b", "c"), per_class=4, size=8)
    kwargs = {"root": tmp_path, "num_classes": 3, "image_size": 8, "test_dir": "val"}
    for mode in ("content", "stat"):
        full = ImageFolderDataModule(**kwargs, fingerprint=mode)
        subset = ImageFolderDataModule(**kwargs, fingerprint=mode, train_subset=6)
        assert torch.bincount(subset.train_source.labels).tolist() == [2, 2, 2]
        assert subset.info().fingerprint.startswith(f"{mode}:")
        assert subset.info().fingerprint != full.info().fingerprint


def test_a_poison_made_on_a_subset_is_applied_to_the_subset(tmp_path: Path) -> None:
    data = DigitsDataModule(train_subset=40)
    store = generate_poison(data, RandomNoise(), tmp_path / "p", device="cpu").parent
    meta = json.loads((store / "meta.json").read_text())
    assert meta["train_subset"] == 40 and meta["num_samples"] == 40
    assert meta["data"]["init_args"]["train_subset"] == 40
    delta = torch.load(store / "poison.pt", weights_only=True)["delta"]
    poisoned = DigitsDataModule(train_subset=40, poison=store, augment=False)
    served = poisoned.probe_dataset()
    full = DigitsDataModule().train_source
    original = DigitsDataModule(train_subset=40).train_source.indices
    assert len(served) == 40
    for i in range(40):
        sample = served[i]
        clean = full.image(int(original[sample["index"]])).float() / 255
        expected = (clean + delta[int(sample["index"])].float()).clamp(0, 1)
        assert torch.allclose(sample["image"], expected, atol=1e-6)


def test_a_poison_is_refused_on_another_subset_or_the_full_split(tmp_path: Path) -> None:
    store = generate_poison(
        DigitsDataModule(train_subset=40), RandomNoise(), tmp_path / "p", device="cpu"
    ).parent
    with pytest.raises(PoisonStoreError) as other:
        DigitsDataModule(train_subset=50, poison=store).setup()
    assert "made for train_subset 40, this data module uses train_subset 50" in str(other.value)
    assert "--data.init_args.train_subset=40" in str(other.value)
    with pytest.raises(PoisonStoreError) as full:
        DigitsDataModule(poison=store).setup()
    assert "made for train_subset 40, this data module uses the full training split" in str(
        full.value
    )


def test_a_full_split_poison_is_refused_on_a_subset(tmp_path: Path) -> None:
    store = generate_poison(
        DigitsDataModule(), RandomNoise(), tmp_path / "p", poison_ratio=0.02, device="cpu"
    ).parent
    assert json.loads((store / "meta.json").read_text())["train_subset"] is None
    with pytest.raises(PoisonStoreError) as refused:
        DigitsDataModule(train_subset=40, poison=store).setup()
    message = str(refused.value)
    assert "made for the full training split, this data module uses train_subset 40" in message
    assert "--data.init_args.train_subset=null" in message
    # a store from before subsets (no train_subset key) counts as made for the full split
    meta_file = store / "meta.json"
    payload = torch.load(store / "poison.pt", weights_only=True)
    del payload["meta"]["train_subset"]
    torch.save(payload, store / "poison.pt")
    meta_file.unlink()
    DigitsDataModule(poison=store).setup()
    with pytest.raises(PoisonStoreError, match="made for the full training split"):
        DigitsDataModule(train_subset=40, poison=store).setup()


def test_a_subset_a_class_cannot_fill_is_refused() -> None:
    sizes = torch.bincount(_full_labels(), minlength=10)
    count = 10 * (int(sizes.min()) + 1)  # one more of every class than the smallest has
    with pytest.raises(ConfigError) as refused:
        DigitsDataModule(train_subset=count).setup()
    message = str(refused.value)
    assert f"train_subset {count}" in message and "DigitsDataModule" in message
    # the first class (in class order) that is short, with what it needs and has
    short = next(c for c in range(10) if sizes[c] < count // 10)
    assert f"takes {count // 10} samples of class {short}" in message
    assert f"has {int(sizes[short])} of class {short}" in message


@pytest.mark.parametrize("count", [1438, 5000])
def test_a_subset_not_smaller_than_the_split_is_refused(count: int) -> None:
    assert len(_full_labels()) == 1438
    with pytest.raises(ConfigError, match=f"train_subset {count} is not smaller than the 1438"):
        DigitsDataModule(train_subset=count).setup()


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_a_bad_train_subset_is_refused_when_the_module_is_built(value: object) -> None:
    with pytest.raises(ConfigError, match="train_subset"):
        DigitsDataModule(train_subset=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "klass",
    [
        CIFAR10DataModule,
        CIFAR100DataModule,
        SVHNDataModule,
        MNISTDataModule,
        FashionMNISTDataModule,
        DigitsDataModule,
        ImageFolderDataModule,
    ],
)
def test_every_classification_module_takes_train_subset_from_a_config(klass: type) -> None:
    config = {"class_path": f"{klass.__module__}.{klass.__qualname__}"}
    config["init_args"] = {"train_subset": 20}  # type: ignore[assignment]
    data = data_module_from_config(config, ImageClassificationDataModule, "test")
    assert type(data) is klass and data.train_subset == 20
    assert data_config(data)["init_args"]["train_subset"] == 20


def test_a_cifar_subset_reads_from_the_files(tmp_path: Path) -> None:
    write_cifar10(tmp_path)  # 40 images, labels cycling through the 10 classes
    data = CIFAR10DataModule(root=tmp_path, train_subset=20)
    assert torch.bincount(data.train_source.labels).tolist() == [2] * 10
    assert data.info().num_samples == 20


def test_export_rebuilds_the_subset_from_the_poison(tmp_path: Path) -> None:
    store = generate_poison(
        DigitsDataModule(train_subset=30), RandomNoise(), tmp_path / "p", device="cpu"
    ).parent
    out = export_poison(store, tmp_path / "png", test=False)  # data module from meta.json
    files = sorted(out.glob("train/*/*.png"))
    assert sorted(int(p.stem) for p in files) == list(range(30))
    labels = DigitsDataModule(train_subset=30).train_source.labels
    assert all(int(p.parent.name) == int(labels[int(p.stem)]) for p in files)
