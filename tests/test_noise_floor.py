"""The noise floor of UD (clean against clean) and its permutation test, by hand."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, read_rows

from unlearn.benchmark.grid import BenchmarkSpec, Layout
from unlearn.benchmark.report import RESULT_COLUMNS, write_report
from unlearn.errors import UnlearnError
from unlearn.sharpness import floor as floor_module
from unlearn.sharpness.floor import floor_pairs, noise_floor, permutation_test, verdict
from unlearn.sharpness.ud import SAL_COLUMNS, SalTable, SalTableError

LAYERS = ["a", "b", "c", "d"]


def table(name: str, *rows: list[float]) -> SalTable:
    """A SAL table of one run: one row of 4 layer values per checkpoint."""
    checkpoints = [(t, t + 1) for t in range(len(rows))]
    return SalTable(name, checkpoints, LAYERS, np.full(4, 10), np.array(rows, dtype=float))


# every 2-means beta is 0.5 (clusters {0} and {1}); #LP: A 2, B 3, C 1
A, B, C = table("A", [0, 0, 1, 1]), table("B", [0, 1, 1, 1]), table("C", [0, 0, 0, 1])


def test_floor_is_every_ordered_pair() -> None:
    pairs = floor_pairs([A, B, C])
    assert [(i, j) for i, j, _ in pairs] == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    # UD of i against j = #LP(i) / #LP(j)
    expected = [2 / 3, 2 / 1, 3 / 2, 3 / 1, 1 / 2, 1 / 3]
    assert [v for _, _, v in pairs] == pytest.approx(expected)
    assert noise_floor([A, B, C]) == pytest.approx(expected)


def test_floor_of_the_first_checkpoints() -> None:
    # the second checkpoint of A has #LP 4 (beta stays the whole run's, about 0.5)
    a2, b2 = table("A", [0, 0, 1, 1], [1, 1, 1, 1]), table("B", [0, 1, 1, 1], [0, 1, 1, 1])
    assert noise_floor([a2, b2], t=1) == pytest.approx([2 / 3, 3 / 2])


def test_floor_refuses_too_few_and_non_finite_runs() -> None:
    with pytest.raises(UnlearnError, match="at least 2 clean runs; found 1"):
        noise_floor([A])
    diverged = table("D", [0, math.nan, 1, 1])
    with pytest.raises(SalTableError, match="D: diverged at epoch 0"):
        noise_floor([A, diverged])
    flat = table("F", [0, 0, 0, 0])  # #LP 0 against any beta 0.5: UD of A against F is inf
    with pytest.raises(UnlearnError, match="UD of A against F is inf"):
        noise_floor([A, flat])


FLOOR = [1.0, 1.1, 0.9, 1.2, 0.95, 1.05]


def test_exact_p_of_the_most_extreme_split() -> None:
    # the 3 values are the 3 smallest of the 9: of the C(9, 3) = 84 splits, only the
    # observed one has a difference of means as low; on the other side the 3 largest
    # (1.2, 1.1, 1.05) against the rest differ by 1.1167 - 0.575 < 0.8333
    values = [0.1, 0.2, 0.3]
    assert math.comb(9, 3) == 84
    assert permutation_test(values, FLOOR, "less") == pytest.approx(1 / 84)
    assert permutation_test(values, FLOOR, "two-sided") == pytest.approx(1 / 84)
    assert permutation_test(values, FLOOR, "greater") == pytest.approx(1.0)
    assert verdict(values, FLOOR) == ("below floor", pytest.approx(1 / 84))


def test_ties_count_as_extreme() -> None:
    # pooled [1, 1, 2], n = 1: the splits {1}, {1'} tie with the observed one, {2} does not
    assert permutation_test([1.0], [1.0, 2.0], "less") == pytest.approx(2 / 3)
    assert permutation_test([1.0], [1.0, 2.0], "greater") == pytest.approx(1.0)
    # every split ties: nothing is shown in any direction
    for alternative in ("less", "greater", "two-sided"):
        assert permutation_test([1.0, 1.0], [1.0, 1.0, 1.0], alternative) == 1.0
    # rounding: the split {0.1, 0.2} ties with the observed {0.3, 0} (differences of means
    # 0 and -5.6e-17 in floating point); sums of the 6 splits of [0.3, 0, 0.1, 0.2]:
    # 0.3 (observed), 0.4, 0.5, 0, 0.1, 0.3 (the tie): 4 are <= 0.3
    assert permutation_test([0.3, 0.0], [0.1, 0.2], "less") == pytest.approx(4 / 6)


def test_two_sided_is_symmetric() -> None:
    values, floor = [0.8, 1.3, 0.7], [1.0, 1.1, 0.9, 1.2]
    mirrored = ([-v for v in values], [-v for v in floor])
    assert permutation_test(*mirrored, "two-sided") == pytest.approx(
        permutation_test(values, floor, "two-sided")
    )
    assert permutation_test(*mirrored, "less") == pytest.approx(
        permutation_test(values, floor, "greater")
    )
    # equal sizes: the permutation distribution is symmetric, two-sided = 2 x one-sided
    high, base = [2.0, 2.1], [1.0, 1.1]
    assert permutation_test(high, base, "greater") == pytest.approx(1 / 6)
    assert permutation_test(high, base, "two-sided") == pytest.approx(2 / 6)
    assert verdict(high, base, "greater", alpha=0.2) == ("above floor", pytest.approx(1 / 6))
    assert verdict(high, base, "two-sided", alpha=0.2)[0] == "within floor"
    assert verdict(high, base, "less", alpha=0.2) == ("within floor", pytest.approx(1.0))


def test_monte_carlo_beyond_the_exact_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(floor_module, "EXACT_LIMIT", 10)
    monkeypatch.setattr(floor_module, "MONTE_CARLO_DRAWS", 2000)
    # C(9, 3) = 84 > 10 splits: drawn; the observed split's chance is 1/84 per draw
    p = permutation_test([0.1, 0.2, 0.3], FLOOR, "less")
    assert p >= 1 / 2001 and abs(p - 1 / 84) < 0.01
    assert p == permutation_test([0.1, 0.2, 0.3], FLOOR, "less")  # seeded


@pytest.mark.parametrize(
    ("values", "floor", "alternative", "message"),
    [
        ([], FLOOR, "less", "values: expected at least one value; found none"),
        ([0.5], [], "less", "floor: expected at least one value; found none"),
        ([math.nan], FLOOR, "less", "values: expected finite values"),
        ([0.5], FLOOR, "lower", "alternative: expected one of"),
    ],
)
def test_errors_name_the_input(
    values: list[float], floor: list[float], alternative: str, message: str
) -> None:
    with pytest.raises(UnlearnError, match=message):
        permutation_test(values, floor, alternative)  # type: ignore[arg-type]


def write_grid(
    root: Path,
    seeds: list[int],
    sal: dict[tuple[str, int], list[float]],
    numel: tuple[int, ...] = (10, 10, 10, 10),
) -> Layout:
    """A benchmark tree with finished cells (metrics.json, sal.csv), no training.

    ``numel``: the parameter count of each layer of ``LAYERS``.
    """
    spec = BenchmarkSpec(
        name="floor",
        train_configs={"digits": "configs/quickstart.yaml"},
        methods=["clean", "em", "random"],
        seeds=seeds,
    )
    layout = Layout(root, spec)
    for cell in layout.cells():
        layout.run_dir(cell).mkdir(parents=True)
        metrics = {"test": {"test/acc": 0.5}, "validation": {"val/acc": 0.5}, "epochs": 1}
        (layout.run_dir(cell) / "metrics.json").write_text(json.dumps(metrics))
        with layout.sal_file(cell).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(SAL_COLUMNS)
            values = sal[(cell.method, cell.seed)]
            for name, n, value in zip(LAYERS, numel, values, strict=True):
                writer.writerow([0, 7, name, n, value, value, 0.0, 0.0, 2.0, 0.1])
    return layout


def test_report_shows_the_parameter_weighted_ud_beside_the_headline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    # beta 0.5 (clusters {0, 0} and {1, 1}); clean LP {c, d}, em LP {b, c}: count UD 2 / 2 = 1;
    # weighted by parameters (d holds 100): (10 + 10) / (10 + 100) = 0.18
    sal = {("clean", 0): [0, 0, 1, 1], ("em", 0): [0, 1, 1, 0], ("random", 0): [0, 0, 1, 1]}
    layout = write_grid(tmp_path / "bench", [0], sal, numel=(10, 10, 10, 100))
    text = write_report(layout).read_text()
    section = text.split("## Robustness variants of the headline UD")[1]
    header = next(line for line in section.splitlines() if line.startswith("| data"))
    assert header.split(" | ")[4:6] == ["2-means (headline)", "2-means, parameter-weighted"]
    row = next(
        line for line in section.splitlines() if line.startswith("| digits | small_cnn | em")
    )
    assert row.split(" | ")[4:6] == ["1.00", "0.18"]


CLEAN_SEEDS = {0: [0, 0, 1, 1], 1: [0, 1, 1, 1], 2: [0, 0, 0, 1]}  # A, B, C above


def test_benchmark_report_has_the_noise_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # the spec's config paths are relative to the repository
    sal = {("clean", s): v for s, v in CLEAN_SEEDS.items()}
    sal |= {("em", s): [0, 0, 0, 0.4] for s in CLEAN_SEEDS}  # #LP 0: UD 0 for every seed
    sal |= {("random", s): v for s, v in CLEAN_SEEDS.items()}  # as its clean seed: UD 1
    layout = write_grid(tmp_path / "bench", [0, 1, 2], sal)
    text = write_report(layout).read_text()
    assert list(read_rows(layout.root / "results.csv")[0]) == RESULT_COLUMNS  # unchanged
    floor = {row["method"]: row for row in read_rows(layout.root / "floor.csv")}
    assert list(floor) == ["em", "random"]
    em, random = floor["em"], floor["random"]
    assert (em["n"], em["floor_n"], em["ud_mean"]) == ("3", "6", "0")
    assert float(em["floor_mean"]) == pytest.approx(8 / 6, rel=1e-5)
    assert float(em["floor_min"]) == pytest.approx(1 / 3, rel=1e-5) and float(em["floor_max"]) == 3
    assert float(em["p_less"]) == pytest.approx(1 / 84, rel=1e-5) and em["verdict"] == "below floor"
    assert float(random["ud_mean"]) == 1 and random["verdict"] == "within floor"
    expected = permutation_test([1.0, 1.0, 1.0], [2 / 3, 2, 3 / 2, 3, 1 / 2, 1 / 3], "less")
    assert float(random["p_less"]) == pytest.approx(expected, rel=1e-5) and expected > 0.05
    section = text.split("## Noise floor")[1]
    assert "### digits, small_cnn, defense none" in section
    assert "Floor over seeds [0, 1, 2]: 6 values [0.667, 2, 1.5, 3, 0.5, 0.333]" in section
    assert "| em | 3 | 0 | below floor | 0.0119 |" in section


def test_benchmark_report_floor_needs_two_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    sal = {("clean", 0): CLEAN_SEEDS[0], ("em", 0): [0, 0, 0, 0.4], ("random", 0): CLEAN_SEEDS[0]}
    layout = write_grid(tmp_path / "bench", [0], sal)
    section = write_report(layout).read_text().split("## Noise floor")[1]
    assert (
        "- digits, small_cnn, defense none: the floor needs at least two clean seeds with a SAL "
        "table; found 1." in section
    )
    assert read_rows(layout.root / "floor.csv") == []


def test_report_flags_a_method_whose_seeds_trained_on_different_poisons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poison made again on another machine can differ: the report must say so, not
    average the seeds as if they shared one poison."""
    monkeypatch.chdir(REPO)
    sal = {(m, s): v for m in ("clean", "em", "random") for s, v in CLEAN_SEEDS.items()}
    layout = write_grid(tmp_path / "bench", [0, 1, 2], sal)
    hashes = {("em", 0): "a" * 64, ("em", 1): "a" * 64, ("em", 2): "b" * 64}
    hashes |= {("random", s): "c" * 64 for s in CLEAN_SEEDS}
    for cell in layout.cells():
        if cell.method != "clean":
            record = {"poison": "p", "delta_sha256": hashes[(cell.method, cell.seed)],
                      "created": f"day {cell.seed if cell.method == 'em' else 0}"}  # fmt: skip
            layout.poison_used_file(cell).write_text(json.dumps(record))
    text = write_report(layout).read_text()
    rows = {(r["method"], r["seed"]): r for r in read_rows(layout.root / "results.csv")}
    assert rows[("em", "2")]["poison_sha256"] == "b" * 64
    section = text.split("## Poisons the cells trained on")[1].split("\n## ")[0]
    em = next(line for line in section.splitlines() if ", em:" in line)
    # seeds 0 and 1: the same perturbation made twice (same hash) is one poison
    assert em.startswith("- **digits, em: 2 poisons, not known to be the same**"), em
    assert "`aaaaaaaaaaaa` made day 0, day 1 (s0 none, s1 none)" in em
    assert "`bbbbbbbbbbbb` made day 2 (s2 none)" in em
    random = next(line for line in section.splitlines() if ", random:" in line)
    assert random == (
        "- digits, random: one poison, `cccccccccccc` made day 0 (s0 none, s1 none, s2 none)"
    )
