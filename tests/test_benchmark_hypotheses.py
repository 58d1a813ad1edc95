"""The report's three UD measures with their own floors, and the spec's pre-registered
hypotheses answered yes / no / not yet, on a hand-written grid whose UDs are known by hand."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, read_rows, run_cli
from test_benchmark import layout_of, main_in_process, tiny_grid

from unlearn.benchmark.grid import BenchmarkSpec, Cell, Layout
from unlearn.benchmark.hypotheses import NO, NOT_YET, YES, answer
from unlearn.benchmark.report import collect, noise_floors, write_report
from unlearn.errors import UnlearnError
from unlearn.sharpness.ud import SAL_COLUMNS

LAYERS = [f"l{i}" for i in range(6)]
JPEG = [{"class_path": "JPEG", "init_args": {"quality": 10}}]
METHODS = ["clean", "em", "tap", "random", "ar", "lsp"]
NAN = math.nan

# One checkpoint of 6 layers per run: (SAL values, probe loss L0). Binary SALs give every
# clean 2-means beta 0.5, so #LP is the number of 1s; the scale-free SAL is SAL / (L0 + 1).
# Clean seeds: #LP 2, 2, 3. Seed 1 has L0 = 3: its scale-free values are 0.25 and 0, its
# scale-free beta 0.125.
CLEAN = {0: ([0, 0, 0, 0, 1, 1], 0.0), 1: ([1, 1, 0, 0, 0, 0], 3.0), 2: ([0, 0, 0, 1, 1, 1], 0.0)}
# the held-out probe's clean SAL: #LP 4, 2, 2 (beta 0.5 each)
CLEAN_HELDOUT = {0: [1, 1, 1, 1, 0, 0], 1: [0, 0, 0, 0, 1, 1], 2: [1, 1, 0, 0, 0, 0]}
LOW = [0, 0, 0, 0, 0, 0.4]  # no layer above 0.5; above the scale-free beta 0.125 of seed 1
ALL = [1] * 6


def runs(method: str, defense: str, seed: int) -> tuple[list[float], float, list[float] | None]:
    """(SAL, L0, held-out SAL or None: no sal_heldout.csv) of a cell."""
    clean, loss0 = CLEAN[seed]
    heldout = CLEAN_HELDOUT[seed] if defense == "none" else None
    if method in ("clean", "lsp"):  # lsp: exactly its clean seed, under both defenses
        return clean, loss0, heldout
    if defense == "jpeg":  # only em: every layer learnable
        return ALL, 0.0, None
    return {
        "em": (LOW, 0.0, heldout),
        "tap": (ALL, 3.0, LOW),  # L0 3: scale-free 0.25 everywhere
        # as its clean seed, but the held-out SAL of seed 1 diverged
        "random": (clean, loss0, [NAN, 0, 0, 0, 1, 1] if seed == 1 else heldout),
        "ar": ([1, 1, 1, 0, 0, 0], 0.0, None),
    }[method]


# Hand UDs (seed 0, 1, 2) of the no-defense cells. Headline: #LP / clean #LP (2, 2, 3).
# Held-out: against the clean #LP 4, 2, 2. Scale-free: against seed 1's beta 0.125 a value 0.4
# (em) or 0.25 (tap) counts, against 0.5 it does not.
HEADLINE = {"em": [0, 0, 0], "tap": [3, 3, 2], "random": [1, 1, 1], "ar": [1.5, 1.5, 1],
            "lsp": [1, 1, 1], "clean": [1, 1, 1]}  # fmt: skip
HELDOUT = {"em": [1, 1, 1], "tap": [0, 0, 0], "random": [1, "diverged", 1], "ar": ["", "", ""],
           "lsp": [1, 1, 1], "clean": [1, 1, 1]}  # fmt: skip
SCALE_FREE = {"em": [0, 0.5, 0], "tap": [0, 3, 0], "random": [1, 1, 1], "ar": [1.5, 1.5, 1],
              "lsp": [1, 1, 1], "clean": [1, 1, 1]}  # fmt: skip
# Floors, UD of clean i against clean j for (i, j) = (0,1), (0,2), (1,0), (1,2), (2,0), (2,1)
FLOOR = {
    "headline": [1, 2 / 3, 1, 2 / 3, 3 / 2, 3 / 2],
    "heldout": [2, 2, 1 / 2, 1, 1 / 2, 1],
    # clean 1's scale-free values 0.25 are below the beta 0.5 of clean 0 and 2
    "scale_free": [1, 2 / 3, 0, 0, 3 / 2, 3 / 2],
}
# Test accuracy of the no-defense cells: mostly increasing with UD, tap highest
ACCURACY = {"clean": [0.90, 0.91, 0.92], "em": [0.10, 0.12, 0.11], "tap": [0.97, 0.98, 0.96],
            "random": [0.89, 0.90, 0.88], "ar": [0.95, 0.96, 0.93],
            "lsp": [0.85, 0.86, 0.87]}  # fmt: skip


def spec(**fields) -> BenchmarkSpec:
    """The grid: digits x small_cnn x 6 methods x (none, jpeg for clean/em/lsp) x 3 seeds."""
    base = {"name": "hyp", "train_configs": {"digits": "configs/quickstart.yaml"},
            "methods": METHODS, "defenses": {"none": [], "jpeg": JPEG},
            "defense_methods": {"jpeg": ["clean", "em", "lsp"]}, "seeds": [0, 1, 2]}  # fmt: skip
    return BenchmarkSpec(**{**base, **fields})


def write_sal(path: Path, values: list[float], loss0: float) -> None:
    """A ``sal.csv`` (or ``sal_heldout.csv``) of one checkpoint."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SAL_COLUMNS)
        for layer, value in zip(LAYERS, values, strict=True):
            writer.writerow([0, 7, layer, 10, value, value, 0.0, 0.0, loss0, 0.1])


