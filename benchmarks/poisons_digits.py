"""Generation time of each poison and the clean test accuracy of the quickstart model on it.

For each name, makes ``poisons/digits/<name>`` with ``configs/digits/poison_<name>.yaml``
(unless it exists; its ``meta.json`` records the generation time), then trains
``configs/digits/<name>.yaml`` (``clean``: ``configs/quickstart.yaml``) through the same
LightningCLI as ``python -m unlearn fit`` and tests on the clean test split. Appends one CSV
row per run (an interrupted sweep resumes) and prints the table of ``docs/poisons.md``.

    OMP_NUM_THREADS=1 python benchmarks/poisons_digits.py \\
        --names clean random em lsp --out runs/bench/poisons_digits.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import torch

from unlearn.cli import run_lightning
from unlearn.io import append_csv_row
from unlearn.poisons.command import main as poison_main

REPO = Path(__file__).resolve().parents[1]
NAMES = [
    "clean", "random", "random_classwise", "em", "em_classwise",
    "rem", "tap", "lsp", "ops", "ar",
]  # fmt: skip
FIELDS = ["name", "method", "seed", "epochs", "test_acc", "generation_s", "fit_s"]


def make_poison(name: str, stores: Path) -> dict:
    """Make ``{stores}/<name>`` if missing; return its meta."""
    store = stores / name
    if not (store / "poison.pt").exists():
        config = REPO / "configs" / "digits" / f"poison_{name}.yaml"
        poison_main(["--config", str(config), "--output_dir", str(store), "--no_progress"])
    return json.loads((store / "meta.json").read_text())


def train(name: str, seed: int, root: Path, poison: Path | None) -> tuple[float, float, int]:
    """Clean test accuracy (%), fit seconds and epochs of ``configs/digits/<name>.yaml``.

    ``name`` ``clean`` trains ``configs/quickstart.yaml``; ``poison`` replaces the config's.
    """
    config = REPO / "configs" / ("quickstart.yaml" if name == "clean" else f"digits/{name}.yaml")
    args = [
        "--config", str(config),
        "--seed_everything", str(seed),
        "--trainer.accelerator", "cpu",
        "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(root / f"{name}_{seed}"),
    ]  # fmt: skip
    if poison is not None:
        args += ["--data.init_args.poison", str(poison)]
    cli = run_lightning(args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_s = time.perf_counter() - start
    (result,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    return round(100 * result["test/acc"], 2), round(fit_s, 1), cli.trainer.max_epochs


def table(rows: list[dict]) -> str:
    """The Markdown table: mean (and range over seeds) of the test accuracy per poison."""
    out = [
        "| poison | method | clean test acc. % | generation s |",
        "|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["name"] for r in rows):
        mine = [r for r in rows if r["name"] == name]
        accs = [float(r["test_acc"]) for r in mine]
        spread = f" ({min(accs):.1f}-{max(accs):.1f})" if len(accs) > 1 else ""
        gen = mine[0]["generation_s"]
        gen_text = "-" if gen in ("", "None") else f"{float(gen):.1f}"
        out.append(
            f"| {name} | {mine[0]['method']} | {sum(accs) / len(accs):.1f}{spread} | {gen_text} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="+", default=NAMES, help="poisons, or clean")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "poisons_digits.csv")
    parser.add_argument(
        "--stores", type=Path, default=REPO / "poisons" / "digits", help="where the poisons are"
    )
    parser.add_argument("--print-only", action="store_true", help="print the table of --out")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader(args.out.open())) if args.out.exists() else []
    done = {(r["name"], int(r["seed"])) for r in rows}
    for name in [] if args.print_only else args.names:
        meta = (
            {"method": "-", "generation_seconds": None}
            if name == "clean"
            else make_poison(name, args.stores)
        )
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            poison = None if name == "clean" else args.stores / name
            acc, fit_s, epochs = train(name, seed, args.out.parent / "runs", poison)
            row = {
                "name": name,
                "method": meta["method"],
                "seed": seed,
                "epochs": epochs,
                "test_acc": acc,
                "generation_s": meta["generation_seconds"],
                "fit_s": fit_s,
            }
            print(row, flush=True)
            append_csv_row(args.out, FIELDS, row)
            rows.append({k: str(v) for k, v in row.items()})
    print(table(rows))


if __name__ == "__main__":
    main()
