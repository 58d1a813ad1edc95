"""`python -m unlearn ud`: table, JSON rows, and clear errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import run_cli

from unlearn.errors import UnlearnError
from unlearn.sharpness import SAL_COLUMNS
from unlearn.ud_command import main, run

CLEAN = [[0.0, 0.0, 1.0, 1.0], [0.0, 0.2, 1.0, 1.2]]  # beta = mean(0.5, 0.6) = 0.55
EM = [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.6, 0.0]]  # #LP 1 against the clean 2: UD 0.5


def write_sal(
    path: Path,
    sal: list[list[float]],
    layers: list[str] | None = None,
    drop: str = "",
    loss0: float = 2.0,
) -> Path:
    layers = layers or [f"block{i}.conv" for i in range(len(sal[0]))]
    columns = [c for c in SAL_COLUMNS if c != drop]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*columns, "task"], extrasaction="ignore")
        writer.writeheader()
        for t, row in enumerate(sal):
            for name, value in zip(layers, row, strict=True):
                writer.writerow(
                    {
                        "epoch": t,
                        "step": 7 * (t + 1),
                        "layer": name,
                        "numel": 100,
                        "sal": value,
                        "s_max": value,
                        "s_min": 0.0,
                        "sal_acc": 0.0,
                        "loss0": loss0,
                        "seconds": 0.1,
                        "task": "classification",
                    }
                )
    return path


def test_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean = write_sal(tmp_path / "clean.csv", CLEAN)
    em = write_sal(tmp_path / "em.csv", EM)
    out = tmp_path / "out" / "ud.json"
    rows = main(["--clean", str(clean), "--poisoned", str(em), str(clean), "--json", str(out)])
    printed = capsys.readouterr().out
    assert "UD weighted" in printed and "em.csv" in printed
    written = json.loads(out.read_text())
    assert [r["poisoned"] for r in written] == [str(em), str(clean)]
    for row in written:
        assert {"poisoned", "beta", "lp_clean", "lp_poisoned", "ud", "ud_weighted"} <= set(row)
    assert written[0]["beta"] == pytest.approx(0.55)
    assert written[0]["lp_clean"] == pytest.approx(2.0)
    assert written[0]["lp_poisoned"] == pytest.approx(1.0)
    assert written[0]["ud"] == pytest.approx(0.5)
    assert written[1]["ud"] == 1.0 and written[1]["ud_weighted"] == 1.0
    assert rows[0]["ud"] == written[0]["ud"]


def test_first_t_checkpoints(tmp_path: Path) -> None:
    clean = write_sal(tmp_path / "clean.csv", CLEAN)
    em = write_sal(tmp_path / "em.csv", EM)
    (row,) = main(["--clean", str(clean), "--poisoned", str(em), "--checkpoints", "1"])
    assert row["checkpoints"] == 1 and row["ud"] == pytest.approx(0.5)


def test_config_file(tmp_path: Path) -> None:
    clean = write_sal(tmp_path / "clean.csv", CLEAN)
    em = write_sal(tmp_path / "em.csv", EM)
    config = tmp_path / "ud.yaml"
    config.write_text(f"clean: {clean}\npoisoned:\n  - {em}\n")
    (row,) = main(["--config", str(config)])
    assert row["ud"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_column", "bad.csv: missing column(s) ['s_min']"),
        ("layers", "different layer sets"),
        ("too_few", "too few checkpoints: 2, need 5"),
        ("no_file", "nope.csv: no such SAL table"),
    ],
)
def test_errors_are_clear(tmp_path: Path, case: str, message: str) -> None:
    clean = write_sal(tmp_path / "clean.csv", CLEAN)
    args = ["--clean", str(clean), "--poisoned"]
    if case == "missing_column":
        args.append(str(write_sal(tmp_path / "bad.csv", EM, drop="s_min")))
    elif case == "layers":
        args.append(str(write_sal(tmp_path / "other.csv", EM, layers=["a", "b", "c", "d"])))
    elif case == "too_few":
        args += [str(write_sal(tmp_path / "em.csv", EM)), "--checkpoints", "5"]
    else:
        args.append(str(tmp_path / "nope.csv"))
    assert_refused(args, message)


def assert_refused(args: list[str], message: str) -> None:
    """``main(args)`` exits 2 with one error line on stderr that contains ``message``."""
    from contextlib import redirect_stderr
    from io import StringIO

    err = StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    errors = [line for line in err.getvalue().splitlines() if "unlearn ud: error" in line]
    assert len(errors) == 1 and errors[0].startswith("unlearn ud: error: ")
    assert message in errors[0]


def test_library_errors_are_unlearn_errors(tmp_path: Path) -> None:
    clean = write_sal(tmp_path / "clean.csv", CLEAN)
    with pytest.raises(UnlearnError, match=re.escape("nope.csv: no such SAL table")):
        run(str(clean), [str(tmp_path / "nope.csv")])


def test_command_line_error_has_no_traceback(tmp_path: Path) -> None:
    clean = write_sal(tmp_path / "clean.csv", CLEAN)
    bad = write_sal(tmp_path / "bad.csv", EM, drop="s_min")
    result = run_cli("ud", "--clean", str(clean), "--poisoned", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "bad.csv: missing column(s) ['s_min']" in result.stderr


def write_multitask(path: Path, per_task: dict[str, list[list[float]]]) -> Path:
    """A multi-task run's sal.csv: per checkpoint, each task's rows (layers block0..3)."""
    parts = {task: write_sal(path.with_suffix(f".{task}"), sal) for task, sal in per_task.items()}
    tables = {task: list(csv.DictReader(p.open(newline=""))) for task, p in parts.items()}
    rows = [
        {**row, "task": task}
        for t in range(2)
        for task, table in tables.items()
        for row in table
        if int(row["epoch"]) == t
    ]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_multitask_rows_per_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean = write_multitask(tmp_path / "clean.csv", {"class_scene": CLEAN, "normal": CLEAN})
    # the same tasks in another order: rows follow the clean file's task order
    em = write_multitask(tmp_path / "em.csv", {"normal": CLEAN, "class_scene": EM})
    out = tmp_path / "ud.json"
    rows = main(["--clean", str(clean), "--poisoned", str(em), str(clean), "--json", str(out)])
    written = json.loads(out.read_text())
    assert [(r["poisoned"], r["task"]) for r in written] == [
        (str(em), "class_scene"),
        (str(em), "normal"),
        (str(clean), "class_scene"),
        (str(clean), "normal"),
    ]
    assert [r["ud"] for r in written] == [pytest.approx(0.5), 1.0, 1.0, 1.0]
    assert written[0]["beta"] == pytest.approx(0.55) and written[0]["lp_poisoned"] == 1.0
    assert rows == written
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["poisoned", "task", "T"]
    assert lines[1].split()[:2] == [str(em), "class_scene"]
    assert lines[1].split()[6] == "0.5"  # the UD column


def test_multitask_different_task_sets_are_refused(tmp_path: Path) -> None:
    clean = write_multitask(tmp_path / "clean.csv", {"class_scene": CLEAN, "normal": CLEAN})
    em = write_multitask(tmp_path / "em.csv", {"class_scene": EM, "depth_euclidean": CLEAN})
    message = f"different task sets: only in {clean}: ['normal']; only in {em}: ['depth_euclidean']"
    assert_refused(["--clean", str(clean), "--poisoned", str(em)], message)
    single = tmp_path / "single.csv"  # no task column
    rows = list(csv.DictReader(write_sal(single, EM).open(newline="")))
    with single.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SAL_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    message = (
        f"{clean} is a multi-task run's SAL table (tasks ['class_scene', 'normal']), {single} "
        "a single-task run's"
    )
    assert_refused(["--clean", str(clean), "--poisoned", str(single)], message)


# Noise floor: three clean runs of one checkpoint; every 2-means beta is 0.5, #LP 2, 3, 1
FLOOR_CLEANS = {"c0": [[0.0, 0.0, 1.0, 1.0]], "c1": [[0.0, 1.0, 1.0, 1.0]], "c2": [[0, 0, 0, 1.0]]}
# UD of clean i against clean j = #LP(i) / #LP(j), ordered pairs, i outer
FLOOR_VALUES = [2 / 3, 2 / 1, 3 / 2, 3 / 1, 1 / 2, 1 / 3]
FLAT = [[0.0, 0.0, 0.0, 0.4]]  # #LP 0: UD 0 against each clean run


def write_cleans(tmp_path: Path) -> list[str]:
    return [str(write_sal(tmp_path / f"{n}.csv", sal)) for n, sal in FLOOR_CLEANS.items()]


def test_floor_and_verdict_per_poisoned_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from unlearn.sharpness.floor import permutation_test

    cleans = write_cleans(tmp_path)
    flat = str(write_sal(tmp_path / "flat.csv", FLAT))
    like = str(write_sal(tmp_path / "like.csv", FLOOR_CLEANS["c0"]))  # a copy of clean c0
    out = tmp_path / "ud.json"
    args = ["--clean", *cleans, "--poisoned", flat, like, "--alternative", "less"]
    result = main([*args, "--json", str(out)])
    floor = result["floor"]
    assert [(p["poisoned"], p["clean"]) for p in floor["pairs"]] == [
        (cleans[i], cleans[j]) for i in range(3) for j in range(3) if i != j
    ]
    assert floor["values"] == pytest.approx(FLOOR_VALUES)
    assert floor["mean"] == pytest.approx(8 / 6) and floor["min"] == pytest.approx(1 / 3)
    assert floor["max"] == pytest.approx(3.0)
    # each poisoned file against each clean run
    assert [(r["poisoned"], r["clean"]) for r in result["rows"]] == [
        (p, c) for p in (flat, like) for c in cleans
    ]
    flat_verdict, like_verdict = result["verdicts"]
    # UDs 0, 0, 0: the 3 smallest of the 9 pooled values, the unique most extreme split
    assert flat_verdict["values"] == [0.0, 0.0, 0.0]
    assert flat_verdict["verdict"] == "below floor" and flat_verdict["p"] == pytest.approx(1 / 84)
    # the copy of c0 scores #LP 2 against 2, 3, 1: UDs 1, 2/3, 2, inside the floor
    assert like_verdict["values"] == pytest.approx([1.0, 2 / 3, 2.0])
    assert like_verdict["verdict"] == "within floor"
    assert like_verdict["p"] == permutation_test([1.0, 2 / 3, 2.0], FLOOR_VALUES, "less") > 0.05
    written = json.loads(out.read_text())
    assert written["floor"] == floor and written["verdicts"] == result["verdicts"]
    assert [r["ud"] for r in written["rows"]] == [r["ud"] for r in result["rows"]]
    printed = capsys.readouterr().out
    assert "noise floor: UD of each clean run against each other (6 ordered pairs)" in printed
    assert "floor: mean 1.333, min 0.3333, max 3" in printed
    verdict_lines = printed.split("verdict: ")[1].splitlines()
    assert verdict_lines[0] == "permutation test of mean UD - mean floor (less, alpha 0.05)"
    assert verdict_lines[2].split() == [flat, "3", "0", "below", "floor", "(p=0.0119)"]
    assert verdict_lines[3].split()[:5] == [like, "3", "1.222", "within", "floor"]


def test_floor_paired_by_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cleans = write_cleans(tmp_path)
    seeds = [str(write_sal(tmp_path / f"em{i}.csv", FLAT)) for i in range(3)]
    args = ["--clean", *cleans, "--poisoned", *seeds, "--pair_by_order", "true"]
    result = main([*args, "--alpha", "0.01"])
    paired = list(zip(seeds, cleans, strict=True))
    assert [(r["poisoned"], r["clean"]) for r in result["rows"]] == paired
    (found,) = result["verdicts"]
    assert found["poisoned"] == seeds and found["n"] == 3
    # two-sided: the 3 largest (3, 2, 1.5) against the rest differ by 13/6 - 1.5/6 = 1.917,
    # more than the observed |0 - 4/3|: p > 1/84; and 1/84 > alpha 0.01 anyway
    assert found["verdict"] == "within floor" and found["p"] > 1 / 84
    assert "within floor (p=" in capsys.readouterr().out


def test_floor_run_that_diverged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cleans = write_cleans(tmp_path)
    bad = str(write_sal(tmp_path / "bad.csv", [[0.0, float("nan"), 1.0, 1.0]]))
    with pytest.raises(SystemExit) as exit_info:
        main(["--clean", *cleans, "--poisoned", bad])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1].split() == [bad, "0", "nan", "diverged"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("one_clean", "--clean: a noise floor needs at least 2 clean files; found 1"),
        ("twice", "c0.csv is the same file as"),
        ("unpaired", "expected as many --poisoned as --clean files (3); found 1"),
        ("clean_nan", "c1.csv: diverged at epoch 0 (step 7), task classification, layer(s) block1"),
        ("settings", "c0.json record different SAL settings: eps 0.1 vs 0.05"),
        ("multitask", "multi.csv is a multi-task run's SAL table (tasks ['a', 'b'])"),
        ("alternative", "--alternative: expected one of ('less', 'greater', 'two-sided')"),
        ("alpha", "--alpha must be in (0, 1)"),
    ],
)
def test_floor_errors_name_the_file(tmp_path: Path, case: str, message: str) -> None:
    cleans = write_cleans(tmp_path)
    poisoned = [str(write_sal(tmp_path / "flat.csv", FLAT))]
    extra: list[str] = []
    if case == "one_clean":
        cleans, extra = cleans[:1], ["--pair_by_order", "true"]
    elif case == "twice":
        cleans.append(str(tmp_path / "." / "c0.csv"))
    elif case == "unpaired":
        extra = ["--pair_by_order", "true"]
    elif case == "clean_nan":
        write_sal(Path(cleans[1]), [[0.0, float("nan"), 1.0, 1.0]])
    elif case == "settings":
        for path, eps in zip(cleans, (0.05, 0.05, 0.1), strict=True):
            sidecar = {"format": 1, "settings": {"eps": eps, "iters": 10}, "non_finite": []}
            Path(path).with_suffix(".json").write_text(json.dumps(sidecar))
    elif case == "multitask":
        cleans.append(str(write_multitask(tmp_path / "multi.csv", {"a": CLEAN, "b": CLEAN})))
    elif case == "alternative":
        extra = ["--alternative", "below"]
    else:
        extra = ["--alpha", "1.5"]
    assert_refused(["--clean", *cleans, "--poisoned", *poisoned, *extra], message)


def test_scale_free_sal_divides_by_the_probe_loss(tmp_path: Path) -> None:
    # loss0 0: the clean run's scale-free values are its SAL values (beta 0.55, #LP 2)
    clean = write_sal(tmp_path / "clean.csv", CLEAN, loss0=0.0)
    # as sharp as the clean run's sharp layers, but at a probe loss of 3: 1.5 / 4 < beta
    sharp = write_sal(tmp_path / "sharp.csv", [[0.0, 0.0, 1.5, 1.5]] * 2, loss0=3.0)
    (paper,) = main(["--clean", str(clean), "--poisoned", str(sharp)])
    (free,) = main(["--clean", str(clean), "--poisoned", str(sharp), "--sal_value", "scale_free"])
    assert paper["beta"] == free["beta"] == pytest.approx(0.55)
    assert paper["ud"] == 1.0
    assert free["ud"] == 0.0


def test_unknown_sal_value_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clean = write_sal(tmp_path / "clean.csv", CLEAN)
    with pytest.raises(SystemExit) as stop:
        main(["--clean", str(clean), "--poisoned", str(clean), "--sal_value", "accuracy"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--sal_value" in err and "accuracy" in err and len(err.splitlines()) == 1