def write_layout(
    root: Path, grid: BenchmarkSpec, pending: tuple[Cell, ...] = (), changed: dict | None = None
) -> Layout:
    """Every cell finished (metrics.json, sal.csv, sal_heldout.csv where it has one), but
    ``pending`` ones, which have nothing; ``changed``: cell -> its (SAL, L0, held-out SAL)
    instead of :func:`runs`'."""
    layout = Layout(root, grid)
    for cell in layout.cells():
        if cell in pending:
            continue
        run = (changed or {}).get(cell) or runs(cell.method, cell.defense, cell.seed)
        sal, loss0, heldout = run
        layout.run_dir(cell).mkdir(parents=True)
        acc = ACCURACY[cell.method][cell.seed] if cell.defense == "none" else 0.5
        metrics = {"test": {"test/acc": acc}, "validation": {"val/acc": acc}, "epochs": 1}
        layout.metrics_file(cell).write_text(json.dumps(metrics))
        write_sal(layout.sal_file(cell), sal, loss0)
        if heldout is not None:
            write_sal(layout.run_dir(cell) / "sal_heldout.csv", heldout, 0.0)
    return layout


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list, list]]:
    """(results rows, floors) of the finished grid."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)  # the spec's config paths are relative to the repository
        layout = write_layout(tmp_path_factory.mktemp("grid") / "bench", spec())
        rows = collect(layout)
        yield rows, noise_floors(layout, rows)


def exact_p(values: list[float], floor: list[float], alternative: str) -> float:
    """The exact permutation p of the difference of means, by enumerating index subsets."""
    pooled, n = [*values, *floor], len(values)

    def diff(chosen: tuple[int, ...]) -> float:
        inside = [pooled[i] for i in chosen]
        rest = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        return sum(inside) / n - sum(rest) / len(rest)

    observed = diff(tuple(range(n)))
    splits = list(itertools.combinations(range(len(pooled)), n))
    sign = 1 if alternative == "greater" else -1
    return sum(sign * (diff(s) - observed) >= -1e-12 for s in splits) / len(splits)


def spearman_rho(x: list[float], y: list[float]) -> float:
    """Pearson's r of the average ranks (ties share the mean of their ranks)."""

    def ranks(values: list[float]) -> np.ndarray:
        order = sorted(values)
        return np.array([order.index(v) + (order.count(v) + 1) / 2 for v in values])

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def _value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


