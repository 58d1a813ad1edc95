"""Bad input to every command: exit 2, one line naming the field or file, nothing left behind.

One table of command lines, each built in a fresh directory by a small builder (which also
writes the files the row needs) and run in this process through :func:`unlearn.cli.main`.
Every row is refused before training or poison generation starts, so the table is cheap.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import REPO, write_random_poison
from fake_data import write_image_folder

from unlearn.cli import main
from unlearn.sharpness import SAL_COLUMNS

Builder = Callable[[Path], list[str]]

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
SAL_PRESET = str(REPO / "callbacks" / "sal.yaml")
#: a fit of one step: where a bad input is (wrongly) accepted, it trains no longer than that
FIT = [
    *("fit", "--config", QUICKSTART, "--trainer.max_steps=1", "--trainer.limit_val_batches=1"),
    *("--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"),
    "--trainer.default_root_dir=runs",
]
#: an EM poison of one round of a linear surrogate: seconds, where a bad input is accepted
EM = [
    *("poison", "--config", str(REPO / "configs" / "digits" / "poison_em.yaml")),
    *("--method.init_args.model=linear", "--method.init_args.max_rounds=1"),
    *("--method.init_args.train_steps=1", "--method.init_args.pgd_steps=1"),
    *("--no_progress", "--output_dir=poisons/em"),
]
LAYERS = ["block1.conv", "block2.conv", "block3.conv", "head"]
CLEAN_SAL = [[0.0, 0.0, 1.0, 1.0], [0.0, 0.2, 1.0, 1.2]]
#: the files each data module reads under its root
DATA_FILES = {
    "CIFAR10DataModule": [
        f"cifar-10-batches-py/{name}"
        for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    ],
    "MNISTDataModule": [
        f"{split}-{kind}-ubyte"
        for split in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    ],
    "SVHNDataModule": ["train_32x32.mat", "test_32x32.mat"],
}


# ---------------------------------------------------------------------- builders
def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _saved(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(value, path)
    return path


def fit(*options: str) -> Builder:
    """The one-step fit with ``options``."""
    return lambda tmp: [*FIT, *options]


def sal(*options: str) -> Builder:
    """The one-step fit with the SAL preset and ``options``."""
    return lambda tmp: [*FIT, "--config", SAL_PRESET, *options]


def em(*options: str) -> Builder:
    """The one-round EM poison with ``options``."""
    return lambda tmp: [*EM, *options]


def method(class_path: str, **init_args: Any) -> Builder:
    """A poison of the digits by ``class_path`` with ``init_args`` (a config file)."""

    def build(tmp: Path) -> list[str]:
        config = yaml.safe_load((REPO / "configs" / "digits" / "poison_random.yaml").read_text())
        config["method"] = {"class_path": class_path, "init_args": init_args}
        config["output_dir"] = "poisons/x"
        return ["poison", "--config", str(_write(tmp / "m.yaml", yaml.safe_dump(config)))]

    return build


def folder(case: str) -> Builder:
    """A fit on a tiny ImageFolder tree (3 classes of 2 images) with one thing wrong."""

    def build(tmp: Path) -> list[str]:
        write_image_folder(tmp / "imgs", per_class=2, size=8)
        options = ["--data=ImageFolderDataModule", "--data.init_args.root=imgs"]
        options += ["--data.init_args.image_size=8", "--data.init_args.num_workers=0"]
        options += ["--data.init_args.num_classes=3"]
        if case == "empty_class":  # a class folder without images would train as a class
            (tmp / "imgs" / "train" / "empty").mkdir()
            options.append("--data.init_args.num_classes=4")
        elif case == "empty_split":  # class folders, none with an image
            for name in ("cat", "dog", "fox"):
                (tmp / "imgs" / "nothing" / name).mkdir(parents=True)
            options.append("--data.init_args.test_dir=nothing")
        elif case == "other_classes":
            for name in ("x", "y", "z"):
                for image in (tmp / "imgs" / "val" / "cat").iterdir():
                    _write(tmp / "imgs" / "other" / name / image.name, image.read_bytes())
            options.append("--data.init_args.test_dir=other")
        elif case == "class_count":
            options.append("--data.init_args.num_classes=5")
        elif case == "missing":
            options.append("--data.init_args.root=nowhere")
        return [*FIT, *options]

    return build


def data_files(module: str, content: bytes, suffix: str = "") -> Builder:
    """A fit of ``module`` whose files under ``root`` all hold ``content`` (not the format)."""

    def build(tmp: Path) -> list[str]:
        for name in DATA_FILES[module]:
            _write(tmp / "root" / f"{name}{suffix}", content)
        return [*FIT, f"--data={module}", "--data.init_args.root=root"]

    return build


def _digits_poison(tmp: Path) -> Path:
    from unlearn.data import DigitsDataModule

    return write_random_poison(DigitsDataModule(), tmp / "store")


def store(content: bytes | None, *options: str) -> Builder:
    """A fit on a poison store whose ``poison.pt`` holds ``content`` (None: a real one)."""

    def build(tmp: Path) -> list[str]:
        if content is None:
            _digits_poison(tmp)
        else:
            _write(tmp / "store" / "poison.pt", content)
            _write(tmp / "store" / "meta.json", "{}")
        return [*FIT, "--data.init_args.poison=store", *options]

    return build


def sal_csv(path: Path, values: Sequence[Sequence[Any]], layers: Sequence[str] = LAYERS) -> Path:
    """A ``sal.csv`` of ``len(values)`` checkpoints (each a row of SAL values per layer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(SAL_COLUMNS))
        writer.writeheader()
        for t, row in enumerate(values):
            for layer, value in zip(layers, row, strict=True):
                fields = {"epoch": t, "step": 7 * (t + 1), "layer": layer, "numel": 10}
                writer.writerow(fields | dict.fromkeys(SAL_COLUMNS[5:], 0.0) | {"sal": value})
    return path


