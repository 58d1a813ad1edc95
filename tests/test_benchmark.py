"""The benchmark end to end on a tiny grid: results, report, failures, resume after a kill."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, small_sal_preset

from unlearn.benchmark.grid import BenchmarkSpec, Cell, Layout
from unlearn.benchmark.report import RESULT_COLUMNS


def _tiny_grid(tmp_path: Path, methods: list[str]) -> Path:
    """A benchmark config: digits, 1 epoch of 3 batches, SAL on 64 samples, 1 seed."""
    sal_preset = small_sal_preset(tmp_path, probe_size=64, iters=2)
    poison = yaml.safe_load((REPO / "configs" / "digits" / "poison_random.yaml").read_text())
    (tmp_path / "poison_random.yaml").write_text(yaml.safe_dump(poison))
    (tmp_path / "poison_broken.yaml").write_text(
        yaml.safe_dump({**poison, "method": {"class_path": "NoSuchMethod"}})
    )
    spec = {
        "name": "tiny",
        "train_configs": {"digits": str(REPO / "configs" / "quickstart.yaml")},
        "poison_configs": str(tmp_path / "poison_{method}.yaml"),
        "methods": methods,
        "models": ["small_cnn"],
        "defenses": {"none": []},
        "seeds": [0],
        "callbacks": [str(sal_preset)],
        "fit_args": [
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.accelerator=cpu",
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _benchmark(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "unlearn", "benchmark", "--config", str(config),
         "--output_dir", str(out), *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
    )  # fmt: skip


@pytest.mark.slow
def test_tiny_grid_records_failure_and_reports(tmp_path: Path) -> None:
    config = _tiny_grid(tmp_path, ["clean", "random", "broken"])
    out = tmp_path / "out"
    process = _benchmark(config, out)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "1 failed" in output and "2 ran" in output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert list(rows[0]) == RESULT_COLUMNS
    by_method = {row["method"]: row for row in rows}
    assert by_method["broken"]["status"] == "failed"
    assert "poison" in by_method["broken"]["error"]
    for method in ("clean", "random"):
        assert by_method[method]["status"] == "ok"
        assert 0.0 <= float(by_method[method]["test_acc"]) <= 1.0
    assert float(by_method["clean"]["ud"]) == 1.0  # the reference against itself
    assert float(by_method["random"]["ud"]) >= 0.0
    report = (out / "report.md").read_text()
    for section in ("test accuracy (%) | UD", "Correlation of UD and test accuracy",
                    "Threshold robustness", "Failed cells", "ud_bars.png"):  # fmt: skip
        assert section in report
    for figure in ("ud_bars.png", "ud_curves.png", "sal_heatmaps.png"):
        assert (out / figure).stat().st_size > 1000


@pytest.mark.slow
def test_killed_benchmark_resumes_without_rerunning(tmp_path: Path) -> None:
    config = _tiny_grid(tmp_path, ["clean", "random"])
    out = tmp_path / "out"
    spec = BenchmarkSpec(**yaml.safe_load(config.read_text()))
    layout = Layout(out, spec)
    first = Cell("digits", "small_cnn", "none", 0, "clean")
    process = _benchmark(config, out)
    deadline = time.monotonic() + 300
    while not layout.metrics_file(first).is_file():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)  # the benchmark and the child it runs
    process.wait()
    finished_at = layout.metrics_file(first).stat().st_mtime_ns
    second = Cell("digits", "small_cnn", "none", 0, "random")
    assert not layout.metrics_file(second).is_file()

    process = _benchmark(config, out)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert f"{first.id}: finished earlier, skipped" in output
    assert "1 finished earlier, 1 ran, 0 failed" in output
    assert layout.metrics_file(first).stat().st_mtime_ns == finished_at
    assert layout.metrics_file(second).is_file()


def test_dry_run_writes_commands_and_slurm_script(tmp_path: Path) -> None:
    config = _tiny_grid(tmp_path, ["clean", "random"])
    out = tmp_path / "out"
    process = _benchmark(config, out, "--dry_run=true")
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    fits = (out / "fit_commands.txt").read_text().splitlines()
    poisons = (out / "poison_commands.txt").read_text().splitlines()
    assert len(fits) == 2 and len(poisons) == 1
    assert all(line.startswith("python -m unlearn fit ") for line in fits)
    assert poisons[0].startswith("python -m unlearn poison ")
    assert "--data.init_args.poison=" in fits[1] and "--data.init_args.poison=" not in fits[0]
    script = (out / "slurm.sh").read_text()
    assert "--array=1-2" in script and "--array=1-1" in script and "afterok" in script
    assert not (out / "cells").exists()  # nothing ran


def test_grid_without_clean_reference_is_refused(tmp_path: Path) -> None:
    config = _tiny_grid(tmp_path, ["random"])
    process = _benchmark(config, tmp_path / "out")
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "'methods' must include 'clean'" in output and "Traceback" not in output
