"""Faults in SAL measurement: a diverged run is never a number; unlike references are refused.

A training that diverges writes nan/inf SAL: the callback keeps it as such (sal.csv, the
``non_finite`` marker of sal.json), warns, logs nothing non-finite and does not stop the fit;
``ud`` prints the run as ``diverged`` (exit 1) and refuses a non-finite clean file (exit 2).
Every sal.csv gets its settings in sal.json; a reference or a pair of runs measured with
other settings is refused, one without sal.json is taken with a warning.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
from conftest import REPO, read_rows, run_cli, small_sal_preset
from lightning import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from tb import read_scalars

from unlearn.callbacks import SharpnessCallback
from unlearn.data import DigitsDataModule
from unlearn.errors import UnlearnError
from unlearn.models import SmallCNN
from unlearn.sharpness import SAL_COLUMNS, measured_layers
from unlearn.sharpness.checkpoint_metrics import checkpoint_report
from unlearn.sharpness.monitor import SalWarning
from unlearn.sharpness.sidecar import COMPARED
from unlearn.sharpness.ud import SalTable
from unlearn.tasks import ClassificationTask
from unlearn.ud_command import main as ud_main

SMALL = {"probe_size": 32, "probe_batch_size": 16, "steps_per_iter": 2, "iters": 2}
BATCHES = 3  # training batches per epoch


class BatchCounter(Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1


def fit(root: Path, callbacks: list[Callback], epochs: int = 2, lr: float = 0.05) -> Trainer:
    seed_everything(0)
    task = ClassificationTask(
        model=SmallCNN(10, (1, 32, 32), width=4), num_classes=10, image_shape=(1, 32, 32), lr=lr
    )
    trainer = Trainer(
        max_epochs=epochs,
        limit_train_batches=BATCHES,
        limit_val_batches=1,
        accelerator="cpu",
        logger=TensorBoardLogger(root, name="run", version=0),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(task, datamodule=DigitsDataModule(batch_size=32, augment=True))
    return trainer


def small_cnn_layers() -> list[str]:
    return measured_layers(SmallCNN(10, (1, 32, 32), width=4))


def write_table(path: Path, sal: list[list[float]], layers: list[str]) -> Path:
    """A sal.csv with the required columns: checkpoint t at epoch t, step 7 (t + 1)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SAL_COLUMNS)
        for t, values in enumerate(sal):
            for name, value in zip(layers, values, strict=True):
                writer.writerow([t, 7 * (t + 1), name, 100, value, value, 0.0, 0.0, 2.0, 0.1])
    return path


def write_settings(csv_path: Path, **changes: object) -> Path:
    """A sal.json beside ``csv_path``: the callback's defaults, with ``changes``."""
    settings = {
        "probe_size": 1024,
        "probe_batch_size": 256,
        "steps_per_iter": None,
        "eps": 0.05,
        "iters": 10,
        "lr_min": 0.1,
        "lr_max": 0.1,
        "every_n_epochs": 1,
        "layers": None,
        "seed": 0,
        **changes,
    }
    path = csv_path.with_suffix(".json")
    path.write_text(json.dumps({"format": 1, "settings": settings, "non_finite": []}))
    return path


def test_the_divergence_warning_names_the_instance_s_own_files(tmp_path: Path) -> None:
    """A second SAL instance (``name: sal_b``) writes ``sal_b.csv`` and ``sal_b.json``; its
    warning must send the user there, not to the first instance's ``sal.csv``."""
    with pytest.warns(SalWarning, match=r"SAL is nan/inf at epoch \d+") as caught:
        trainer = fit(tmp_path, [SharpnessCallback(**SMALL, name="sal_b")], epochs=2, lr=1000.0)
    diverged = [str(w.message) for w in caught if str(w.message).startswith("SAL is nan/inf")]
    assert diverged and (Path(trainer.log_dir) / "sal_b.csv").is_file()
    for message in diverged:
        assert "Written as such to sal_b.csv (and listed under non_finite in sal_b.json)" in (
            message
        ), message


def assert_sal_scalars_finite(scalars: dict[str, list[tuple[int, float]]]) -> None:
    sal_tags = [t for t in scalars if t.split("/")[0] in ("sal", "lp", "ud", "similarity")]
    for tag in sal_tags:
        assert all(math.isfinite(v) for _, v in scalars[tag]), tag


CLEAN = [[0.0, 0.0, 1.0, 1.0], [0.0, 0.2, 1.0, 1.2]]  # beta 0.55
LAYERS4 = ["block0.conv", "block1.conv", "block2.conv", "block3.conv"]


