"""A poison's meta.json records the data module exactly, and its exports hold what was served.

For every data module class: build it with non-default arguments on tiny files written here in
the real formats, make a cheap poison, check that ``meta.json`` records exactly the given
arguments (every other argument at its default), export the poison with the data module
rebuilt from ``meta.json`` alone, and compare the export with what a module training on the
poison serves.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fake_data import write_cifar10, write_cifar100, write_image_folder, write_mnist, write_svhn
from lightning import LightningDataModule
from PIL import Image

from unlearn.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    ImageClassificationDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    SVHNDataModule,
    TaskonomyDataModule,
)
from unlearn.data.config import data_config, data_module_from_config
from unlearn.data.synthetic_scenes import generate
from unlearn.errors import UnlearnError
from unlearn.poisons import RandomNoise
from unlearn.poisons.command import generate_poison
from unlearn.poisons.command import main as poison_main
from unlearn.poisons.export import main as export_main
from unlearn.poisons.taskonomy_export import export_taskonomy_poison

EPS = 8 / 255


def _taskonomy_files(root: Path) -> None:
    """Two training buildings and one other in the ``{building}/{domain}/`` layout."""
    rng = np.random.default_rng(0)
    for b, building in enumerate(("b1", "b2", "b3")):
        for point in range(3):
            stem = f"point_{point}_view_0_domain_"
            for name, suffix in (("rgb", "rgb"), ("segment_semantic", "segmentsemantic")):
                folder = root / building / name
                folder.mkdir(parents=True, exist_ok=True)
                shape = (20, 20, 3) if name == "rgb" else (20, 20)
                pixels = rng.integers(0, 256 if name == "rgb" else 18, shape).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{stem}{suffix}.png")
            folder = root / building / "class_scene"
            folder.mkdir(parents=True, exist_ok=True)
            scene = rng.random(365).astype(np.float32)
            scene[(3, 7, 11)[(point + b) % 3]] = 5.0
            np.save(folder / f"{stem}class_places.npy", scene)


def _mnist_files(root: Path) -> None:
    rng = np.random.default_rng(1)
    write_mnist(
        root,
        rng.integers(0, 256, (10, 28, 28)),
        rng.integers(0, 10, 10),
        rng.integers(0, 256, (4, 28, 28)),
        rng.integers(0, 10, 4),
        gz=False,
    )


def _image_folder_files(root: Path) -> None:
    write_image_folder(root, classes=("ant", "bee", "cat"), per_class=3, size=20)
    (root / "train").rename(root / "tr")
    (root / "val").rename(root / "te")


def _scenes(root: Path) -> None:
    generate(root, ["hanson", "wiconisco", "ihlen"], points_per_building=2, views_per_point=2)


#: per data module: the files to write under ``root`` and the arguments (non-default ones;
#: ``root`` is added). Paths and tuples are given as such: meta.json records str and lists.
CASES: dict[str, tuple[type, Callable[[Path], Any], dict[str, Any]]] = {
    "digits": (
        DigitsDataModule,
        lambda root: None,
        {"batch_size": 5, "val_fraction": 0.25, "seed": 3, "augment": False},
    ),
    "cifar10": (
        CIFAR10DataModule,
        lambda root: write_cifar10(root, n_per_batch=3),
        {"batch_size": 4, "seed": 2, "poison_ratio": 0.5, "augment": False},
    ),
    "cifar100": (
        CIFAR100DataModule,
        lambda root: write_cifar100(root, n=10),
        {"val_fraction": 0.2, "num_workers": 0, "batch_size": 3},
    ),
    "svhn": (SVHNDataModule, lambda root: write_svhn(root, n=10), {"batch_size": 2, "seed": 9}),
    "mnist": (MNISTDataModule, _mnist_files, {"batch_size": 3, "augment": False}),
    "imagefolder": (
        ImageFolderDataModule,
        _image_folder_files,
        {
            "num_classes": 3,
            "image_size": 12,
            "channels": 1,
            "train_dir": "tr",
            "test_dir": "te",
            "name": "insects",
            "num_workers": 0,
            "batch_size": 4,
            "augment": False,
        },
    ),
    "taskonomy": (
        TaskonomyDataModule,
        _taskonomy_files,
        {
            "domains": ("rgb", "class_scene", "segment_semantic"),
            "train_buildings": ["b1", "b2"],
            "val_buildings": ["b3"],
            "test_buildings": ["b3"],
            "image_size": 12,
            "batch_size": 2,
            "seed": 5,
            "augment": False,
            "crop_padding": 2,
            "scene_classes": (3, 7, 11),
            "max_samples_per_building": 2,
            "on_bad_sample": "skip",
            "cache": True,
        },
    ),
    "synthetic_scenes": (
        TaskonomyDataModule,
        _scenes,
        {
            "synthetic": True,
            "domains": ["rgb", "class_scene", "depth_euclidean"],
            "train_buildings": ["hanson"],
            "val_buildings": ["wiconisco"],
            "test_buildings": ["ihlen"],
            "image_size": 16,
            "batch_size": 3,
            "augment": False,
        },
    ),
}


def _plain(value: Any) -> Any:
    """What JSON holds for a given argument."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _expected_init_args(klass: type, given: dict[str, Any]) -> dict[str, Any]:
    """Every ``__init__`` argument: the given ones, the others at their signature default."""
    parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
    defaults = {p.name: p.default for p in parameters}
    assert set(given) <= set(defaults), "the test gives an argument the class does not take"
    return {name: _plain(given.get(name, default)) for name, default in defaults.items()}


