"""The benchmark end to end on a tiny grid: results, report, failures, config checks up front,
a SIGKILLed runner that takes its child along, the output directory's lock, resume."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, small_sal_preset

from unlearn.benchmark.child import MARKER_ENV, kill_marked, run_logged
from unlearn.benchmark.command import build_parser, spec_from
from unlearn.benchmark.grid import Cell, Layout
from unlearn.benchmark.lock import FileLock, LockHeld
from unlearn.benchmark.report import RESULT_COLUMNS
from unlearn.cli import main as cli_main

#: fit arguments that make a cell a few seconds of CPU work
TINY_FIT_ARGS = [
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
]


def tiny_grid(tmp_path: Path, methods: list[str], **fields: Any) -> Path:
    """A benchmark config: digits, 2 epochs of 3 batches, SAL on 64 samples, 1 seed.

    ``random`` is the built-in random-noise poison; ``broken`` one that fails when it runs
    (eps < 0 is refused by the method, not by the parser). ``fields`` replace the spec's.
    """
    sal_preset = small_sal_preset(tmp_path, probe_size=64, iters=2)
    poison = yaml.safe_load((REPO / "configs" / "digits" / "poison_random.yaml").read_text())
    (tmp_path / "poison_random.yaml").write_text(yaml.safe_dump(poison))
    broken = {**poison, "method": {**poison["method"], "init_args": {"eps": -1.0}}}
    (tmp_path / "poison_broken.yaml").write_text(yaml.safe_dump(broken))
    spec = {
        "name": "tiny",
        "train_configs": {"digits": str(REPO / "configs" / "quickstart.yaml")},
        "poison_configs": str(tmp_path / "poison_{method}.yaml"),
        "methods": methods,
        "models": ["small_cnn"],
        "defenses": {"none": []},
        "seeds": [0],
        "callbacks": [str(sal_preset)],
        "fit_args": TINY_FIT_ARGS,
        "poison_args": ["--device=cpu", "--no_progress"],
        **fields,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def layout_of(config: Path, out: Path) -> Layout:
    """The layout a run of ``config`` into ``out`` uses."""
    return Layout(out, spec_from(build_parser().parse_args(["--config", str(config)])))


def main_in_process(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``python -m unlearn ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        cli_main(args)
        code: int | None = 0
    except SystemExit as err:
        code = err.code
    captured = capsys.readouterr()
    return int(code or 0), captured.out, captured.err


#: the tests that find processes through /proc
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")


def _benchmark(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "unlearn", "benchmark", "--config", str(config),
         "--output_dir", str(out), *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
    )  # fmt: skip


def _sal_values(path: Path) -> list[dict[str, str]]:
    """A ``sal.csv``'s rows without the wall-clock ``seconds`` column."""
    with path.open(newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _cmdline(pid: int) -> str:
    """The NUL-separated command line of ``pid`` ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow
@needs_proc
def test_sigkilled_runner_takes_its_child_along_and_the_rerun_finishes(tmp_path: Path) -> None:
    """SIGKILL only the runner while a cell trains: its fit dies with it; the rerun skips the
    finished cell, runs the killed one afresh (one event file, one checkpoint set, like an
    uninterrupted cell), records the failing one and exits 1."""
    config = tiny_grid(tmp_path, ["clean", "random", "broken"])
    out = tmp_path / "out"
    layout = layout_of(config, out)
    clean, random_cell, broken = layout.cells()
    assert (clean.method, random_cell.method, broken.method) == ("clean", "random", "broken")
    runner = _benchmark(config, out)
    deadline = time.monotonic() + 300
    child = None
    while child is None:  # the random cell's fit has started and writes its logs
        assert runner.poll() is None and time.monotonic() < deadline, runner.stdout.read()
        events = list(layout.run_dir(random_cell).glob("events.out.tfevents.*"))
        fits = [p for p in _children(runner.pid) if "\0fit\0" in _cmdline(p)]
        if events and fits and not layout.metrics_file(random_cell).exists():
            child = fits[0]
        time.sleep(0.1)
    os.kill(runner.pid, signal.SIGKILL)  # the runner alone, not its group
    runner.wait()
    gone_by = time.monotonic() + 5
    while _alive(child) and time.monotonic() < gone_by:
        time.sleep(0.1)
    # an orphan would still run here, or would have finished the cell on its own
    assert not _alive(child), "the fit of a SIGKILLed runner still runs"
    assert not layout.metrics_file(random_cell).is_file(), "the orphaned fit finished its cell"
    finished_at = layout.metrics_file(clean).stat().st_mtime_ns

    rerun = _benchmark(config, out)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 1, output  # a cell failed
    assert f"{clean.id}: finished earlier, skipped" in output
    assert "1 finished earlier, 1 ran, 1 failed" in output
    assert layout.metrics_file(clean).stat().st_mtime_ns == finished_at

    def files(cell: Cell, pattern: str) -> list[str]:
        return sorted(p.name for p in layout.run_dir(cell).rglob(pattern))

    assert len(files(random_cell, "events.out.tfevents.*")) == len(
        files(clean, "events.out.tfevents.*")
    )
    assert files(random_cell, "*.ckpt") == files(clean, "*.ckpt") != []

    # the rerun cell's results are those of the cell run alone, never interrupted (its
    # poison copied: --run_cell takes it as made)
    alone = tmp_path / "alone"
    layout_alone = layout_of(config, alone)
    shutil.copytree(layout.poison_dir(random_cell), layout_alone.poison_dir(random_cell))
    single = _benchmark(config, alone, "--run_cell", "2")
    output, _ = single.communicate(timeout=600)
    assert single.returncode == 0, output
    layouts = (layout, layout_alone)
    records = [json.loads(lay.metrics_file(random_cell).read_text()) for lay in layouts]
    for part in ("validation", "test"):
        assert records[0][part] == records[1][part] != {}
    tables = [next(lay.run_dir(random_cell).rglob("sal.csv")) for lay in layouts]
    assert _sal_values(tables[0]) == _sal_values(tables[1]) != []

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert list(rows[0]) == RESULT_COLUMNS
    by_method = {row["method"]: row for row in rows}
    assert by_method["broken"]["status"] == "failed"
    assert "poison" in by_method["broken"]["error"]
    assert (layout.error_file(broken)).is_file()
    for method in ("clean", "random"):
        assert by_method[method]["status"] == "ok"
        assert 0.0 <= float(by_method[method]["test_acc"]) <= 1.0
    assert float(by_method["clean"]["ud"]) == 1.0  # the reference against itself
    assert float(by_method["random"]["ud"]) >= 0.0
    assert float(by_method["random"]["poison_seconds"]) > 0.0
    # the cell records the poison it trained on: the hash of the store beside it
    meta = json.loads((layout.poison_dir(random_cell) / "meta.json").read_text())
    used = json.loads(layout.poison_used_file(random_cell).read_text())
    assert used["delta_sha256"] == meta["delta_sha256"] == by_method["random"]["poison_sha256"]
    assert not layout.poison_used_file(clean).exists() and by_method["clean"]["poison_sha256"] == ""
    report = (out / "report.md").read_text()
    for section in ("test accuracy (%) | UD", "Correlation of UD and test accuracy",
                    "Robustness variants", "parameter-weighted", "Failed cells",
                    "ud_bars.png"):  # fmt: skip
        assert section in report
    for figure in ("ud_bars.png", "ud_curves.png", "sal_heatmaps.png"):
        assert (out / figure).stat().st_size > 1000


def _wait_for_pid(log: Path, timeout: float = 30) -> int:
    """The PID in the ``$ command  (pid N)`` line ``run_logged`` writes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"\(pid (\d+)\)", log.read_text() if log.is_file() else "")
        if found:
            return int(found.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no pid line in {log}")


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


@needs_proc
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_child_dies_with_its_sigkilled_runner(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    runner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from unlearn.benchmark.child import run_logged;"
         "run_logged(['sleep', '60'], Path(sys.argv[1]), None, 'm')", str(log)],
    )  # fmt: skip
    child = _wait_for_pid(log)
    assert _alive(child)
    runner.kill()  # SIGKILL: no handler, no finally of the runner runs
    runner.wait()
    assert _gone_within(child, 2)


