"""Clean test accuracy and training cost of each defense x poison on the built-in digits.

Runs ``configs/digits/defense_<name>.yaml`` (the quickstart model, 15 epochs) on each poison
under ``poisons/digits/`` (and on clean data with ``clean``), through the same LightningCLI
as ``python -m unlearn fit``. Appends one CSV row per run (so an interrupted sweep resumes)
and prints the two Markdown tables of ``docs/defenses.md``.

    OMP_NUM_THREADS=1 python benchmarks/defenses_digits.py --poisons em clean \\
        --out runs/bench/defenses_digits.csv

``train_step_s`` sums the wall time of the training steps of a run (defense, forward,
backward, optimizer; data loading and validation excluded). On a shared machine that sum is
noisy, so ``--cost`` measures the cost table separately: the median time of one training step
on the same batch of 64 digits, defenses interleaved round-robin, relative to ``none``:

    OMP_NUM_THREADS=1 python benchmarks/defenses_digits.py --cost 15
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import time
from pathlib import Path

import torch
from lightning import Callback

from unlearn.cli import UnlearnCLI, run_lightning
from unlearn.data import DigitsDataModule
from unlearn.defenses import apply_defenses
from unlearn.io import append_csv_row

REPO = Path(__file__).resolve().parents[1]
DEFENSES = [
    "none", "jpeg", "grayscale", "ueraser", "ueraser_lite", "at",
    "bdr", "blur", "cutout", "cutmix", "mixup",
]  # fmt: skip
FIELDS = ["poison", "defense", "seed", "epochs", "test_acc", "train_step_s", "fit_s"]


class StepTimer(Callback):
    """Sums the wall time of training steps (``on_train_batch_start`` to ``..._end``)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0

    def on_train_batch_start(self, *args) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.total += time.perf_counter() - self._start


def build(defense: str, extra: list[str]) -> UnlearnCLI:
    """The task and data module of ``configs/digits/defense_<defense>.yaml`` (not run)."""
    config = REPO / "configs" / "digits" / f"defense_{defense}.yaml"
    return run_lightning(["--config", str(config), *extra], run=False)


def step_cost(defenses: list[str], rounds: int) -> dict[str, float]:
    """Median seconds of one training step (defenses + forward + backward + SGD) per defense."""
    data = DigitsDataModule(batch_size=64, augment=False)
    batch = [data.train_dataset()[i] for i in range(64)]
    images = torch.stack([b["image"] for b in batch])
    labels = torch.stack([torch.as_tensor(b["label"]) for b in batch])
    tasks = {d: build(d, ["--data.init_args.poison", "null"]).model for d in defenses}
    times: dict[str, list[float]] = {d: [] for d in defenses}
    for round_ in range(rounds + 1):
        for name, task in tasks.items():
            optimizer = torch.optim.SGD(task.parameters(), lr=0.01)
            start = time.perf_counter()
            loss, _, _ = apply_defenses(
                task.defenses, task.model, images, labels, task.per_sample_loss, 0, 10
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if round_ > 0:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def run(
    poison: str, defense: str, seed: int, epochs: int | None, root: Path, extra: list[str], tag: str
) -> dict:
    poison_arg = "null" if poison == "clean" else str(REPO / "poisons" / "digits" / poison)
    args = [
        "--data.init_args.poison", poison_arg,
        "--seed_everything", str(seed),
        "--trainer.accelerator", "cpu",
        "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(root / f"{poison}_{defense}_{seed}"),
    ]  # fmt: skip
    if epochs is not None:
        args += ["--trainer.max_epochs", str(epochs)]
    cli = build(defense, args + extra)
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_s = time.perf_counter() - start
    (result,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    return {
        "poison": poison + tag,
        "defense": defense,
        "seed": seed,
        "epochs": cli.trainer.max_epochs,
        "test_acc": round(100 * result["test/acc"], 2),
        "train_step_s": round(timer.total, 2),
        "fit_s": round(fit_s, 2),
    }


def tables(rows: list[dict]) -> str:
    poisons = list(dict.fromkeys(r["poison"] for r in rows))
    defenses = [d for d in DEFENSES if any(r["defense"] == d for r in rows)]

    def cell(poison: str, defense: str, key: str) -> list[float]:
        return [float(r[key]) for r in rows if r["poison"] == poison and r["defense"] == defense]

    def mean(values: list[float]) -> str:
        return f"{sum(values) / len(values):.1f}" if values else "-"

    out = ["| poison | " + " | ".join(defenses) + " |", "|---" * (len(defenses) + 1) + "|"]
    for poison in poisons:
        out.append(
            f"| {poison} | "
            + " | ".join(mean(cell(poison, d, "test_acc")) for d in defenses)
            + " |"
        )
    out += ["", "| poison | " + " | ".join(defenses) + " |", "|---" * (len(defenses) + 1) + "|"]
    for poison in poisons:
        base = cell(poison, "none", "train_step_s")
        ratios = []
        for d in defenses:
            times = cell(poison, d, "train_step_s")
            ratios.append(f"{sum(times) / sum(base):.1f}x" if times and base else "-")
        out.append(f"| {poison} | " + " | ".join(ratios) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--poisons", nargs="+", default=["em"], help="names under poisons/digits, or clean"
    )
    parser.add_argument("--defenses", nargs="+", default=DEFENSES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="override max_epochs")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "defenses_digits.csv")
    parser.add_argument("--extra", default="", help="more fit arguments, e.g. '--x.y 1'")
    parser.add_argument("--tag", default="", help="appended to the poison's name in the table")
    parser.add_argument("--cost", type=int, default=0, help="rounds of the step-cost table")
    parser.add_argument("--print-only", action="store_true", help="print the tables of --out")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.cost:
        cost = step_cost(args.defenses, args.cost)
        print("| | " + " | ".join(cost) + " |\n" + "|---" * (len(cost) + 1) + "|")
        print("| ms per step | " + " | ".join(f"{1e3 * t:.0f}" for t in cost.values()) + " |")
        base = cost.get("none")
        if base:
            print("| vs none | " + " | ".join(f"{t / base:.1f}x" for t in cost.values()) + " |")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader(args.out.open())) if args.out.exists() else []
    done = {(r["poison"], r["defense"], int(r["seed"])) for r in rows}
    for poison in [] if args.print_only else args.poisons:
        for defense in args.defenses:
            for seed in args.seeds:
                if (poison + args.tag, defense, seed) in done:
                    continue
                extra = shlex.split(args.extra)
                row = run(
                    poison, defense, seed, args.epochs, args.out.parent / "runs", extra, args.tag
                )
                print(row, flush=True)
                append_csv_row(args.out, FIELDS, row)
                rows.append({k: str(v) for k, v in row.items()})
    print(tables(rows))


if __name__ == "__main__":
    main()
