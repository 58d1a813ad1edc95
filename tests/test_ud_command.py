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
from unlearn.ud_command import main

CLEAN = [[0.0, 0.0, 1.0, 1.0], [0.0, 0.2, 1.0, 1.2]]  # beta = mean(0.5, 0.6) = 0.55
EM = [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.6, 0.0]]  # #LP 1 against the clean 2: UD 0.5


def write_sal(
    path: Path, sal: list[list[float]], layers: list[str] | None = None, drop: str = ""
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
                        "loss0": 2.0,
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
    with pytest.raises(UnlearnError, match=re.escape(message)):
        main(args)


def test_command_line_error_has_no_traceback(tmp_path: Path) -> None:
    clean = write_sal(tmp_path / "clean.csv", CLEAN)
    bad = write_sal(tmp_path / "bad.csv", EM, drop="s_min")
    result = run_cli("ud", "--clean", str(clean), "--poisoned", str(bad))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "bad.csv: missing column(s) ['s_min']" in result.stderr
