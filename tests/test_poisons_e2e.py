"""End to end on the built-in digits: EM and LSP poisons make the quickstart model fail.

Runs the repository's configs as ``python -m unlearn poison`` and ``fit`` would: the clean
quickstart run, then class-wise EM (the cheaper EM config on digits; sample-wise EM reaches a
similar accuracy, see docs/poisons.md) and LSP, each generated and trained on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from unlearn.cli import run_lightning
from unlearn.poisons.command import main as poison_main


def clean_test_accuracy(config: str, root: Path, poison: Path | None) -> float:
    """Train ``configs/<config>`` as ``python -m unlearn fit`` would; clean test accuracy %."""
    args = [
        "--config", str(REPO / "configs" / config),
        "--trainer.accelerator", "cpu",
        "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(root),
        "--data.init_args.poison", str(poison) if poison is not None else "null",
    ]  # fmt: skip
    cli = run_lightning(args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (result,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    return 100 * result["test/acc"]


@pytest.mark.slow
def test_em_and_lsp_poisons_make_digits_unlearnable(tmp_path: Path) -> None:
    clean = clean_test_accuracy("quickstart.yaml", tmp_path / "clean", None)
    assert clean > 90
    for name in ("em_classwise", "lsp"):
        store = tmp_path / "poisons" / name
        config = REPO / "configs" / "digits" / f"poison_{name}.yaml"
        poison_main(["--config", str(config), "--output_dir", str(store), "--no_progress"])
        poisoned = clean_test_accuracy(f"digits/{name}.yaml", tmp_path / name, store)
        assert poisoned <= clean - 30, f"{name}: {poisoned:.1f}% vs clean {clean:.1f}%"