def reference(kind: str) -> Builder:
    """A fit with the SAL preset and a bad clean ``reference`` file ``ref.csv``."""

    def build(tmp: Path) -> list[str]:
        ref = tmp / "ref.csv"
        if kind == "missing_column":
            _write(ref, ",".join(SAL_COLUMNS[:-1]) + "\n")
        elif kind == "nan":
            sal_csv(ref, [[1.0, math.nan, 1.0, 1.0]])
        else:
            sal_csv(ref, CLEAN_SAL)
            other = {"format": 1, "settings": {"eps": 0.5}, "non_finite": []}
            _write(tmp / "ref.json", "{not json" if kind == "sidecar" else json.dumps(other))
        return [*FIT, "--config", SAL_PRESET, f"--trainer.callbacks.reference={ref}"]

    return build


def ud(clean: Callable[[Path], Path | str], poisoned: Callable[[Path], Path], *extra: str):
    """``ud --clean CLEAN --poisoned POISONED EXTRA`` (the files made by the callables)."""
    return lambda tmp: ["ud", "--clean", str(clean(tmp)), "--poisoned", str(poisoned(tmp)), *extra]


def good_sal(name: str = "em.csv") -> Callable[[Path], Path]:
    return lambda tmp: sal_csv(tmp / name, CLEAN_SAL)


def text_file(name: str, content: str | bytes) -> Callable[[Path], Path]:
    return lambda tmp: _write(tmp / name, content)


def benchmark(*extra: str, **fields: Any) -> Builder:
    """A benchmark of a tiny spec (digits, clean + random) with ``fields`` changed."""

    def build(tmp: Path) -> list[str]:
        spec = {
            "name": "tiny",
            "train_configs": {"digits": QUICKSTART},
            "poison_configs": str(REPO / "configs" / "{data}" / "poison_{method}.yaml"),
            "methods": ["clean", "random"],
            "callbacks": [str(REPO / "callbacks" / "sal_fast.yaml")],
            "fit_args": ["--trainer.max_epochs=1"],
        } | fields
        path = _write(tmp / "spec.yaml", yaml.safe_dump(spec))
        return ["benchmark", "--config", str(path), "--output_dir", "out", *extra]

    return build