@needs_proc
def test_a_stopped_child_takes_its_own_children_along(tmp_path: Path) -> None:
    """A timeout ends the child's whole process group: here a shell and its background sleep."""
    pid_file = tmp_path / "grandchild"
    command = ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]
    code, tail = run_logged(command, tmp_path / "log", timeout=1, marker="x")
    assert code == -9 and "stopped after the timeout of 1 s" in tail
    assert _gone_within(int(pid_file.read_text()), 2)


@needs_proc
def test_kill_marked_ends_only_the_processes_of_its_unit() -> None:
    marked, other = (
        subprocess.Popen(["sleep", "60"], env=dict(os.environ, **{MARKER_ENV: unit}))
        for unit in ("/grid/cells/a", "/grid/cells/b")
    )
    try:
        time.sleep(0.2)  # exec done: the environment is the new one
        assert kill_marked("/grid/cells/a") == 1
        assert marked.wait(timeout=5) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        for process in (marked, other):
            process.kill()
            process.wait()


def test_second_runner_on_a_locked_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tiny_grid(tmp_path, ["clean"])
    out = tmp_path / "out"
    with FileLock(layout_of(config, out).lock_file(), "test"):  # as a running runner does
        code, _, err = main_in_process(
            ["benchmark", "--config", str(config), "--output_dir", str(out)], capsys
        )
    assert code == 2
    (line,) = err.strip().splitlines()
    assert str(out) in line and f"PID {os.getpid()}" in line
    assert not (out / "cells").exists()


