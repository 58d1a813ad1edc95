"""The generated SLURM script, run under bash with stub ``sbatch``/``srun`` that record their
arguments: what it requests, where it finds itself, and array tasks that run through the
benchmark's own runner (skip, cleanup of a cancelled cell, error.json, resubmission)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_benchmark import TINY_FIT_ARGS, layout_of, main_in_process, tiny_grid

from unlearn.benchmark.check import Footprint
from unlearn.benchmark.runner import FAILED, RAN, Runner
from unlearn.benchmark.slurm import array_spec, srun_prefix
from unlearn.data.poison_store import load_poison

#: separates the recorded arguments of one call (never inside an argument here)
SEP = "\x1f"


def _stubs(tmp_path: Path) -> tuple[Path, Path]:
    """A directory with ``sbatch`` and ``srun`` stubs, and the file they record calls in.

    ``sbatch`` answers ``--parsable`` style job IDs (``1001;cluster``, ``1002;cluster``, ...);
    ``srun`` only records.
    """
    bin_dir, record = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    for name, answer in (
        ("sbatch", 'echo "$((1000 + $(wc -l < "$RECORD")));cluster"'),
        ("srun", "exit 0"),
    ):
        stub = bin_dir / name
        stub.write_text(
            f'#!/usr/bin/env bash\n(IFS="{SEP}"; echo "{name}{SEP}$*") >> "$RECORD"\n{answer}\n'
        )
        stub.chmod(0o755)
    record.touch()
    return bin_dir, record


def _calls(record: Path, name: str) -> list[list[str]]:
    lines = record.read_text().splitlines()
    return [line.split(SEP)[1:] for line in lines if line.split(SEP)[0] == name]


def _env(bin_dir: Path, record: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "PATH": f"{bin_dir}:{env['PATH']}", "RECORD": str(record), **extra}


def _dry_run(config: Path, out: Path, capsys: pytest.CaptureFixture) -> Path:
    code, _, err = main_in_process(
        ["benchmark", "--config", str(config), "--output_dir", str(out), "--dry_run"], capsys
    )
    assert code == 0, err
    return out / "slurm.sh"


GPU_2 = ["--trainer.accelerator=gpu", "--trainer.devices=2", "--trainer.strategy=ddp"]


@pytest.mark.parametrize(
    ("fields", "fit_options", "poison_options", "header"),
    [
        ({}, ["--ntasks-per-node=1", "--cpus-per-task=1"], ["--ntasks-per-node=1"], []),
        ({"fit_args": [*TINY_FIT_ARGS, *GPU_2], "poison_args": []},
         ["--ntasks-per-node=2", "--gres=gpu:2"], ["--ntasks-per-node=1", "--gres=gpu:1"], []),
        ({"fit_args": [*TINY_FIT_ARGS, *GPU_2], "poison_args": [],
          "slurm": {"gpus": 0, "cpus_per_task": 3, "partition": "short", "time": "0:10:00",
                    "extra": ["--account=lab", "#SBATCH --qos=low"]}},
         ["--ntasks-per-node=2", "--cpus-per-task=3"], ["--cpus-per-task=3"],
         ["--partition=short", "--time=0:10:00", "--account=lab", "--qos=low"]),
    ],
    ids=["cpu", "two_gpus", "slurm_section"],
)  # fmt: skip
def test_script_submits_arrays_with_the_cells_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture, fields: dict, fit_options: list[str],
    poison_options: list[str], header: list[str],
) -> None:  # fmt: skip
    config = tiny_grid(tmp_path, ["clean", "random"], **fields)
    out = tmp_path / "grid" / "out"
    script = _dry_run(config, out, capsys)
    bin_dir, record = _stubs(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    relative = os.path.relpath(script, elsewhere)  # `bash ../grid/out/slurm.sh`
    result = subprocess.run(
        ["bash", relative], cwd=elsewhere, env=_env(bin_dir, record),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    poison_call, cell_call = _calls(record, "sbatch")
    jobs = {}
    for call, kind in ((poison_call, "poison"), (cell_call, "cell")):
        jobs[kind] = Path(call[-1])  # an absolute path: found from another directory
        assert jobs[kind] == script.resolve().parent / f"slurm_{kind}s_1.sh"
    assert "--array=1" in poison_call and "--array=1-2" in cell_call
    assert "--dependency=afterany:1001" in cell_call  # satisfied even by a failed poison
    requested = {kind: _sbatch_lines(job) for kind, job in jobs.items()}
    assert set(fit_options) <= requested["cell"]
    assert set(poison_options) <= requested["poison"]
    gpus_wanted = any(o.startswith("--gres") for o in fit_options + poison_options)
    assert any(o.startswith("--gres") for o in requested["cell"] | requested["poison"]) == (
        gpus_wanted
    )
    for line in header:
        assert line in requested["cell"] and line in requested["poison"]
    for job in jobs.values():
        assert f"PYTHON={sys.executable}\n" in job.read_text()
    assert str(out.resolve() / "slurm") in script.read_text()


def _sbatch_lines(job_script: Path) -> set[str]:
    """The options of a job script's ``#SBATCH`` lines (those before its first command)."""
    options = set()
    for line in job_script.read_text().splitlines()[1:]:
        if line.startswith("#SBATCH "):
            options.add(line.removeprefix("#SBATCH ").strip())
        elif line and not line.startswith("#"):
            break  # sbatch stops reading #SBATCH lines at the first command
    return options