# ---------------------------------------------------------------------- diverged training
def test_diverging_fit_runs_to_the_end_and_ud_says_diverged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    epochs = 3
    counter = BatchCounter()
    with pytest.warns(SalWarning, match=r"SAL is nan/inf at epoch \d+") as caught:
        trainer = fit(
            tmp_path / "diverged", [SharpnessCallback(**SMALL), counter], epochs=epochs, lr=1000.0
        )
    # the fit went on to its last epoch: SAL did not stop (or crash) it
    assert counter.batches == epochs * BATCHES and trainer.current_epoch == epochs
    log_dir = Path(trainer.log_dir)
    rows = read_rows(log_dir / "sal.csv")
    assert sorted({int(r["epoch"]) for r in rows}) == list(range(epochs))
    bad = [r for r in rows if not math.isfinite(float(r["sal"]))]
    assert bad, "lr=1000 should make the SAL non-finite"
    assert {r["sal"] for r in bad} <= {"nan", "inf", "-inf"}  # written as such
    first = bad[0]
    # one warning per non-finite checkpoint, naming its epoch and layers
    bad_epochs = sorted({int(r["epoch"]) for r in bad})
    messages = [str(w.message) for w in caught if issubclass(w.category, SalWarning)]
    diverged = [m for m in messages if m.startswith("SAL is nan/inf")]
    assert len(diverged) == len(bad_epochs)
    assert f"epoch {first['epoch']} (step {first['step']})" in diverged[0]
    assert repr(first["layer"]) in diverged[0]
    # the marker in sal.json lists exactly those checkpoints and layers
    marker = json.loads((log_dir / "sal.json").read_text())["non_finite"]
    assert [(m["epoch"], m["step"]) for m in marker] == sorted(
        {(int(r["epoch"]), int(r["step"])) for r in bad}
    )
    assert marker[0]["layers"] == [r["layer"] for r in bad if r["epoch"] == first["epoch"]]
    # no non-finite SAL value reached TensorBoard (the training's own loss is nan, rightly),
    # and no count at a non-finite checkpoint
    scalars = read_scalars(log_dir)
    assert_sal_scalars_finite(scalars)
    bad_steps = {int(r["step"]) for r in bad}
    assert not bad_steps & {step for step, _ in scalars.get("lp/count", [])}
    assert not bad_steps & {step for step, _ in scalars.get("sal/mean", [])}

    # `ud` against a clean run measured the same way: the row says diverged, exit 1
    clean = fit(tmp_path / "clean", [SharpnessCallback(**SMALL)], epochs=epochs)
    clean_csv = Path(clean.log_dir) / "sal.csv"
    out = tmp_path / "ud.json"
    args = ["--clean", str(clean_csv), "--poisoned", str(log_dir / "sal.csv"), "--json", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        ud_main(args)
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    (row_line,) = [line for line in captured.out.splitlines() if "sal.csv" in line]
    assert "diverged" in row_line and not re.search(r"\d\.\d", row_line.split("sal.csv")[1])
    expected = f"{log_dir / 'sal.csv'}: diverged at epoch {first['epoch']} (step {first['step']})"
    assert expected in captured.err and first["layer"] in captured.err
    assert "Traceback" not in captured.err
    (written,) = json.loads(out.read_text())
    assert "ud" not in written and written["diverged"]["epoch"] == int(first["epoch"])


def test_poisoned_file_with_nan_is_diverged_never_a_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = write_table(tmp_path / "clean.csv", CLEAN, LAYERS4)
    # finite but for one layer at the second checkpoint; nan > beta would count as flat
    poisoned = write_table(
        tmp_path / "em.csv", [[0.0, 0.0, 0.0, 1.0], [0, 0, math.nan, 0]], LAYERS4
    )
    with pytest.raises(SystemExit) as exit_info:
        ud_main(["--clean", str(clean), "--poisoned", str(poisoned), str(clean)])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    em_line, clean_line = captured.out.splitlines()[1:]
    assert em_line.split()[0] == str(poisoned) and em_line.split()[5] == "diverged"
    assert clean_line.split()[5] == "1"  # the other rows are still scored
    message = f"{poisoned}: diverged at epoch 1 (step 14), layer(s) block2.conv (SAL nan)"
    assert message in captured.err
    with pytest.raises(UnlearnError, match="diverged at epoch 1"):  # the library never counts it
        from unlearn.sharpness.ud import ud

        ud(SalTable.read(clean), SalTable.read(poisoned))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_clean_file_is_one_line_exit_2(tmp_path: Path, value: str) -> None:
    clean = write_table(
        tmp_path / "clean.csv", [[0.0, 0.0, 1.0, 1.0], [0, float(value), 1, 1]], LAYERS4
    )
    poisoned = write_table(tmp_path / "em.csv", CLEAN, LAYERS4)
    result = run_cli("ud", "--clean", str(clean), "--poisoned", str(poisoned))
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(f"unlearn ud: error: {clean}: diverged at epoch 1 (step 14), layer(s) ")
    assert "block1.conv" in line and "clean reference needs finite SAL values" in line


@pytest.mark.parametrize("case", ["inf", "missing"])
def test_bad_reference_is_refused_by_the_callback_in_one_line(tmp_path: Path, case: str) -> None:
    """Before training, in one line naming the file (not a traceback of the config parser)."""
    layers = small_cnn_layers()
    reference = tmp_path / "ref.csv"
    if case == "inf":
        write_table(reference, [[1.0] * (len(layers) - 1) + [math.inf]], layers)
    preset = small_sal_preset(tmp_path, reference=str(reference), **SMALL)
    result = run_cli(
        "fit",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--config",
        str(preset),
        "--trainer.max_epochs=1",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    if case == "inf":
        assert last.startswith(f"unlearn fit: error: SharpnessCallback: {reference}: diverged at ")
        assert "epoch 0 (step 7)" in last and layers[-1] in last and "(SAL inf)" in last
    else:
        assert last == f"unlearn fit: error: {reference}: no such SAL table"
    assert not list((tmp_path / "runs").rglob("sal.csv"))  # nothing measured


def test_multitask_checkpoint_with_nan_logs_only_finite_values() -> None:
    rows = [
        {**dict.fromkeys(SAL_COLUMNS, 0.0), "epoch": 0, "step": 5, "layer": name, "numel": 10}
        | {"sal": value, "task": task}
        for task, values in (("a", [1.0, 2.0, 0.5]), ("b", [math.nan, 1.0, 3.0]))
        for name, value in zip(["encoder.x", "encoder.y", "head.z"], values, strict=True)
    ]
    report = checkpoint_report(rows, rows, {})
    assert all(math.isfinite(v) for v in report.metrics.values())
    assert report.non_finite == {"b": ["encoder.x"]}
    assert "similarity" in report.skipped and report.similarity is None
    assert "lp/b/count" in report.skipped and "sal/b/mean" in report.skipped
    assert "lp/a/count" in report.metrics and report.metrics["sal/b/encoder.y"] == 1.0


def test_no_ud_after_a_non_finite_checkpoint(tmp_path: Path) -> None:
    """UD(t) over checkpoints that include a nan one would count it as flat: left out."""

    def rows(epoch: int, values: list[float]) -> list[dict]:
        base = dict.fromkeys(SAL_COLUMNS, 0.0)
        return [
            base | {"epoch": epoch, "step": 7 * (epoch + 1), "layer": n, "numel": 100, "sal": v}
            for n, v in zip(LAYERS4, values, strict=True)
        ]

    reference = SalTable.read(write_table(tmp_path / "ref.csv", CLEAN, LAYERS4))
    first, second = rows(0, [math.nan] * 4), rows(1, [0.0, 0.2, 1.0, 1.2])
    report = checkpoint_report(second, first + second, {None: reference})
    assert "ud" not in report.metrics and "epoch 0" in report.skipped["ud"]
    assert report.metrics["lp/count"] == 2.0 and report.metrics["lp/ratio"] == 1.0
    assert report.non_finite == {}


# ---------------------------------------------------------------------- ratios
def test_ratio_against_a_reference_that_counts_no_layer_is_never_logged(tmp_path: Path) -> None:
    layers = small_cnn_layers()
    # every clean SAL equal: beta is that value, no clean layer is above it, so UD(t) and
    # lp/ratio are x/0 at every checkpoint
    reference = write_table(tmp_path / "ref.csv", [[0.2] * len(layers)] * 2, layers)
    with pytest.warns(SalWarning) as caught:
        trainer = fit(
            tmp_path / "run", [SharpnessCallback(reference=str(reference), **SMALL)], epochs=2
        )
    scalars = read_scalars(Path(trainer.log_dir))
    assert "lp/ratio" not in scalars and "ud" not in scalars
    assert [step for step, _ in scalars["lp/count"]] == [BATCHES, 2 * BATCHES]
    assert_sal_scalars_finite(scalars)
    messages = [str(w.message) for w in caught if issubclass(w.category, SalWarning)]
    # said once each, though both checkpoints leave them out
    assert sum(m.startswith("lp/ratio not logged") for m in messages) == 1
    assert sum(m.startswith("ud not logged") for m in messages) == 1
    # the reference has no sal.json: said, not refused
    assert any("ref.json beside it: cannot check" in m for m in messages)


# ---------------------------------------------------------------------- settings
def test_sal_json_records_the_settings_and_a_finite_run_has_no_marker(tmp_path: Path) -> None:
    callback = SharpnessCallback(every_n_epochs=1, eps=0.07, layers="features", seed=3, **SMALL)
    trainer = fit(tmp_path, [callback], epochs=1)
    sidecar = json.loads((Path(trainer.log_dir) / "sal.json").read_text())
    assert sidecar["non_finite"] == []
    given = {**SMALL, "eps": 0.07, "every_n_epochs": 1, "layers": "features", "seed": 3}
    given |= {"lr_min": 0.1, "lr_max": 0.1}  # the defaults
    assert set(COMPARED) <= set(sidecar["settings"])
    assert {k: sidecar["settings"][k] for k in given} == given


def test_reference_measured_differently_is_refused_by_the_callback(tmp_path: Path) -> None:
    clean = fit(tmp_path / "clean", [SharpnessCallback(**SMALL)], epochs=1)
    reference = Path(clean.log_dir) / "sal.csv"
    other = {**SMALL, "iters": 3, "eps": 0.1}
    message = (
        f"this run's settings and {reference.with_suffix('.json')} record different SAL "
        f"settings: eps 0.1 vs 0.05, iters 3 vs 2"
    )
    with pytest.raises(UnlearnError, match=re.escape(message)):
        fit(tmp_path / "run", [SharpnessCallback(reference=str(reference), **other)], epochs=1)


def test_ud_refuses_runs_measured_differently(tmp_path: Path) -> None:
    clean = write_table(tmp_path / "clean.csv", CLEAN, LAYERS4)
    em = write_table(tmp_path / "em.csv", CLEAN, LAYERS4)
    write_settings(clean)
    write_settings(em, probe_size=128, lr_max=0.2)
    result = run_cli("ud", "--clean", str(clean), "--poisoned", str(em))
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line == (
        f"unlearn ud: error: {tmp_path / 'em.json'} and {tmp_path / 'clean.json'} record "
        "different SAL settings: probe_size 128 vs 1024, lr_max 0.2 vs 0.1; UD compares runs "
        "measured the same way"
    )


def test_ud_warns_where_settings_cannot_be_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = write_table(tmp_path / "clean.csv", CLEAN, LAYERS4)
    em = write_table(tmp_path / "em.csv", CLEAN, LAYERS4)
    write_settings(clean)
    (row,) = ud_main(["--clean", str(clean), "--poisoned", str(em)])
    assert row["ud"] == 1.0
    err = capsys.readouterr().err
    assert f"unlearn ud: warning: {em} has no em.json beside it: cannot check" in err
    write_settings(em)  # now recorded and equal: no warning
    ud_main(["--clean", str(clean), "--poisoned", str(em)])
    assert "warning" not in capsys.readouterr().err


def test_unreadable_sal_json_names_the_file(tmp_path: Path) -> None:
    clean = write_table(tmp_path / "clean.csv", CLEAN, LAYERS4)
    (tmp_path / "clean.json").write_text("{not json")
    result = run_cli("ud", "--clean", str(clean), "--poisoned", str(clean))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'clean.json'}: unreadable SAL settings" in result.stderr


# ---------------------------------------------------------------------- benchmark report
def test_benchmark_report_shows_a_diverged_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from unlearn.benchmark.grid import BenchmarkSpec, Layout
    from unlearn.benchmark.report import write_report

    monkeypatch.chdir(REPO)  # the spec's config paths are relative to the repository
    spec = BenchmarkSpec(
        name="faults", train_configs={"digits": "configs/quickstart.yaml"}, methods=["clean", "em"]
    )
    layout = Layout(tmp_path / "bench", spec)
    for cell in layout.cells():
        run = layout.run_dir(cell)
        run.mkdir(parents=True)
        metrics = {"test": {"test/acc": 0.9}, "validation": {"val/acc": 0.9}, "epochs": 2}
        (run / "metrics.json").write_text(json.dumps(metrics))
        values = CLEAN if cell.method == "clean" else [[0.0, 0.0, 0.0, 1.0], [0, 0, math.inf, 0]]
        write_table(layout.sal_file(cell), values, LAYERS4)
    report = write_report(layout)
    results = {r["method"]: r for r in read_rows(layout.root / "results.csv")}
    assert results["em"]["ud"] == "diverged" and "diverged at epoch 1" in results["em"]["error"]
    assert results["clean"]["ud"] == "1"
    text = report.read_text()
    assert "(1 diverged)" in text and "## Diverged runs" in text