def test_file_lock_shares_and_excludes(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with FileLock(path, "x", shared=True), FileLock(path, "x", shared=True):
        with pytest.raises(LockHeld, match=f"x is in use .*PID {os.getpid()}"):
            FileLock(path, "x").acquire()
    with FileLock(path, "x"):  # both shared holders gave it back
        with pytest.raises(LockHeld):
            FileLock(path, "x", shared=True).acquire()
    with FileLock(path, "x", shared=True):  # and the exclusive holder too
        pass


@pytest.mark.parametrize(
    ("methods", "fields", "named"),
    [
        (["clean"], {"defenses": {"none": [], "bad": [{"class_path": "NoSuchDefense"}]}},
         ["quickstart.yaml", "defense 'bad'", "'model.init_args.defenses'", "NoSuchDefense"]),
        (["clean", "random", "unknown"], {},
         ["poison_unknown.yaml", "method 'unknown'", "'method'", "NoSuchMethod"]),
        (["clean"], {"models": ["small_cnn", "no_such_net"]},
         ["quickstart.yaml", "'model.init_args.model'", "no_such_net"]),
        (["clean"], {"fit_args": [*TINY_FIT_ARGS, "--data.init_args.batch_size=many"]},
         ["quickstart.yaml", "'data.init_args.batch_size'", "many"]),
    ],
    ids=["defense", "method", "model", "fit_arg"],
)  # fmt: skip
def test_bad_configs_are_refused_before_any_cell_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture, methods: list[str], fields: dict,
    named: list[str],
) -> None:  # fmt: skip
    config = tiny_grid(tmp_path, methods, **fields)
    poison = yaml.safe_load((tmp_path / "poison_random.yaml").read_text())
    poison["method"] = {"class_path": "NoSuchMethod"}
    (tmp_path / "poison_unknown.yaml").write_text(yaml.safe_dump(poison))
    out = tmp_path / "out"
    code, _, err = main_in_process(
        ["benchmark", "--config", str(config), "--output_dir", str(out)], capsys
    )
    assert code == 2
    (line,) = err.strip().splitlines()
    for text in named:
        assert text in line
    assert not out.exists()  # refused before anything is written, the lock file included


def test_dry_run_writes_commands_and_slurm_script(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tiny_grid(tmp_path, ["clean", "random"])
    out = tmp_path / "out"
    code, _, err = main_in_process(
        ["benchmark", "--config", str(config), "--output_dir", str(out), "--dry_run"], capsys
    )
    assert code == 0, err
    fits = (out / "fit_commands.txt").read_text().splitlines()
    poisons = (out / "poison_commands.txt").read_text().splitlines()
    assert len(fits) == 2 and len(poisons) == 1
    assert all(line.startswith(f"{sys.executable} -m unlearn fit ") for line in fits)
    assert poisons[0].startswith(f"{sys.executable} -m unlearn poison ")
    assert "--data.init_args.poison=" in fits[1] and "--data.init_args.poison=" not in fits[0]
    script = (out / "slurm.sh").read_text()
    assert "--array=1-2 " in script and "--array=1 " in script and "afterany" in script
    for job in ("slurm_poisons_1.sh", "slurm_cells_1.sh"):
        assert f"PYTHON={sys.executable}" in (out / job).read_text()
    assert layout_of(out / "benchmark.yaml", out).cells() == layout_of(config, out).cells()
    assert not (out / "cells").exists()  # nothing ran


def test_report_only_is_a_bare_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tiny_grid(tmp_path, ["clean", "random"])
    out = tmp_path / "out"
    for flag in ("--report_only", "--report_only=true"):
        code, _, err = main_in_process(
            ["benchmark", "--config", str(config), "--output_dir", str(out), flag], capsys
        )
        assert code == 0, err
        rows = list(csv.DictReader((out / "results.csv").open()))
        assert [row["status"] for row in rows] == ["pending", "pending"]
        (out / "results.csv").unlink()
    assert not (out / "cells").exists()


def test_grid_without_clean_reference_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tiny_grid(tmp_path, ["random"])
    code, _, err = main_in_process(
        ["benchmark", "--config", str(config), "--output_dir", str(tmp_path / "out")], capsys
    )
    assert code == 2
    assert "'methods' must include 'clean'" in err and "Traceback" not in err