def _png(path: Path) -> torch.Tensor:
    """A PNG as ``float [C, H, W]`` in ``[0, 1]``."""
    array = np.array(Image.open(path))
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).double() / 255


def _served(klass: type, kwargs: dict[str, Any], store: Path) -> list[dict[str, torch.Tensor]]:
    """The training samples a module trains on with the poison, unaugmented."""
    poisoned = klass(**{**kwargs, "poison": store, "poison_ratio": 1.0, "augment": False})
    poisoned.setup("fit")
    dataset = poisoned.probe_dataset()
    return [dataset[i] for i in range(len(dataset))]


@pytest.mark.parametrize("case", list(CASES))
def test_meta_records_the_arguments_and_exports_hold_what_was_served(
    case: str, tmp_path: Path
) -> None:
    klass, write, given = CASES[case]
    root = tmp_path / "data"
    root.mkdir()
    write(root)
    kwargs = {"root": root, **given}
    data = klass(**kwargs)
    store = generate_poison(
        data, RandomNoise(eps=EPS), tmp_path / "store", seed=1, poison_ratio=0.5, device="cpu"
    ).parent

    meta = json.loads((store / "meta.json").read_text())
    assert meta["data"] == {
        "class_path": f"{klass.__module__}.{klass.__qualname__}",
        "init_args": _expected_init_args(klass, kwargs),
    }

    export_main(["--poison", str(store), "--output", str(tmp_path / "png"), "--no_test"])
    exported = {int(p.stem): p for p in (tmp_path / "png" / "train").rglob("*.png")}
    assert len(exported) == len(data.train_source)  # every training sample, poisoned or not
    served = _served(klass, kwargs, store)
    assert served, "the module serves no training samples"
    poisoned_indices = set(torch.load(store / "poison.pt", weights_only=True)["indices"].tolist())
    changed = 0
    for sample in served:
        index = int(sample["index"])
        path = exported[index]
        assert int(path.parent.name) == int(sample["label"])
        image = _png(path)
        assert image.shape == sample["image"].shape
        assert (image - sample["image"].double()).abs().max() <= 0.5 / 255 + 1e-6, index
        levels = (image * 255).round()
        clean = data.clean_train_dataset()[index]["image"].double().mul(255).round()
        if index in poisoned_indices:
            changed += int(not torch.equal(levels, clean))
        else:
            assert torch.equal(levels, clean), index
    assert changed > 0, "no served sample carries the poison"

    if klass is TaskonomyDataModule:  # the Taskonomy-layout export, also rebuilt from meta
        out = export_taskonomy_poison(store, tmp_path / "layout")
        keys = data.train_source.index.keys
        for sample in served:
            building, point, view = keys[int(sample["index"])]
            png = out / "rgb" / "taskonomy" / building / f"point_{point}_view_{view}_domain_rgb.png"
            assert (_png(png) - sample["rgb"].double()).abs().max() <= 1 / 255 + 1e-6