def _checkpoint(path: Path, **entries: Any) -> Path:
    """A file as Lightning writes a checkpoint, of a linear model's weights."""
    from unlearn.models import LinearClassifier

    weights = LinearClassifier(10, (1, 32, 32)).state_dict()
    hparams = {"model": "linear", "num_classes": 10, "image_shape": [1, 32, 32]}
    value = {"state_dict": {f"model.{k}": v for k, v in weights.items()}, "global_step": 4}
    return _saved(path, value | {"epoch": 0, "hyper_parameters": hparams} | entries)


def landscape(checkpoints: Callable[[Path], Path | str], **settings: Any) -> Builder:
    """A landscape of one run (digits) with the checkpoints the callable makes."""

    def build(tmp: Path) -> list[str]:
        run = {"name": "clean", "checkpoints": str(checkpoints(tmp))}
        run["data"] = {"class_path": "DigitsDataModule"}  # type: ignore[assignment]
        config = {"runs": [run], "output_dir": "figures", "device": "cpu", "progress": False}
        path = _write(tmp / "landscape.yaml", yaml.safe_dump(config | settings))
        return ["landscape", "--config", str(path)]

    return build


def row(name: str, named: str, build: Builder, code: int = 2, **kwargs: Any) -> Any:
    """One case: ``build`` gives the command line, refused with ``code`` naming ``named``."""
    return pytest.param(build, code, named, id=name, **kwargs)