def test_multi_device_cell_is_launched_with_srun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a SLURM job a cell of two devices runs under ``srun`` with one task per device
    (so Lightning's SLURM environment connects the ranks); the stub launches nothing, so the
    cell is recorded as failed."""
    config = tiny_grid(tmp_path, ["clean"], fit_args=[*TINY_FIT_ARGS, *GPU_2])
    layout = layout_of(config, tmp_path / "out")
    bin_dir, record = _stubs(tmp_path)
    for key, value in _env(bin_dir, record, SLURM_JOB_ID="7", SLURM_CPUS_PER_TASK="2").items():
        monkeypatch.setenv(key, value)
    assert Runner(layout, echo=lambda line: None).run_cell(1) == FAILED
    (call,) = _calls(record, "srun")
    split = call.index(sys.executable)
    assert {"--ntasks=2", "--ntasks-per-node=2", "--nodes=1", "--cpus-per-task=2"} <= set(
        call[:split]
    )
    assert call[split + 1 : split + 4] == ["-m", "unlearn", "fit"]
    error = json.loads(layout.error_file(layout.cells()[0]).read_text())
    assert error["step"] == "fit" and error["command"].startswith("srun ")


def test_srun_only_for_several_processes_inside_slurm() -> None:
    two = Footprint("gpu", devices=2)
    assert srun_prefix(Footprint("gpu"), {"SLURM_JOB_ID": "1"}) == []
    assert srun_prefix(two, {}) == []  # outside SLURM Lightning starts its own ranks
    assert srun_prefix(two, {"SLURM_JOB_ID": "1"})[0] == "srun"
    assert array_spec([1, 2, 3, 5, 7, 8]) == "1-3,5,7-8"


@pytest.mark.slow
def test_array_tasks_skip_clean_up_record_failures_and_finish_after_resubmission(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tiny_grid(tmp_path, ["clean", "random"])
    out = tmp_path / "out"
    script = _dry_run(config, out, capsys)
    layout = layout_of(config, out)
    clean, random_cell = layout.cells()
    random_poison = layout.poison_dir(random_cell)
    bin_dir, record = _stubs(tmp_path)

    def task(kind: str, number: int) -> subprocess.Popen:
        env = _env(bin_dir, record, SLURM_ARRAY_TASK_ID=str(number), SLURM_JOB_ID="9")
        return subprocess.Popen(
            ["bash", str(script.parent / f"slurm_{kind}s_1.sh")], cwd=tmp_path, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def tasks(*which: tuple[str, int]) -> list[subprocess.CompletedProcess]:
        """Array tasks, all at once as SLURM runs them."""
        processes = [task(kind, n) for kind, n in which]
        return [
            subprocess.CompletedProcess(p.args, p.wait(timeout=300), p.stdout.read(), "")
            for p in processes
        ]

    # the clean cell finished in an earlier submission (its metrics.json is what counts; the
    # skip of a finished cell is tested on a real one in test_benchmark.py)
    layout.metrics_file(clean).parent.mkdir(parents=True)
    layout.metrics_file(clean).write_text("{}")
    # the random cell's task runs while its poison is missing (its poison task failed or was
    # cancelled): the cell fails at once with an error.json that says which task to rerun
    (early,) = tasks(("cell", 2))
    assert early.returncode == 1, early.stdout
    error = json.loads(layout.error_file(random_cell).read_text())
    assert error["step"] == "poison" and "--run_poison 1" in error["output"]

    (made,) = tasks(("poison", 1))
    assert made.returncode == 0, made.stdout
    made_at = (random_poison / "poison.pt").stat().st_mtime_ns
    assert json.loads(layout.poison_timing(random_poison).read_text())["seconds"] > 0
    # a cancelled cell task: its partial run directory holds a killed run's events
    partial = layout.run_dir(random_cell) / "events.out.tfevents.cancelled"
    partial.parent.mkdir(parents=True)
    partial.write_text("a killed run's events")

    # resubmission: the made poison is skipped (exit 0) while the cancelled cell runs again
    again, resumed = tasks(("poison", 1), ("cell", 2))
    assert again.returncode == 0 and "exists, skipped" in again.stdout, again.stdout
    assert (random_poison / "poison.pt").stat().st_mtime_ns == made_at
    assert resumed.returncode == 0, resumed.stdout
    assert not partial.exists() and not layout.error_file(random_cell).exists()
    assert layout.metrics_file(random_cell).is_file()
    assert _calls(record, "srun") == []  # one process per cell: no srun


@pytest.mark.slow
def test_a_poison_made_again_is_compared_with_the_earlier_one(tmp_path: Path) -> None:
    """A later session on a fresh machine has the committed ``meta.json`` of a poison but
    not its ``poison.pt``: the runner makes it again and records, from the content hash,
    whether the finished cells used the same perturbation."""
    config = tiny_grid(tmp_path, ["random"])
    layout = layout_of(config, tmp_path / "out")
    poison = layout.poison_dir(layout.cells()[0])
    lines: list[str] = []
    runner = Runner(layout, echo=lines.append)
    meta_file = poison / "meta.json"

    def make_again(earlier: dict) -> dict:
        (poison / "poison.pt").unlink()
        meta_file.write_text(json.dumps(earlier))
        lines.clear()
        assert runner.run_poison(1) == RAN
        load_poison(poison)  # meta.json still agrees with the meta inside poison.pt
        meta = json.loads(meta_file.read_text())
        return {
            **meta,
            "remade": json.loads((poison.parent / f"{poison.name}.remade.json").read_text()),
        }

    assert runner.run_poison(1) == RAN
    first = json.loads(meta_file.read_text())
    assert len(first["delta_sha256"]) == 64 and "remade" not in first

    again = make_again(first)  # the random poison is seeded: the same perturbation
    assert again["delta_sha256"] == first["delta_sha256"]
    assert again["remade"] == {
        "earlier_created": first["created"],
        "earlier_delta_sha256": first["delta_sha256"],
        "identical": True,
    }
    assert not any("WARNING" in line for line in lines)

    other = make_again({**first, "delta_sha256": "0" * 64})
    assert other["remade"]["identical"] is False
    assert any("differs from the one made" in line for line in lines), lines

    unhashed = make_again({k: v for k, v in first.items() if k != "delta_sha256"})
    assert unhashed["remade"]["identical"] is None
    assert any("cannot be told" in line for line in lines), lines