def test_the_command_records_what_the_python_api_records(tmp_path: Path) -> None:
    """One code path: ``python -m unlearn poison`` writes the same ``data`` as the function."""
    klass, write, given = CASES["imagefolder"]
    write(tmp_path / "data")
    kwargs = {"root": str(tmp_path / "data"), **given}
    generate_poison(klass(**kwargs), RandomNoise(), tmp_path / "api", device="cpu")
    poison_main(
        [
            "--data",
            "ImageFolderDataModule",
            *[
                f"--data.init_args.{k}={v if isinstance(v, str) else json.dumps(v)}"
                for k, v in kwargs.items()
            ],
            "--method",
            "RandomNoise",
            "--output_dir",
            str(tmp_path / "cli"),
            "--no_progress",
        ]
    )
    api, cli = (
        json.loads((tmp_path / d / "meta.json").read_text())["data"] for d in ("api", "cli")
    )
    assert cli == api
    assert api["init_args"]["image_size"] == 12 and api["init_args"]["channels"] == 1


def test_hparams_are_plain_and_load_with_weights_only(tmp_path: Path) -> None:
    data = TaskonomyDataModule(root=tmp_path, domains=("rgb", "class_scene"), rgb_root=tmp_path)
    hparams = dict(data.hparams)
    assert hparams["root"] == str(tmp_path) and hparams["domains"] == ["rgb", "class_scene"]
    json.dumps(hparams)  # what a checkpoint's datamodule_hyper_parameters hold must load back
    torch.save(hparams, tmp_path / "h.pt")
    assert torch.load(tmp_path / "h.pt", weights_only=True) == hparams


class _Wrapper(LightningDataModule):
    """A module whose ``__init__`` builds a data module (Lightning's frame walk would merge)."""

    def __init__(self, inner_batch_size: int = 3, note: str = "outer") -> None:
        super().__init__()
        self.inner = DigitsDataModule(batch_size=inner_batch_size, seed=4)


def test_a_module_built_inside_another_init_records_only_its_own_arguments() -> None:
    inner = _Wrapper(inner_batch_size=6).inner
    given = {"batch_size": 6, "seed": 4}
    assert dict(inner.hparams) == _expected_init_args(DigitsDataModule, given)
    rebuilt = data_module_from_config(data_config(inner), ImageClassificationDataModule, "test")
    assert type(rebuilt) is DigitsDataModule and dict(rebuilt.hparams) == dict(inner.hparams)


class _WithAnObject(DigitsDataModule):
    def __init__(self, transform: object = None, batch_size: int = 128) -> None:
        super().__init__(batch_size=batch_size)
        self.transform = transform


def test_an_argument_that_is_not_a_plain_value_is_named(tmp_path: Path) -> None:
    data = _WithAnObject(transform=object(), batch_size=2)
    assert "transform" not in data.hparams and data.hparams["batch_size"] == 2
    with pytest.raises(UnlearnError, match=r"\['transform'\] are not plain values"):
        generate_poison(data, RandomNoise(), tmp_path / "p", device="cpu")
    assert not (tmp_path / "p").exists()  # refused before any work


def test_meta_without_data_or_with_a_wrong_one_is_named(tmp_path: Path) -> None:
    with pytest.raises(UnlearnError, match=r"meta\.json records no data module"):
        data_module_from_config(None, ImageClassificationDataModule, "the poison's meta.json")
    config = {"class_path": "DigitsDataModule", "init_args": {"image_size": 4}}
    with pytest.raises(
        UnlearnError, match=r"not a valid ImageClassificationDataModule config.*image_size"
    ):
        data_module_from_config(config, ImageClassificationDataModule, "the poison's meta.json")
