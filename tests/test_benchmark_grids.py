"""The repository's grids and the spec fields that shape them (defense_methods, output_dir)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_benchmark import layout_of, main_in_process, tiny_grid

from unlearn import poisons
from unlearn.poisons.command import build_parser as poison_parser

FASHION = REPO / "configs" / "benchmark" / "fashion_mnist.yaml"


def test_fashion_mnist_grid_is_the_preregistered_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the grid names its configs relative to the repository
    layout = layout_of(FASHION, REPO / "docs" / "results" / "fashion_mnist")
    cells = layout.cells()
    methods = ["clean", "random", "em", "em_classwise", "rem", "tap", "lsp", "ops", "ar"]
    by_defense = Counter((c.defense, c.method) for c in cells)
    assert {m for d, m in by_defense if d == "none"} == set(methods)
    assert {m for d, m in by_defense if d == "jpeg"} == {"clean", "em", "lsp", "ar"}
    assert set(by_defense.values()) == {3}  # three seeds of each condition
    assert len(cells) == (9 + 4) * 3
    assert len(layout.poisons()) == 8  # one poison per method, shared by seeds and defenses


def test_fashion_mnist_poison_configs_parse_with_published_budgets() -> None:
    parser = poison_parser()
    budgets = {}
    for path in sorted((REPO / "configs" / "fashion_mnist").glob("poison_*.yaml")):
        cfg = parser.parse_args(["--config", str(path)])
        assert cfg.data.init_args.train_subset == 10000
        method = getattr(poisons, cfg.method.class_path.rsplit(".", 1)[1])(
            **cfg.method.init_args.as_dict()
        )
        budgets[path.stem.removeprefix("poison_")] = method.budget((1, 28, 28))
    assert len(budgets) == 8
    for name in ("random", "em", "em_classwise", "rem", "tap"):
        assert budgets[name] == pytest.approx(8 / 255)  # L_inf 8/255
    assert budgets["lsp"] == pytest.approx(28 * 6 / 255)  # L2 of 6/255 on 28 x 28 pixels
    assert budgets["ar"] == pytest.approx(1.0)
    # raised from the published 1 pixel, which does not bite there (docs/fashion_mnist.md)
    assert budgets["ops"] == 4


def _spec_with(tmp_path: Path, **fields) -> Path:
    config = tiny_grid(tmp_path, ["clean", "random"])
    spec = yaml.safe_load(config.read_text())
    spec["defenses"] = {"none": [], "jpeg": [{"class_path": "JPEG", "init_args": {"quality": 10}}]}
    config.write_text(yaml.safe_dump({**spec, **fields}))
    return config


def test_defense_methods_limit_a_defense_to_some_methods(tmp_path: Path) -> None:
    config = _spec_with(tmp_path, defense_methods={"jpeg": ["clean"]})
    cells = layout_of(config, tmp_path / "out").cells()
    assert sorted((c.defense, c.method) for c in cells) == [
        ("jpeg", "clean"), ("none", "clean"), ("none", "random"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("defense_methods", "message"),
    [
        ({"jpeg": ["random"]}, "defense_methods.jpeg: must include 'clean'"),
        ({"blur": ["clean"]}, "defense_methods.blur: no such defense"),
        ({"jpeg": ["clean", "em"]}, "defense_methods.jpeg: ['em'] are not in 'methods'"),
    ],
)
def test_bad_defense_methods_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, defense_methods: dict, message: str
) -> None:
    config = _spec_with(tmp_path, defense_methods=defense_methods)
    code, _, err = main_in_process(["benchmark", "--config", str(config), "--dry_run"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_output_dir_of_the_spec_is_where_the_grid_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _spec_with(tmp_path, output_dir=str(tmp_path / "kept"))
    code, _, err = main_in_process(["benchmark", "--config", str(config), "--dry_run"], capsys)
    assert code == 0, err
    assert (tmp_path / "kept" / "slurm.sh").is_file()
    other = tmp_path / "other"
    code, _, err = main_in_process(
        ["benchmark", "--config", str(config), "--output_dir", str(other), "--dry_run"], capsys
    )
    assert code == 0, err
    assert (other / "slurm.sh").is_file()  # the command line overrides the spec
