"""``python -m unlearn poison``: help, configs, overrides, resume, export."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, sigkill_after_file
from poison_fixtures import FAST_METHODS, write_cifar10

import unlearn.poisons as poisons
from unlearn.cli import main as cli_main
from unlearn.data import CIFAR10DataModule
from unlearn.poisons import load_poison
from unlearn.poisons.base import PoisonContext, PoisonStateError
from unlearn.poisons.command import build_parser, generate_poison, main

METHODS = ["AR", "EM", "LSP", "OPS", "REM", "RandomNoise", "TAP"]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root)
    return root


def test_help_lists_every_method_with_its_arguments(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main(["poison", "--help"])  # what `python -m unlearn poison --help` runs
    assert exit_.value.code == 0
    stdout = capsys.readouterr().out
    listing = stdout.split("methods (")[1]
    for name in METHODS:
        assert f"\n  {name} (" in listing
    assert "pgd_steps=None" in listing and "adv_eps=0.0156863" in listing
    assert "DigitsDataModule" in listing and "CIFAR10DataModule" in listing
    for flag in ("--output_dir", "--seed", "--device", "--overwrite", "--poison_ratio"):
        assert flag in stdout


def test_method_help_and_print_config(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--method.help", "REM"])
    assert "eot_samples" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--config", str(REPO / "configs/digits/poison_em.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"]["class_path"] == "unlearn.poisons.EM"
    assert printed["method"]["init_args"]["pgd_steps"] == 5
    assert printed["output_dir"] == "poisons/digits/em"


@pytest.mark.parametrize("folder", ["digits", "cifar10"])
def test_repository_configs_pair_up(folder: str) -> None:
    parser = build_parser()
    configs = sorted((REPO / "configs" / folder).glob("poison_*.yaml"))
    names = {p.stem.removeprefix("poison_") for p in configs}
    assert {"random", "em", "em_classwise", "rem", "tap", "lsp", "ops", "ar"} <= names
    for path in configs:
        name = path.stem.removeprefix("poison_")
        cfg = parser.parse_args(["--config", str(path)])
        assert cfg.output_dir == f"poisons/{folder}/{name}"
        method = getattr(poisons, cfg.method.class_path.rsplit(".", 1)[1])(
            **cfg.method.init_args.as_dict()
        )
        assert method.budget((3, 32, 32)) > 0
        train = yaml.safe_load((REPO / "configs" / folder / f"{name}.yaml").read_text())
        assert train["data"]["init_args"]["poison"] == f"poisons/{folder}/{name}"


@pytest.mark.parametrize("name", ["random", "lsp", "ops", "ar"])
def test_digits_configs_generate(name: str, tmp_path: Path) -> None:
    config = REPO / "configs" / "digits" / f"poison_{name}.yaml"
    main(["--config", str(config), "--output_dir", str(tmp_path), "--no_progress"])
    stored = load_poison(tmp_path)
    assert stored.meta["dataset"] == "digits" and stored.delta.shape == (1438, 1, 32, 32)
    assert (tmp_path / "config.yaml").is_file() and not (tmp_path / "state.pt").exists()


def test_config_with_overrides_and_overwrite(cifar_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "poison.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"class_path": "CIFAR10DataModule", "init_args": {"root": str(cifar_root)}},
                "method": {"class_path": "LSP", "init_args": {"grid": 8}},
                "output_dir": str(tmp_path / "out"),
                "seed": 3,
            }
        )
    )
    args = ["--config", str(config), "--method.init_args.grid", "2", "--no_progress"]
    main(args)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["params"]["grid"] == 2 and meta["seed"] == 3 and meta["method"] == "LSP"
    assert meta["data"]["init_args"]["root"] == str(cifar_root)
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(args)
    main([*args, "--overwrite", "--seed", "4"])
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["seed"] == 4
    main(["export", "--poison", str(tmp_path / "out"), "--output", str(tmp_path / "png")])
    assert len(list((tmp_path / "png" / "train").rglob("*.png"))) == 40


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("name", ["em", "rem", "tap"])
def test_an_interrupted_run_resumes_to_the_same_poison(
    name: str, cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    klass, kwargs = FAST_METHODS[name]
    make = lambda: getattr(poisons, klass)(**kwargs)  # noqa: E731
    data = CIFAR10DataModule(root=cifar_root)
    reference = load_poison(generate_poison(data, make(), tmp_path / "whole")).delta

    saves = []
    original = PoisonContext.checkpoint

    def checkpoint_then_stop(self, make_state, force=False) -> None:
        original(self, make_state, force)
        saves.append(1)
        if len(saves) == 2:
            raise Interrupt

    monkeypatch.setattr(PoisonContext, "checkpoint", checkpoint_then_stop)
    out = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        generate_poison(data, make(), out, checkpoint_interval=0)
    assert (out / "state.pt").is_file() and not (out / "poison.pt").exists()
    with pytest.raises(PoisonStateError, match=r"other settings .*; pass --overwrite"):
        generate_poison(data, make(), out, seed=1)
    monkeypatch.setattr(PoisonContext, "checkpoint", original)
    resumed = load_poison(generate_poison(data, make(), out, checkpoint_interval=0))
    assert resumed.meta["resumed"] is True and not (out / "state.pt").exists()
    assert torch.equal(resumed.delta, reference)


def _interrupted(data, method, out: Path, monkeypatch: pytest.MonkeyPatch, **kwargs) -> None:
    """Run ``generate_poison`` until its second state save, then stop it there."""
    original, saves = PoisonContext.checkpoint, []

    def checkpoint_then_stop(self, make_state, force=False) -> None:
        original(self, make_state, force)
        saves.append(1)
        if len(saves) == 2:
            raise Interrupt

    with monkeypatch.context() as patched:
        patched.setattr(PoisonContext, "checkpoint", checkpoint_then_stop)
        with pytest.raises(Interrupt):
            generate_poison(data, method, out, checkpoint_interval=0, **kwargs)
    assert (out / "state.pt").is_file()


def test_overwrite_resumes_a_state_of_the_same_settings_and_discards_another(
    cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    klass, kwargs = FAST_METHODS["em"]
    make = lambda: getattr(poisons, klass)(**kwargs)  # noqa: E731
    data = CIFAR10DataModule(root=cifar_root)
    reference = load_poison(generate_poison(data, make(), tmp_path / "whole")).delta
    out = tmp_path / "out"
    generate_poison(data, make(), out, seed=1)  # a finished poison that --overwrite replaces
    _interrupted(data, make(), out, monkeypatch, overwrite=True)
    resumed = load_poison(generate_poison(data, make(), out, overwrite=True))
    assert resumed.meta["resumed"] is True and resumed.meta["seed"] == 0
    assert torch.equal(resumed.delta, reference)
    _interrupted(data, make(), out, monkeypatch, overwrite=True)
    other = load_poison(generate_poison(data, make(), out, seed=1, overwrite=True))
    assert other.meta["resumed"] is False and other.meta["seed"] == 1
    assert not (out / "state.pt").exists()


def _write_truncated_state(path: Path) -> None:
    state = {"key": "k", "generator": torch.Generator().get_state(), "method": {"x": 1}}
    torch.save(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (_write_truncated_state, "not a readable resumable state"),
        (lambda path: path.write_text("not a torch file"), "not a readable resumable state"),
        (lambda path: torch.save({"weights": torch.zeros(2)}, path), "expected a dict with"),
    ],
    ids=["truncated", "text", "foreign"],
)
def test_an_unreadable_state_is_one_line_or_discarded_with_overwrite(
    write, reason: str, cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write(out / "state.pt")
    args = ["poison", "--data", "CIFAR10DataModule", f"--data.init_args.root={cifar_root}",
            "--method", "RandomNoise", "--output_dir", str(out), "--no_progress"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        cli_main(args)
    assert exit_.value.code not in (0, None)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"unlearn poison: error: {out / 'state.pt'}") and reason in line
    assert (out / "state.pt").is_file() and not (out / "poison.pt").exists()
    cli_main([*args, "--overwrite"])
    assert load_poison(out).meta["resumed"] is False and not (out / "state.pt").exists()


def _poison_args(cifar_root: Path, out: Path, *extra: str) -> list[str]:
    """EM long enough (300 rounds, ~2 s) to be killed mid-way, its state saved every round."""
    _, kwargs = FAST_METHODS["em"]
    method = {"class_path": "EM", "init_args": {**kwargs, "max_rounds": 300, "stop_accuracy": 2.0}}
    return ["--data", "CIFAR10DataModule", f"--data.init_args.root={cifar_root}",
            f"--method={json.dumps(method)}", "--output_dir", str(out), "--device=cpu",
            "--no_progress", "--checkpoint_interval=0", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def whole_em(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    """The long EM poison of an uninterrupted run (in this process)."""
    out = tmp_path_factory.mktemp("whole_em")
    main(_poison_args(cifar_root, out))
    return load_poison(out).delta


@pytest.mark.slow
@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_a_sigkilled_poison_run_again_gives_the_uninterrupted_poison(
    overwrite: bool, whole_em: torch.Tensor, cifar_root: Path, tmp_path: Path
) -> None:
    """SIGKILL a random moment (drawn by a seeded generator) after ``state.pt`` first appears,
    then the same command again: it resumes, and the poison is bit-identical."""
    out = tmp_path / "out"
    args = _poison_args(cifar_root, out, *(["--overwrite"] if overwrite else []))
    delay = random.Random(int(overwrite)).uniform(0.0, 1.0)
    sigkill_after_file(["poison", *args], REPO, out / "state.pt", delay, timeout=120)
    assert (out / "state.pt").is_file() and not (out / "poison.pt").exists()

    main(args)  # the same command again
    resumed = load_poison(out)
    assert resumed.meta["resumed"] is True and not (out / "state.pt").exists()
    assert torch.equal(resumed.delta, whole_em)