# ---------------------------------------------------------------------------- measures
def test_each_measure_has_its_hand_ud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    layout = write_layout(tmp_path / "bench", spec())
    write_report(layout)
    rows = read_rows(layout.root / "results.csv")
    assert list(rows[0])[-5:] == [  # appended, in this order, after the older columns
        "error", "ud_heldout", "ud_scale_free", "poison_sha256", "poison_created"
    ]  # fmt: skip
    none = {(r["method"], int(r["seed"])): r for r in rows if r["defense"] == "none"}
    for column, expected in (("ud", HEADLINE), ("ud_heldout", HELDOUT),
                             ("ud_scale_free", SCALE_FREE)):  # fmt: skip
        for method, values in expected.items():
            found = [_value(none[(method, seed)][column]) for seed in (0, 1, 2)]
            assert found == pytest.approx(values), (column, method)
    # the diverged held-out SAL touches that measure only, and says why
    random1 = none[("random", 1)]
    assert random1["ud"] == "1" and random1["ud_scale_free"] == "1"
    assert random1["error"].startswith("ud_heldout: ") and "diverged at epoch 0" in random1["error"]
    # no sal_heldout.csv (ar, every jpeg cell): empty, and no error
    assert none[("ar", 0)]["error"] == ""
    jpeg = {(r["method"], int(r["seed"])): r for r in rows if r["defense"] == "jpeg"}
    assert [_value(jpeg[("em", s)]["ud"]) for s in (0, 1, 2)] == [3, 3, 2]
    assert [jpeg[("em", s)]["ud_heldout"] for s in (0, 1, 2)] == ["", "", ""]
    # L0 = 0: the scale-free UD of jpeg em is its headline UD
    assert [_value(jpeg[("em", s)]["ud_scale_free"]) for s in (0, 1, 2)] == [3, 3, 2]
    assert all(jpeg[key]["error"] == "" for key in jpeg)


def test_a_diverged_run_is_diverged_in_its_measures_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    em = Cell("digits", "small_cnn", "none", 0, "em")
    # SAL and L0 nan (the scale-free SAL refuses a nan L0): headline and scale-free diverged;
    # the held-out probe, measured apart, is not
    changed = {em: ([NAN, 0, 0, 0, 1, 1], NAN, CLEAN_HELDOUT[0])}
    small = spec(methods=["clean", "em"], seeds=[0], defenses={"none": []})
    layout = write_layout(tmp_path / "bench", small, changed=changed)
    write_report(layout)
    row = {r["method"]: r for r in read_rows(layout.root / "results.csv")}["em"]
    assert (row["ud"], row["ud_heldout"], row["ud_scale_free"]) == ("diverged", "1", "diverged")
    assert "ud: " in row["error"] and "ud_scale_free: " in row["error"]
    assert "ud_heldout" not in row["error"]


