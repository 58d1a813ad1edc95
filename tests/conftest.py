from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# One thread: on a 2-core runner, 2 threads per process spin-wait against the subprocesses
# and DDP ranks the tests start (a 20x slowdown was measured under load).
torch.set_num_threads(1)


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m unlearn ARGS`` in a subprocess; return the completed process."""
    (result,) = run_cli_parallel([list(args)], cwd=cwd, timeout=timeout)
    return result


def run_cli_parallel(
    commands: list[list[str]], cwd: Path | None = None, timeout: float = 600
) -> list[subprocess.CompletedProcess]:
    """Run several ``python -m unlearn ARGS`` at once (one thread each); wait for all."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "unlearn", *args],
            cwd=cwd or REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=timeout)
            results.append(
                subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
            )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return results


@pytest.fixture
def tiny_backbones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Swap the heavy backbones for the small CNN so configs run in seconds."""
    from unlearn import models

    for name in ("resnet18", "resnet50", "senet18", "vit_small"):
        monkeypatch.setitem(
            models.MODELS, name, lambda classes, shape: models.SmallCNN(classes, shape, 4)
        )


def write_random_poison(datamodule, directory: Path, eps: float = 8 / 255) -> Path:
    """Store uniform L_inf noise for ``datamodule``'s training split (a stand-in poison)."""
    from unlearn.poisons.store import save_poison

    info = datamodule.info()
    generator = torch.Generator().manual_seed(0)
    delta = (torch.rand(info.num_samples, *info.image_shape, generator=generator) * 2 - 1) * eps
    meta = {
        "method": "random",
        "norm": "linf",
        "eps": eps,
        "dataset": info.name,
        "split": info.split,
        "num_samples": info.num_samples,
        "image_shape": list(info.image_shape),
        "fingerprint": info.fingerprint,
        "seed": 0,
        "poison_ratio": 1.0,
    }
    save_poison(directory, delta, torch.arange(info.num_samples), meta)
    return directory


def small_sal_preset(directory: Path, **init_args) -> Path:
    """``callbacks/sal.yaml`` with its callback's ``init_args`` updated, written to ``directory``.

    The preset's own probe and iteration counts are sized for real runs; tests shrink them.
    """
    import yaml

    preset = yaml.safe_load((REPO / "callbacks" / "sal.yaml").read_text())
    entry = preset["trainer"]["callbacks+"][0]
    assert entry["class_path"] == "unlearn.callbacks.SharpnessCallback"
    entry["init_args"].update(init_args)
    path = directory / "sal_small.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def sal_tables_single_and_ddp(
    directory: Path, fit_args: list[str], ddp_args: list[str]
) -> tuple[Path, Path]:
    """Run ``fit`` (with a SAL callback) in one process and with ``ddp_args``.

    Returns:
        The ``sal.csv`` of the single-process run and of the DDP run.
    """
    tables = []
    for name, extra in (("single", []), ("ddp", ddp_args)):
        out = directory / name
        result = run_cli(
            "fit",
            *fit_args,
            f"--trainer.default_root_dir={out}",
            *extra,
            cwd=directory,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        (path,) = out.rglob("sal.csv")
        tables.append(path)
    return tables[0], tables[1]


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts of strings."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def sigkill_after_file(
    args: list[str], cwd: Path, file: Path, delay: float, timeout: float = 300
) -> str:
    """Run ``python -m unlearn ARGS``, SIGKILL it ``delay`` seconds after ``file`` appears.

    Asserts that the command was still running when killed and died of the signal; returns
    its output (stdout and stderr).
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "unlearn", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not file.is_file():
            assert process.poll() is None, process.communicate()[0][-3000:]
            assert time.monotonic() < deadline, f"no {file.name} within {timeout} s"
            time.sleep(0.01)
        time.sleep(delay)
        assert process.poll() is None, "the command ended before it was killed"
        os.kill(process.pid, signal.SIGKILL)
        output = process.communicate()[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    return output
