"""Thresholds, #LP and UD on data with known answers; reading sal.csv tables."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from unlearn.sharpness import (
    SAL_COLUMNS,
    SalTable,
    kmeans_1d,
    lp_count,
    mean_threshold,
    percentile_threshold,
    three_means_upper_threshold,
    two_means_threshold,
    ud,
)
from unlearn.sharpness.ud import ratio


def brute_force_kmeans_sse(values: list[float], k: int) -> float:
    """Lowest SSE over every assignment of the values to k labelled clusters."""
    x = np.asarray(values)
    best = math.inf
    for labels in itertools.product(range(k), repeat=len(x)):
        lab = np.asarray(labels)
        if len(set(labels)) < k:
            continue
        best = min(best, sum(((x[lab == c] - x[lab == c].mean()) ** 2).sum() for c in range(k)))
    return best


def test_two_means_known_answer() -> None:
    # clusters {0, 0.1, 0.2} and {10, 10.1}: centres 0.1 and 10.05, midpoint 5.075
    assert kmeans_1d([10.1, 0.0, 10.0, 0.2, 0.1], 2) == pytest.approx([0.1, 10.05])
    assert two_means_threshold([10.1, 0.0, 10.0, 0.2, 0.1]) == pytest.approx(5.075)
    # one outlier: {1, 2, 3, 4} vs {100}
    assert two_means_threshold([1, 2, 3, 4, 100]) == pytest.approx((2.5 + 100) / 2)
    # all equal: both centres equal the value
    assert two_means_threshold([3.0, 3.0, 3.0]) == pytest.approx(3.0)


def test_three_means_known_answer() -> None:
    values = [0, 1, 2, 10, 11, 20, 21]
    assert kmeans_1d(values, 3) == pytest.approx([1.0, 10.5, 20.5])
    assert three_means_upper_threshold(values) == pytest.approx(15.5)


@pytest.mark.parametrize("k", [2, 3])
def test_kmeans_is_globally_optimal(k: int) -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        values = rng.normal(size=8).tolist()
        centres = kmeans_1d(values, k)
        x = np.asarray(values)
        labels = np.abs(x[:, None] - centres[None, :]).argmin(1)
        sse = sum(((x[labels == c] - centres[c]) ** 2).sum() for c in range(k))
        assert sse == pytest.approx(brute_force_kmeans_sse(values, k), abs=1e-9)


def test_kmeans_rejects_too_few_values() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        kmeans_1d([1.0, 2.0], 3)


def test_mean_threshold_and_percentiles() -> None:
    # checkpoint midpoints 5.075 and (2.5 + 100) / 2 = 51.25
    rows = [[10.1, 0.0, 10.0, 0.2, 0.1], [1, 2, 3, 4, 100]]
    assert mean_threshold(rows) == pytest.approx((5.075 + 51.25) / 2)
    values = list(range(1, 102))  # 1..101
    assert percentile_threshold(values, 50) == pytest.approx(51)
    assert percentile_threshold(values, 75) == pytest.approx(76)
    assert percentile_threshold(values, 90) == pytest.approx(91)


def table(sal: list[list[float]], numel: list[int] | None = None, source: str = "t") -> SalTable:
    layers = [f"l{i}" for i in range(len(sal[0]))]
    numel = numel or [10 * (i + 1) for i in range(len(layers))]
    rows = [
        {
            "epoch": t,
            "step": 100 * t,
            "layer": name,
            "numel": n,
            "sal": v,
            "s_max": 0,
            "s_min": 0,
            "sal_acc": 0,
            "loss0": 0,
            "seconds": 0,
        }
        for t, row in enumerate(sal)
        for name, n, v in zip(layers, numel, row, strict=True)
    ]
    return SalTable.from_rows(rows, source)


CLEAN = [[0.0, 0.0, 1.0, 1.0], [0.0, 0.2, 1.0, 1.2]]  # midpoints 0.5 and 0.6: beta = 0.55


def test_lp_and_ud_known_answer() -> None:
    clean = table(CLEAN, source="clean.csv")
    poisoned = table([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.6, 0.0]], source="em.csv")
    # clean: 2 + 2 layers above 0.55 over 2 checkpoints = 2; poisoned: (1 + 1) / 2 = 1
    assert lp_count(clean, 0.55) == pytest.approx((2.0, (30 + 40 + 30 + 40) / 2))
    row = ud(clean, poisoned)
    assert row["beta"] == pytest.approx(0.55)
    assert row["lp_clean"] == pytest.approx(2.0)
    assert row["lp_poisoned"] == pytest.approx(1.0)
    assert row["ud"] == pytest.approx(0.5)
    # weighted: clean (30 + 40 + 30 + 40) / 2 = 70, poisoned (40 + 30) / 2 = 35
    assert row["ud_weighted"] == pytest.approx(0.5)
    assert row["poisoned"] == "em.csv" and row["clean"] == "clean.csv"
    for key in ("ud_3means", "ud_p50", "ud_p75", "ud_p90", "beta_p90"):
        assert key in row
    # UD(1): first checkpoint only: clean 2 layers, poisoned 1
    assert ud(clean, poisoned, t=1)["ud"] == pytest.approx(0.5)


def test_ud_of_a_run_against_itself_is_one() -> None:
    rng = np.random.default_rng(3)
    clean = table(rng.normal(size=(5, 9)).tolist())
    row = ud(clean, clean)
    assert row["ud"] == 1.0 and row["ud_weighted"] == 1.0
    for t in range(1, 6):
        assert ud(clean, clean, t=t)["ud"] == 1.0


def test_zero_clean_count_gives_inf_or_nan() -> None:
    assert ratio(1.0, 0.0) == math.inf
    assert math.isnan(ratio(0.0, 0.0))
    assert ratio(1.0, 4.0) == 0.25


def test_layer_order_does_not_matter() -> None:
    clean = table(CLEAN)
    shuffled_rows = [
        {
            "epoch": r[0],
            "step": r[1],
            "layer": r[2],
            "numel": r[3],
            "sal": r[4],
            "s_max": 0,
            "s_min": 0,
            "sal_acc": 0,
            "loss0": 0,
            "seconds": 0,
        }
        for r in [
            (1, 100, "l3", 40, 1.2),
            (1, 100, "l0", 10, 0.0),
            (1, 100, "l2", 30, 1.0),
            (1, 100, "l1", 20, 0.2),
            (0, 0, "l2", 30, 1.0),
            (0, 0, "l0", 10, 0.0),
            (0, 0, "l1", 20, 0.0),
            (0, 0, "l3", 40, 1.0),
        ]
    ]
    assert ud(clean, SalTable.from_rows(shuffled_rows, "shuffled"))["ud"] == 1.0


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def rows_of(sal: list[list[float]], layers: list[str] | None = None) -> list[dict]:
    layers = layers or [f"l{i}" for i in range(len(sal[0]))]
    return [
        {
            "epoch": t,
            "step": 10 * t,
            "layer": name,
            "numel": 5,
            "sal": v,
            "s_max": v,
            "s_min": 0,
            "sal_acc": 0.1,
            "loss0": 2.3,
            "seconds": 0.5,
            "task": "classification",
        }
        for t, row in enumerate(sal)
        for name, v in zip(layers, row, strict=True)
    ]


def test_read_sal_csv_round_trip(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "sal.csv", rows_of(CLEAN), [*SAL_COLUMNS, "task"])
    t = SalTable.read(path)
    assert t.layers == ["l0", "l1", "l2", "l3"]
    assert t.checkpoints == [(0, 0), (1, 10)]
    assert t.sal.tolist() == CLEAN
    assert ud(t, t)["ud"] == 1.0


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    columns = [c for c in SAL_COLUMNS if c != "s_min"]
    bad = write_csv(tmp_path / "bad.csv", rows_of(CLEAN), [*columns, "task"])
    with pytest.raises(ValueError, match=r"bad\.csv.*s_min"):
        SalTable.read(bad)
    empty = write_csv(tmp_path / "empty.csv", [], list(SAL_COLUMNS))
    with pytest.raises(ValueError, match=r"empty\.csv.*too few checkpoints"):
        SalTable.read(empty)
    rows = rows_of(CLEAN)
    rows[-1]["layer"] = "other"  # checkpoint 1 measures another layer
    mixed = write_csv(tmp_path / "mixed.csv", rows, [*SAL_COLUMNS, "task"])
    with pytest.raises(ValueError, match=r"mixed\.csv.*different layer set"):
        SalTable.read(mixed)
    rows = rows_of(CLEAN)
    rows[1]["sal"] = "abc"
    garbled = write_csv(tmp_path / "garbled.csv", rows, [*SAL_COLUMNS, "task"])
    with pytest.raises(ValueError, match=r"garbled\.csv, row 3"):
        SalTable.read(garbled)
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        SalTable.read(tmp_path / "missing.csv")


def test_different_layer_sets_and_too_few_checkpoints(tmp_path: Path) -> None:
    clean = SalTable.read(write_csv(tmp_path / "clean.csv", rows_of(CLEAN), [*SAL_COLUMNS, "task"]))
    other = SalTable.read(
        write_csv(
            tmp_path / "other.csv", rows_of(CLEAN, ["l0", "l1", "l2", "x"]), [*SAL_COLUMNS, "task"]
        )
    )
    with pytest.raises(ValueError, match=r"only in .*clean\.csv: \['l3'\].*other\.csv: \['x'\]"):
        ud(clean, other)
    with pytest.raises(ValueError, match=r"clean\.csv: too few checkpoints: 2, need 3"):
        ud(clean, clean, t=3)


EM = [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.6, 0.0]]


def multitask_rows(per_task: dict[str, list[list[float]]]) -> list[dict]:
    """Rows of a multi-task run's sal.csv: per checkpoint, each task's layers."""
    rows = []
    for t in range(2):
        for task, sal in per_task.items():
            rows += [{**r, "task": task} for r in rows_of(sal) if r["epoch"] == t]
    return rows


def test_read_one_task_of_a_multitask_table(tmp_path: Path) -> None:
    from unlearn.sharpness.ud import sal_tasks

    rows = multitask_rows({"segment_semantic": CLEAN, "class_scene": EM})
    rows[5]["sal"] = "abc"  # class_scene, l1, checkpoint 0: line 7 of the file
    path = write_csv(tmp_path / "mt.csv", rows, [*SAL_COLUMNS, "task"])
    assert sal_tasks(path) == ["segment_semantic", "class_scene"]
    seg = SalTable.read(path, task="segment_semantic")
    assert seg.task == "segment_semantic" and seg.sal.tolist() == CLEAN
    assert seg.first(1).task == "segment_semantic"
    # the unreadable value is named by its line in the file (header = line 1)
    with pytest.raises(ValueError, match=r"mt\.csv, row 7: unreadable"):
        SalTable.read(path, task="class_scene")
    rows[5]["sal"] = EM[0][1]
    path = write_csv(tmp_path / "mt.csv", rows, [*SAL_COLUMNS, "task"])
    tables = SalTable.read_tasks(path)
    assert list(tables) == ["segment_semantic", "class_scene"]
    assert tables["class_scene"].sal.tolist() == EM
    row = ud(tables["segment_semantic"], tables["class_scene"])
    assert row["task"] == "class_scene" and row["ud"] == pytest.approx(0.5)
    assert list(row)[:4] == ["poisoned", "clean", "task", "checkpoints"]
    assert "task" not in ud(table(CLEAN), table(EM))


def test_multitask_table_errors_name_the_file_and_tasks(tmp_path: Path) -> None:
    from unlearn.sharpness.ud import SalTableError, sal_tasks

    rows = multitask_rows({"segment_semantic": CLEAN, "class_scene": EM})
    path = write_csv(tmp_path / "mt.csv", rows, [*SAL_COLUMNS, "task"])
    with pytest.raises(
        SalTableError,
        match=r"mt\.csv: a multi-task SAL table \(tasks \['segment_semantic', 'class_scene'\]\); "
        r"choose one task",
    ):
        SalTable.read(path)
    with pytest.raises(
        SalTableError,
        match=r"mt\.csv: no rows of task 'normal'; tasks in it: \['segment_semantic', "
        r"'class_scene'\]",
    ):
        SalTable.read(path, task="normal")
    single = write_csv(tmp_path / "single.csv", rows_of(CLEAN), list(SAL_COLUMNS))
    assert sal_tasks(single) == []
    with pytest.raises(SalTableError, match=r"single\.csv: no rows of task 'x'; .*no task column"):
        SalTable.read(single, task="x")
    with pytest.raises(SalTableError, match=r"single\.csv: no task column"):
        SalTable.read_tasks(single)
    rows[0]["task"] = ""
    partly = write_csv(tmp_path / "partly.csv", rows, [*SAL_COLUMNS, "task"])
    with pytest.raises(SalTableError, match=r"partly\.csv: some rows have a task and some"):
        SalTable.read(partly, task="class_scene")