def test_each_measure_has_its_own_floor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    layout = write_layout(tmp_path / "bench", spec())
    text = write_report(layout).read_text()
    rows = read_rows(layout.root / "floor.csv")
    assert next(iter(rows[0])) == "measure"
    keys = [(r["measure"], r["defense"], r["method"]) for r in rows]
    assert keys == [  # the order of the cells: defenses by name
        ("headline", "jpeg", "em"), ("headline", "jpeg", "lsp"),
        *[("headline", "none", m) for m in ("em", "tap", "random", "ar", "lsp")],
        # the jpeg cells have no held-out SAL: no held-out floor; ar has no held-out UD
        *[("heldout", "none", m) for m in ("em", "tap", "random", "lsp")],
        ("scale_free", "jpeg", "em"), ("scale_free", "jpeg", "lsp"),
        *[("scale_free", "none", m) for m in ("em", "tap", "random", "ar", "lsp")],
    ]  # fmt: skip
    by_key = dict(zip(keys, rows, strict=True))
    for measure, floor in FLOOR.items():
        row = by_key[(measure, "none", "em")]
        assert int(row["floor_n"]) == 6
        assert float(row["floor_mean"]) == pytest.approx(sum(floor) / 6, rel=1e-5)
        assert float(row["floor_min"]) == pytest.approx(min(floor), rel=1e-5)
        assert float(row["floor_max"]) == pytest.approx(max(floor), rel=1e-5)
    # each method's test is of its UDs of that measure against that measure's floor
    tap = by_key[("heldout", "none", "tap")]
    assert float(tap["p_less"]) == pytest.approx(1 / 84, rel=1e-5)  # 0, 0, 0: the 3 lowest
    assert tap["verdict"] == "below floor"
    random = by_key[("heldout", "none", "random")]
    assert random["n"] == "2"  # the diverged seed left out
    em_sf = by_key[("scale_free", "none", "em")]
    expected = exact_p(SCALE_FREE["em"], FLOOR["scale_free"], "less")
    assert float(em_sf["p_less"]) == pytest.approx(expected, rel=1e-5) and expected > 0.05
    assert em_sf["verdict"] == "within floor"
    assert by_key[("headline", "none", "em")]["verdict"] == "below floor"
    # the markdown: main table as before, the exploratory table, each measure's floor
    assert "## digits, small_cnn: test accuracy (%) | UD" in text
    table = text.split("## Exploratory measures")[1].split("\n## ")[0]
    assert "| method | defense | UD (headline) | UD held-out | UD scale-free |" in table
    assert "| random | none | 1.00 ± 0.00 | 1.00 ± 0.00 (1 diverged) | 1.00 ± 0.00 |" in table
    assert "| ar | none | 1.33 ± 0.29 | - | 1.33 ± 0.29 |" in table
    assert "| em | jpeg | 2.67 ± 0.58 | - | 2.67 ± 0.58 |" in table
    floors = text.split("## Noise floor")[1].split("\n## ")[0]
    parts = floors.split("\n### ")[1:]
    assert [p.split(" ")[0] for p in parts] == ["Headline", "Exploratory", "Exploratory"]
    assert "6 values [1, 0.667, 1, 0.667, 1.5, 1.5]" in parts[0]
    assert "6 values [2, 2, 0.5, 1, 0.5, 1]" in parts[1]
    assert (
        "defense jpeg: the floor needs at least two clean seeds with a SAL table; found 0"
        in (parts[1])
    )
    assert "6 values [1, 0.667, 0, 0, 1.5, 1.5]" in parts[2]
    diverged = text.split("## Diverged runs")[1]
    assert "`digits__small_cnn__random__none__1` (heldout): ud_heldout: " in diverged


# ---------------------------------------------------------------------------- hypotheses
BELOW = "below_floor"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"kind": BELOW, "methods": ["em"]}, {"em": YES}),
        ({"kind": BELOW, "methods": ["em", "lsp"]}, {"em": YES, "lsp": NO}),  # every method
        ({"kind": BELOW, "methods": ["tap"], "measure": "heldout"}, {"tap": YES}),
        ({"kind": BELOW, "methods": ["em"], "measure": "scale_free"}, {"em": NO}),
        ({"kind": "not_below_floor", "methods": ["random"]}, {"random": YES}),
        ({"kind": "not_below_floor", "methods": ["random", "em"]}, {"random": YES, "em": NO}),
        ({"kind": "above_one_and_floor", "methods": ["tap"]}, {"tap": YES}),
        ({"kind": "above_one_and_floor", "methods": ["tap", "ar"]}, {"tap": YES, "ar": NO}),
        ({"kind": "above_one_and_floor", "methods": ["random"]}, {"random": NO}),  # mean 1
        ({"kind": "defense_raises", "defense": "jpeg", "methods": ["em"]}, {"em": YES}),
        ({"kind": "defense_raises", "defense": "jpeg", "methods": ["em", "lsp"]},
         {"em": YES, "lsp": NO}),
        ({"kind": "defense_raises", "defense": "jpeg", "methods": ["em"], "alpha": 0.04},
         {"em": NO}),  # its p is 1/20
    ],
)  # fmt: skip
def test_method_hypotheses_answer_every_method(
    grid: tuple[list, list], entry: dict, expected: dict[str, str]
) -> None:
    rows, floors = grid
    entry = {"id": "H", **entry}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        spec(hypotheses=[entry]).check()  # a valid entry
    found = answer(entry, rows, floors)
    assert {line.label: line.answer for line in found.lines} == expected
    assert found.answer == (YES if set(expected.values()) == {YES} else NO)