ROWS = [
    # -------------------------------------------------------------- configs and options
    row("fit-yaml-syntax", "bad.yaml",
        lambda tmp: ["fit", "--config", str(_write(tmp / "bad.yaml", "trainer:\n  x: [\n"))]),
    row("fit-config-missing", "missing.yaml", lambda tmp: ["fit", "--config", "missing.yaml"]),
    row("subcommand-unknown", "fitt", lambda tmp: ["fitt", "--config", QUICKSTART]),
    row("fit-option-unknown", "epochs_max", fit("--trainer.epochs_max=3")),
    row("fit-batch-size-text", "batch_size", fit("--data.init_args.batch_size=many")),
    row("fit-batch-size-0", "batch_size", fit("--data.init_args.batch_size=0")),
    row("fit-workers-negative", "num_workers", fit("--data.init_args.num_workers=-1")),
    row("fit-val-fraction-1.5", "val_fraction", fit("--data.init_args.val_fraction=1.5")),
    row("fit-val-fraction-negative", "val_fraction", fit("--data.init_args.val_fraction=-0.5")),
    row("fit-val-fraction-holds-none", "val_fraction", fit("--data.init_args.val_fraction=1e-4")),
    row("fit-poison-ratio-2", "poison_ratio", fit("--data.init_args.poison_ratio=2")),
    row("fit-data-unknown", "NoSuchDataModule", fit("--data=NoSuchDataModule")),
    row("fit-model-unknown", "resnet19", fit("--model.init_args.model=resnet19")),
    row("fit-lr-negative", "lr", fit("--model.init_args.lr=-0.1")),
    row("fit-momentum-1", "momentum", fit("--model.init_args.momentum=1.0")),
    row("fit-lr-schedule-unknown", "lr_schedule", fit("--model.init_args.lr_schedule=linear")),
    row("fit-jpeg-quality-0", "quality",
        fit('--model.init_args.defenses=[{"class_path": "JPEG", "init_args": {"quality": 0}}]')),
    # -------------------------------------------------------------- data folders and files
    row("folder-missing", "nowhere", folder("missing")),
    row("folder-class-without-images", "empty", folder("empty_class")),
    row("folder-split-without-images", "nothing", folder("empty_split")),
    row("folder-class-count", "num_classes", folder("class_count")),
    row("folder-test-classes-differ", "other", folder("other_classes")),
    row("cifar-missing", "data_batch_1", fit("--data=CIFAR10DataModule", "--data.root=nowhere")),
    row("cifar-not-a-pickle", "data_batch_1", data_files("CIFAR10DataModule", b"not a pickle")),
    row("mnist-bad-magic", "train-images-idx3-ubyte",
        data_files("MNISTDataModule", b"\x01\x02\x03\x04rest")),
    row("mnist-not-gzip", "train-images-idx3-ubyte.gz",
        data_files("MNISTDataModule", b"plain bytes", suffix=".gz")),
    row("svhn-not-mat", "train_32x32.mat", data_files("SVHNDataModule", b"not a .mat file")),
    # -------------------------------------------------------------- poison stores in a fit
    row("store-missing", "nowhere", fit("--data.init_args.poison=nowhere")),
    row("store-zero-bytes", "poison.pt", store(b"")),
    row("store-foreign-file", "poison.pt", store(b"PK\x03\x04 not a zip")),
    row("store-ratio-serves-none", "poison_ratio",
        store(None, "--data.init_args.poison_ratio=0.0001")),
    # -------------------------------------------------------------- the SAL callback
    row("sal-every-n-epochs-0", "every_n_epochs", sal("--trainer.callbacks.every_n_epochs=0")),
    row("sal-probe-size-0", "probe_size", sal("--trainer.callbacks.probe_size=0")),
    row("sal-probe-batch-0", "probe_batch_size", sal("--trainer.callbacks.probe_batch_size=0")),
    row("sal-eps-0", "eps", sal("--trainer.callbacks.eps=0")),
    row("sal-iters-0", "iters", sal("--trainer.callbacks.iters=0")),
    row("sal-reference-missing", "nothere.csv", sal("--trainer.callbacks.reference=nothere.csv")),
    row("sal-reference-missing-column", "ref.csv", reference("missing_column")),
    row("sal-reference-nan", "ref.csv", reference("nan")),
    row("sal-reference-sidecar-unreadable", "ref.json", reference("sidecar")),
    row("sal-reference-other-settings", "ref.json", reference("settings")),
    # -------------------------------------------------------------- poison methods
    row("em-batch-size-0", "batch_size", em("--method.init_args.batch_size=0")),
    row("em-eps-0", "eps", em("--method.init_args.eps=0")),
    row("em-step-size-negative", "step_size", em("--method.init_args.step_size=-0.01")),
    row("em-train-steps-0", "train_steps", em("--method.init_args.train_steps=0")),
    row("em-rounds-0", "max_rounds", em("--method.init_args.max_rounds=0")),
    row("em-subset-1.5", "subset_fraction", em("--method.init_args.subset_fraction=1.5")),
    row("em-model-unknown", "resnet19", em("--method.init_args.model=resnet19")),
    row("rem-eot-0", "eot_samples", method("REM", model="linear", eot_samples=0)),
    row("tap-restarts-0", "restarts", method("TAP", model="linear", restarts=0)),
    row("lsp-grid-0", "grid", method("LSP", grid=0)),
    row("ops-pixels-0", "pixels", method("OPS", pixels=0)),
    row("ar-trials-0", "trials", method("AR", trials=0)),
    row("random-eps-negative", "eps", method("RandomNoise", eps=-1)),
    # -------------------------------------------------------------- the poison command
    row("poison-ratio-poisons-none", "poison_ratio", em("--poison_ratio=0.0001")),
    row("poison-ratio-2", "poison_ratio", em("--poison_ratio=2")),
    row("poison-interval-negative", "checkpoint_interval", em("--checkpoint_interval=-1")),
    row("poison-cuda-without-cuda", "cuda", em("--device=cuda"),
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")),
    row("poison-method-unknown", "NoSuchMethod", em("--method=NoSuchMethod")),
    row("poison-data-missing", "data",
        lambda tmp: ["poison", "--method=RandomNoise", "--output_dir=poisons/x"]),
    row("poison-store-exists", "poison.pt",
        lambda tmp: [*EM, f"--output_dir={_digits_poison(tmp)}"]),
    row("poison-yaml-syntax", "bad.yaml",
        lambda tmp: ["poison", "--config", str(_write(tmp / "bad.yaml", "data: {\n"))]),
    # -------------------------------------------------------------- ud: sal.csv files
    row("ud-clean-missing", "nope.csv", ud(lambda tmp: tmp / "nope.csv", good_sal())),
    row("ud-missing-columns", "bad.csv",
        ud(good_sal("clean.csv"), text_file("bad.csv", "epoch,step,layer\n0,7,a\n"))),
    row("ud-unreadable-value", "bad.csv",
        ud(good_sal("clean.csv"), lambda tmp: sal_csv(tmp / "bad.csv", [["x", 0, 1, 1]]))),
    row("ud-binary-file", "bin.csv",
        ud(good_sal("clean.csv"), text_file("bin.csv", bytes(range(256)) * 4))),
    row("ud-empty-file", "empty.csv", ud(text_file("empty.csv", ""), good_sal())),
    row("ud-directory", "a directory", ud(lambda tmp: tmp, good_sal())),
    row("ud-checkpoints-0", "--checkpoints",
        ud(good_sal("clean.csv"), good_sal(), "--checkpoints", "0")),
    row("ud-checkpoints-too-many", "clean.csv",
        ud(good_sal("clean.csv"), good_sal(), "--checkpoints", "5")),
    row("ud-other-layers", "other.csv",
        ud(good_sal("clean.csv"), lambda tmp: sal_csv(tmp / "other.csv", CLEAN_SAL, "abcd"))),
    row("ud-clean-not-finite", "clean.csv",
        ud(lambda tmp: sal_csv(tmp / "clean.csv", [[0, math.inf, 1, 1]]), good_sal())),
    row("ud-json-directory", "--json", ud(good_sal("clean.csv"), good_sal(), "--json", ".")),
    row("ud-poisoned-missing", "poisoned", lambda tmp: ["ud", "--clean", "clean.csv"]),
    # -------------------------------------------------------------- benchmark specs
    row("benchmark-train-config-missing", "train_configs",
        benchmark(train_configs={"digits": "nowhere.yaml"})),
    row("benchmark-without-clean", "methods", benchmark(methods=["random"])),
    row("benchmark-method-unknown", "poison_nosuch.yaml", benchmark(methods=["clean", "nosuch"])),
    row("benchmark-model-unknown", "no_such_net", benchmark(models=["no_such_net"])),
    row("benchmark-fit-arg", "batch_size",
        benchmark(fit_args=["--data.init_args.batch_size=many"])),
    row("benchmark-name-path", "name", benchmark(name="../escape")),
    row("benchmark-slurm-gpus", "slurm.gpus", benchmark(slurm={"gpus": -1})),
    row("benchmark-timeout-0", "--cell_timeout", benchmark("--cell_timeout=0")),
    row("benchmark-cell-number", "--run_cell", benchmark("--run_cell=99")),
    row("benchmark-yaml-syntax", "spec.yaml",
        lambda tmp: ["benchmark", "--config", str(_write(tmp / "spec.yaml", "a: [\n"))]),
    # -------------------------------------------------------------- landscape: checkpoints
    row("landscape-checkpoints-missing", "nowhere", landscape(lambda tmp: "nowhere")),
    row("landscape-text-file", "text.ckpt",
        landscape(lambda tmp: _write(tmp / "c" / "text.ckpt", "hello"))),
    row("landscape-tensor-file", "tensor.ckpt",
        landscape(lambda tmp: _saved(tmp / "c" / "tensor.ckpt", torch.zeros(3)))),
    row("landscape-no-state-dict", "x.ckpt",
        landscape(lambda tmp: _checkpoint(tmp / "c" / "x.ckpt", state_dict=None))),
    row("landscape-no-backbone-name", "x.ckpt",
        landscape(lambda tmp: _checkpoint(tmp / "c" / "x.ckpt", hyper_parameters={}))),
    row("landscape-checkpoint-index", "surface.checkpoint",
        landscape(lambda tmp: _checkpoint(tmp / "c" / "x.ckpt"), surface={"checkpoint": 3})),
    row("landscape-span-reversed", "surface.span",
        landscape(lambda tmp: "c", surface={"span": [1.0, -1.0]})),
    row("landscape-probe-batch-0", "probe.batch_size",
        landscape(lambda tmp: "c", probe={"batch_size": 0})),
    row("landscape-top-k-0", "parameters.top_k",
        landscape(lambda tmp: "c", parameters={"top_k": 0})),
]  # fmt: skip


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("build", "code", "named"), ROWS)
def test_bad_input_is_one_line_and_leaves_nothing(
    build: Builder,
    code: int,
    named: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = build(tmp_path)
    before = _tree(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"unlearn {argv[0]}: error: "), err
    assert sum(": error: " in line for line in lines) == 1, err  # the message is one line
    assert named in lines[-1], lines[-1]
    assert _tree(tmp_path) == before  # nothing partial left behind


# ---------------------------------------------------------------------- said, not refused
def test_ud_says_when_runs_have_different_lengths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from unlearn.ud_command import main as ud_main

    clean = sal_csv(tmp_path / "clean.csv", CLEAN_SAL)
    short = sal_csv(tmp_path / "em.csv", CLEAN_SAL[:1])
    (row,) = ud_main(["--clean", str(clean), "--poisoned", str(short)])
    assert row["checkpoints"] == 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if "checkpoints" in line]
    assert warnings == [
        f"unlearn ud: warning: {clean} has 2 checkpoints, {short} 1: UD compares the mean #LP "
        "over different training lengths; --checkpoints 1 compares the first checkpoints of each"
    ]
    ud_main(["--clean", str(clean), "--poisoned", str(short), "--checkpoints", "1"])
    assert "checkpoints" not in capsys.readouterr().err  # the same length: nothing to say