def test_method_hypotheses_have_the_hand_numbers(grid: tuple[list, list]) -> None:
    rows, floors = grid
    floor = FLOOR["headline"]

    def numbers(entry: dict) -> dict[str, dict[str, float]]:
        found = answer({"id": "H", **entry}, rows, floors)
        return {line.label: line.numbers for line in found.lines}

    below = numbers({"kind": BELOW, "methods": ["em", "lsp"]})
    assert below["em"] == pytest.approx({"mean": 0, "n": 3, "floor_mean": 19 / 18,
                                         "floor_n": 6, "p": 1 / 84})  # fmt: skip
    assert below["lsp"]["p"] == pytest.approx(exact_p([1, 1, 1], floor, "less"))
    assert below["lsp"]["p"] >= 0.05
    above = numbers({"kind": "above_one_and_floor", "methods": ["tap", "ar"]})
    assert above["tap"]["mean"] == pytest.approx(8 / 3)
    assert above["tap"]["p"] == pytest.approx(1 / 84)  # 3, 3, 2: the 3 highest of the 9
    # ar: mean 4/3 > 1, but not above the floor
    assert above["ar"]["mean"] == pytest.approx(4 / 3)
    assert above["ar"]["p"] == pytest.approx(exact_p([1.5, 1.5, 1], floor, "greater"))
    assert above["ar"]["p"] > 0.05
    raised = numbers({"kind": "defense_raises", "defense": "jpeg", "methods": ["em", "lsp"]})
    # every jpeg UD (3, 3, 2) above every no-defense one (0, 0, 0): 1 of C(6, 3) = 20 splits
    assert raised["em"] == pytest.approx({"mean": 8 / 3, "n": 3, "base_mean": 0, "base_n": 3,
                                          "p": 1 / 20})  # fmt: skip
    assert raised["lsp"]["p"] == 1.0  # 1, 1, 1 against 1, 1, 1: every split ties


def test_spearman_hypothesis_counts_clean_cells_and_needs_the_threshold(
    grid: tuple[list, list],
) -> None:
    rows, floors = grid
    uds = [v for m in METHODS for v in HEADLINE[m]]
    acc = [v for m in METHODS for v in ACCURACY[m]]
    rho = spearman_rho(uds, acc)
    assert 0.5 < rho < 0.95
    yes = answer({"id": "H5", "kind": "spearman_above", "threshold": 0.5}, rows, floors)
    (line,) = yes.lines
    assert yes.answer == YES and line.numbers["n"] == 18  # the 15 poisoned and 3 clean cells
    assert line.numbers["rho"] == pytest.approx(rho) and line.numbers["p"] < 0.05
    no = answer({"id": "H5", "kind": "spearman_above", "threshold": 0.95}, rows, floors)
    assert no.answer == NO and no.lines[0].numbers["rho"] == pytest.approx(rho)
    # the jpeg cells alone: UD 1 (clean, lsp) and 3, 3, 2 (em) against accuracy 0.5 everywhere
    jpeg = answer(
        {"id": "H", "kind": "spearman_above", "threshold": 0.5, "defense": "jpeg"}, rows, floors
    )
    assert jpeg.answer == NO and "rho undefined" in jpeg.lines[0].text


def test_missing_cells_give_not_yet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    pending = (Cell("digits", "small_cnn", "none", 2, "em"),
               Cell("digits", "small_cnn", "jpeg", 1, "clean"))  # fmt: skip
    layout = write_layout(tmp_path / "bench", spec(), pending)
    rows = collect(layout)
    floors = noise_floors(layout, rows)

    def found(entry: dict) -> tuple[str, dict[str, str]]:
        result = answer({"id": "H", **entry}, rows, floors)
        return result.answer, {line.label: line.text for line in result.lines}

    state, lines = found({"kind": BELOW, "methods": ["em"]})
    assert state == NOT_YET and lines["em"] == "em: not yet (2 of 3 em cells finished)"
    # lsp is finished and not below the floor: "every method" is already no
    assert found({"kind": BELOW, "methods": ["lsp", "em"]})[0] == NO
    # needs no em cell: tap's held-out UDs 0, 0, 0 are below their floor
    assert found({"kind": BELOW, "methods": ["tap"], "measure": "heldout"})[0] == YES
    state, lines = found({"kind": "defense_raises", "defense": "jpeg", "methods": ["lsp"]})
    assert state == NOT_YET and "2 of 3 clean (jpeg) cells finished" in lines["lsp"]
    assert found({"kind": "spearman_above", "threshold": 0.5})[0] == NOT_YET