# ---------------------------------------------------------------------- a poison that fails
@pytest.mark.parametrize("case", ["new", "existing", "state"])
def test_failed_poison_removes_only_the_directories_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A failed run leaves no empty directory it created, but a user's and a resumable one."""
    from unlearn.data import DigitsDataModule
    from unlearn.poisons import RandomNoise
    from unlearn.poisons.command import STATE_FILE, generate_poison

    output = tmp_path / "a" / "b" / "poison"
    if case == "existing":
        output.mkdir(parents=True)
    method = RandomNoise()

    def fails(data: Any, context: Any) -> Any:
        if case == "state":  # an interrupted run keeps what it saved, to resume from
            context.checkpoint(lambda: {"noise": torch.zeros(1)}, force=True)
        raise RuntimeError("generation failed")

    monkeypatch.setattr(method, "generate", fails)
    with pytest.raises(RuntimeError, match="generation failed"):
        generate_poison(DigitsDataModule(), method, output, device="cpu")
    if case == "new":
        assert not (tmp_path / "a").exists()
    elif case == "existing":
        assert output.is_dir() and not list(output.iterdir())
    else:
        assert sorted(p.name for p in output.iterdir()) == [STATE_FILE]


# ---------------------------------------------------------------------- the range check
@pytest.mark.parametrize(
    ("bounds", "value", "message"),
    [
        ({"minimum": 1}, 0, "X: n must be >= 1, got 0"),
        ({"above": 0}, 0.0, "X: n must be > 0, got 0.0"),
        ({"above": 0.0, "maximum": 1.0}, 2, "X: n must be in (0, 1], got 2"),
        ({"minimum": 0.0, "below": 1.0}, 1.5, "X: n must be in [0, 1), got 1.5"),
        ({"below": 5}, 5, "X: n must be < 5, got 5"),
        ({"minimum": 1}, math.nan, "X: n must be >= 1, got nan"),
    ],
)
def test_check_number_names_the_range(bounds: dict, value: float, message: str) -> None:
    from unlearn.errors import ConfigError, check_number

    with pytest.raises(ConfigError) as err:
        check_number("X", "n", value, **bounds)
    assert str(err.value) == message
    assert isinstance(err.value, ValueError)  # callers that catch ValueError still do
    check_number("X", "n", None, **bounds)  # unset: nothing to check