def test_report_answers_the_spec_hypotheses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    hypotheses = [
        {"id": "H1", "kind": BELOW, "methods": ["em", "lsp"]},
        {"id": "H3", "kind": "above_one_and_floor", "methods": ["tap"]},
    ]
    text = write_report(write_layout(tmp_path / "bench", spec(hypotheses=hypotheses))).read_text()
    section = text.split("## Pre-registered hypotheses")[1].split("\n## ")[0]
    assert "- **H1** (below_floor): UD of em, lsp below the clean floor" in section
    heads = [line for line in section.splitlines() if line.startswith("- **")]
    assert [line.rsplit(": ", 1)[1] for line in heads] == ["**no**", "**yes**"]
    assert (
        "  - em: yes: mean UD 0 (n = 3) against the floor's 1.06 (n = 6), p (below) = 0.0119"
        in section
    )
    assert "  - lsp: no: mean UD 1 (n = 3)" in section
    assert "  - tap: yes: mean UD 2.67 (n = 3) against the floor's 1.06 (n = 6), p (above) = " in (
        section
    )
    # without hypotheses, no such section
    bare = write_report(write_layout(tmp_path / "bare", spec())).read_text()
    assert "Pre-registered hypotheses" not in bare


# ---------------------------------------------------------------------------- the spec
@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"id": "H1", "kind": "below"}],
         "benchmark: hypotheses[0].kind: expected one of ['below_floor', 'not_below_floor', "
         "'above_one_and_floor', 'defense_raises', 'spearman_above']; found 'below'"),
        ([{"id": "H1", "kind": BELOW}],
         "benchmark: hypotheses[0].methods: expected for kind 'below_floor'; found none"),
        ([{"id": "H1", "kind": BELOW, "methods": []}],
         "benchmark: hypotheses[0].methods: expected a non-empty list of methods; found []"),
        ([{"id": "H1", "kind": BELOW, "methods": ["em", "rem"]}],
         "benchmark: hypotheses[0].methods: expected methods of the grid ['em', 'tap', "
         "'random', 'ar', 'lsp']; found 'rem'"),
        ([{"id": "H1", "kind": BELOW, "methods": ["clean"]}],
         "benchmark: hypotheses[0].methods: expected methods of the grid"),
        ([{"id": "H1", "kind": BELOW, "methods": ["em"], "defense": "blur"}],
         "benchmark: hypotheses[0].defense: expected one of ['none', 'jpeg']; found 'blur'"),
        ([{"id": "H1", "kind": BELOW, "methods": ["tap"], "defense": "jpeg"}],
         "benchmark: hypotheses[0].methods: expected methods the grid runs with defense 'jpeg' "
         "['em', 'lsp']; found 'tap'"),
        ([{"id": "H4", "kind": "defense_raises", "methods": ["em"], "defense": "none"}],
         "benchmark: hypotheses[0].defense: expected a defense other than 'none'"),
        ([{"id": "H1", "kind": BELOW, "methods": ["em"], "alpha": 1.5}],
         "benchmark: hypotheses[0].alpha must be in (0, 1), got 1.5"),
        ([{"id": "H1", "kind": BELOW, "methods": ["em"], "alpha": 0}],
         "benchmark: hypotheses[0].alpha must be in (0, 1), got 0"),
        ([{"id": "H1", "kind": BELOW, "methods": ["em"], "alpha": "5%"}],
         "benchmark: hypotheses[0].alpha: expected a number in (0, 1); found '5%'"),
        ([{"id": "H1", "kind": BELOW, "methods": ["em"], "measure": "loss"}],
         "benchmark: hypotheses[0].measure: expected one of ['headline', 'heldout', "
         "'scale_free']; found 'loss'"),
        ([{"id": "H1", "kind": BELOW, "method": ["em"]}],
         "benchmark: hypotheses[0].method: expected only the fields ['id', 'kind', 'methods', "
         "'measure', 'defense', 'alpha'] for kind 'below_floor'; found 'method'"),
        ([{"id": "H5", "kind": "spearman_above", "threshold": 1}],
         "benchmark: hypotheses[0].threshold must be in [-1, 1), got 1"),
        ([{"kind": BELOW, "methods": ["em"]}],
         "benchmark: hypotheses[0].id: expected a name such as 'H1'; found None"),
        ([{"id": "H1", "kind": BELOW, "methods": ["em"]},
          {"id": "H1", "kind": BELOW, "methods": ["lsp"]}],
         "benchmark: hypotheses[1].id: expected an id of its own; found 'H1' twice"),
        (["H1"], "benchmark: hypotheses[0]: expected a mapping with 'id' and 'kind'; found 'H1'"),
    ],
)  # fmt: skip
def test_bad_hypotheses_are_one_line(
    monkeypatch: pytest.MonkeyPatch, entries: list, message: str
) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(UnlearnError) as caught:
        spec(hypotheses=entries).check()
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_bad_hypothesis_stops_the_report_command(tmp_path: Path) -> None:
    config = tiny_grid(tmp_path, ["clean", "random"],
                       hypotheses=[{"id": "H1", "kind": BELOW, "methods": ["em"]}])  # fmt: skip
    out = tmp_path / "out"
    result = run_cli("benchmark", "--report_only=true", "--config", str(config),
                     "--output_dir", str(out))  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "hypotheses[0].methods: expected methods of the grid ['random']; found 'em'" in line
    assert not out.exists()  # refused before anything is written


def test_hypotheses_change_no_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tiny_grid(tmp_path, ["clean", "random"])
    out = tmp_path / "out"
    written = {}
    for hypotheses in ([], [{"id": "H2", "kind": "not_below_floor", "methods": ["random"]},
                            {"id": "H5", "kind": "spearman_above", "threshold": 0.5}]):  # fmt: skip
        grid_spec = yaml.safe_load(config.read_text())
        config.write_text(yaml.safe_dump({**grid_spec, "hypotheses": hypotheses}))
        args = ["benchmark", "--config", str(config), "--output_dir", str(out), "--dry_run"]
        code, _, err = main_in_process(args, capsys)
        assert code == 0, err
        files = ("fit_commands.txt", "poison_commands.txt")
        written[len(hypotheses)] = {name: (out / name).read_bytes() for name in files}
        written[len(hypotheses)]["cells"] = [c.id for c in layout_of(config, out).cells()]
        for name in files:
            (out / name).unlink()
    assert written[0] == written[2] and written[0]["fit_commands.txt"] != b""
    # the spec written beside them keeps the hypotheses
    kept = yaml.safe_load((out / "benchmark.yaml").read_text())["hypotheses"]
    assert [entry["id"] for entry in kept] == ["H2", "H5"]


def test_fashion_mnist_grid_has_the_preregistered_hypotheses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)
    config = REPO / "configs" / "benchmark" / "fashion_mnist.yaml"
    grid_spec = layout_of(config, REPO / "docs" / "results" / "fashion_mnist").spec
    grid_spec.check()
    # docs/fashion_mnist.md, "Hypotheses"
    assert grid_spec.hypotheses == [
        {"id": "H1", "kind": BELOW, "methods": ["em", "em_classwise", "rem", "lsp", "ops", "ar"]},
        {"id": "H2", "kind": "not_below_floor", "methods": ["random"]},
        {"id": "H3", "kind": "above_one_and_floor", "methods": ["tap"]},
        {"id": "H4", "kind": "defense_raises", "defense": "jpeg", "methods": ["em", "lsp"]},
        {"id": "H5", "kind": "spearman_above", "threshold": 0.5, "defense": "none"},
    ]
    without = dataclasses.replace(grid_spec, hypotheses=[])
    assert Layout(Path("x"), without).cells() == Layout(Path("x"), grid_spec).cells()
