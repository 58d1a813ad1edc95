"""Cross-task learnability on the built-in scenes: do UEs made against scene labels stop the
other tasks (segmentation, depth, normals, keypoints) from being learnt?

For each condition (clean, and the poisons random / EM / LSP / OPS / AR, all made against the
scene-classification labels with ``unlearn.poisons`` at 32 x 32 and written as rgb PNGs in the
Taskonomy layout) and each seed, a multi-task model (small CNN encoder, five heads) is trained
on the built-in scenes and tested on the clean test building. With seed 0 the SAL callback
(``unlearn.callbacks.SharpnessCallback``) measures every task's layers (shared encoder + its
head, loss = that task's loss) at two checkpoints and writes ``{condition}_seed0_sal.csv``
(with a ``task`` column), giving a per-task UD against the clean run and the task x task
cosine similarity of the SAL vectors over the shared layers.

    python benchmarks/taskonomy_cross_task.py run clean random em   # one process
    python benchmarks/taskonomy_cross_task.py run lsp ops ar        # another, in parallel
    python benchmarks/taskonomy_cross_task.py single clean lsp ops  # scene task alone
    python benchmarks/taskonomy_cross_task.py run clean em16 --seeds 10  # seeds 0..9
    python benchmarks/taskonomy_cross_task.py run clean em16 --size 64   # 64 px (native)
    python benchmarks/taskonomy_cross_task.py report                # prints the tables

Results: runs/taskonomy_cross_task/{condition}_seed{s}.json (resumable: finished runs are
skipped).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from lightning import Trainer, seed_everything

from unlearn.callbacks import SharpnessCallback
from unlearn.data.synthetic_scenes import ensure_synthetic_scenes
from unlearn.data.taskonomy import TaskonomyDataModule
from unlearn.poisons import AR, EM, LSP, OPS, RandomNoise
from unlearn.poisons.command import generate_poison
from unlearn.poisons.taskonomy_export import export_taskonomy_poison
from unlearn.sharpness import SalTable, task_similarity
from unlearn.sharpness.ud import ud
from unlearn.tasks.multitask import MultiTaskTask

torch.set_num_threads(1)  # on a shared, overloaded CPU one thread is many times faster

ROOT = Path("data/scenes")
POISONS = Path("poisons/scenes")
OUT = Path("runs/taskonomy_cross_task")
SIZE, EPOCHS, SEEDS = 32, 15, (0, 1, 2)
DOMAINS = ["rgb", "class_scene", "segment_semantic", "depth_euclidean", "normal", "keypoints2d"]
METRICS = {
    "class_scene/acc": "scene acc",
    "segment_semantic/miou": "seg mIoU",
    "segment_semantic/pixel_acc": "seg pixel acc",
    "depth_euclidean/absrel": "depth abs-rel",
    "depth_euclidean/l1": "depth L1 (m)",
    "normal/angle": "normal angle (deg)",
    "keypoints2d/l1": "keypoints L1",
}


def _em(eps: float) -> EM:
    """EM against the scene labels with a small-CNN surrogate (step eps / 5)."""
    return EM(
        eps=eps,
        model="small_cnn",
        train_steps=10,
        pgd_steps=5,
        step_size=eps / 5,
        max_rounds=20,
        batch_size=32,
    )


METHODS = {
    "random": lambda: RandomNoise(eps=8 / 255),
    "em": lambda: _em(8 / 255),
    # the budget the digits need (docs/poisons.md): 8/255 barely bites at 32 x 32
    "em16": lambda: _em(16 / 255),
    "lsp": lambda: LSP(eps_per_pixel=6 / 255, grid=4),
    "ops": lambda: OPS(pixels=1),
    "ar": lambda: AR(eps=1.0),
}


def data_module(rgb_root: Path | None = None) -> TaskonomyDataModule:
    """The built-in scenes at 32 x 32, rgb optionally from a poisoned copy."""
    return TaskonomyDataModule(
        root=ROOT,
        synthetic=True,
        domains=DOMAINS,
        image_size=SIZE,
        batch_size=32,
        crop_padding=2,
        cache=True,
        rgb_root=rgb_root,
    )


def poisoned_root(method: str) -> Path:
    """Make (once) the poison against the scene labels and its rgb PNG copy."""
    out = Path(f"data/scenes_{method}{_suffix()}")
    if not out.is_dir():
        store = POISONS / f"{method}{_suffix()}"
        if not (store / "poison.pt").is_file():
            generate_poison(
                data_module(), METHODS[method](), store, seed=0, device="cpu", overwrite=True
            )
        export_taskonomy_poison(store, out, data_module(), overwrite=True)
    return out


def quiet_trainer(callbacks: list) -> Trainer:
    """CPU, ``EPOCHS`` epochs, validation only at the end, no logger, checkpoints or bars."""
    return Trainer(
        accelerator="cpu",
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        check_val_every_n_epoch=EPOCHS,
    )


def sal_callback(condition: str) -> SharpnessCallback:
    """Per-task SAL after epochs 8 and 15 (the end): 64 probe samples in one batch, 3 iters."""
    return SharpnessCallback(
        every_n_epochs=8,
        probe_size=64,
        probe_batch_size=None,
        iters=3,
        dirpath=OUT,
        filename=f"{condition}_seed0_sal.csv",
    )


def run(condition: str, seed: int) -> None:
    """Train and test one condition with one seed; write its JSON."""
    path = OUT / f"{condition}_seed{seed}.json"
    if path.is_file():
        return
    ensure_synthetic_scenes(ROOT)
    rgb_root = None if condition == "clean" else poisoned_root(condition)
    seed_everything(seed, workers=True)
    data = data_module(rgb_root)
    model = MultiTaskTask(
        num_classes=data.num_classes, image_shape=data.image_shape, width=8, head_width=8, lr=0.05
    )
    # per-task SAL on seed 0 at 32 px only (at 64 px it would cost ~4x the training)
    callbacks = [sal_callback(condition)] if seed == 0 and SIZE == 32 else []
    trainer = quiet_trainer(callbacks)
    started = time.perf_counter()
    trainer.fit(model, datamodule=data)
    train_metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")
    }
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    result = {
        "condition": condition,
        "seed": seed,
        "epochs": EPOCHS,
        "image_size": SIZE,
        "seconds": round(time.perf_counter() - started, 1),
        "test": {k: float(v) for k, v in test.items()},
        "train": train_metrics,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"{condition} seed {seed}: {result['seconds']} s, scene acc "
        f"{result['test']['test/class_scene/acc']:.3f}, seg mIoU "
        f"{result['test']['test/segment_semantic/miou']:.3f}",
        flush=True,
    )


def run_single(condition: str, seed: int) -> None:
    """Scene classification alone (ClassificationTask, small CNN) on the same data."""
    from unlearn.tasks import ClassificationTask

    path = OUT / f"single_{condition}_seed{seed}.json"
    if path.is_file():
        return
    rgb_root = None if condition == "clean" else poisoned_root(condition)
    seed_everything(seed, workers=True)
    data = TaskonomyDataModule(
        root=ROOT,
        synthetic=True,
        domains=["rgb", "class_scene"],
        image_size=SIZE,
        batch_size=32,
        crop_padding=2,
        cache=True,
        rgb_root=rgb_root,
    )
    model = ClassificationTask(
        model="small_cnn", num_classes=data.num_classes, image_shape=data.image_shape, lr=0.05
    )
    trainer = quiet_trainer([])
    trainer.fit(model, datamodule=data)
    train_acc = float(trainer.callback_metrics["train/acc"])
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    result = {
        "condition": condition,
        "seed": seed,
        "train_acc": train_acc,
        "test_acc": float(test["test/acc"]),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result) + "\n")
    print(
        f"single-task {condition} seed {seed}: train acc {train_acc:.3f}, "
        f"test acc {result['test_acc']:.3f}",
        flush=True,
    )


def constant_baseline() -> dict[str, float]:
    """Test metrics of predicting constants learnt from the clean training set."""
    data = data_module()
    data.setup("fit")
    train = [data.probe_dataset()[i] for i in range(len(data.probe_dataset()))]
    test = data.test_dataset()
    batch = {k: torch.stack([test[i][k] for i in range(len(test))]) for k in train[0]}
    task = MultiTaskTask(num_classes=data.num_classes, image_shape=data.image_shape)
    depth = torch.cat([t["depth_euclidean"][t["depth_euclidean_mask"]] for t in train]).median()
    normal = torch.stack([t["normal"].mean((1, 2)) for t in train]).mean(0)
    keypoints = torch.stack([t["keypoints2d"].mean() for t in train]).mean()
    n, size = len(test), batch["rgb"].shape[-1]
    majority = torch.stack([t["class_scene"] for t in train]).mode().values
    outputs = {
        "class_scene": torch.nn.functional.one_hot(majority, data.num_classes)
        .float()
        .expand(n, -1),
        "segment_semantic": torch.nn.functional.one_hot(torch.tensor(1), 18)
        .float()
        .view(1, 18, 1, 1)
        .expand(n, 18, size, size),
        "depth_euclidean": depth.expand(n, 1, size, size),
        "normal": normal.view(1, 3, 1, 1).expand(n, 3, size, size),
        "keypoints2d": keypoints.expand(n, 1, size, size),
    }
    out = {}
    for name, spec in task.specs.items():
        metrics = spec.metrics()
        spec.update(metrics, outputs[name], spec.targets(batch))
        out.update({f"{name}/{k}": float(v) for k, v in metrics.compute().items()})
    return out


def _std(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _metric_table(runs: dict[str, list[dict]]) -> None:
    """One Markdown row per condition: each metric's mean +- sample std over its runs."""
    print("| condition | " + " | ".join(METRICS.values()) + " | seeds |")
    print("|---" * (len(METRICS) + 2) + "|")
    for c, rows in runs.items():
        cells = []
        for key in METRICS:
            values = np.array([r["test"][f"test/{key}"] for r in rows])
            cells.append(f"{values.mean():.3f} ± {_std(values):.3f}")
        print(f"| {c} | " + " | ".join(cells) + f" | {len(rows)} |")


def report() -> None:
    """Print the metric table (mean +- std over seeds) and the per-task UD table."""
    results = {}
    single: dict[str, list[dict]] = {}
    for path in sorted(OUT.glob("single_*_seed*.json")):
        r = json.loads(path.read_text())
        single.setdefault(r["condition"], []).append(r)
    if single:
        print("| scene task alone | train acc | test acc | seeds |\n|---|---|---|---|")
        for c in [c for c in ("clean", *METHODS) if c in single]:
            tr = np.array([r["train_acc"] for r in single[c]])
            te = np.array([r["test_acc"] for r in single[c]])
            print(
                f"| {c} | {tr.mean():.3f} ± {_std(tr):.3f} | {te.mean():.3f} ± {_std(te):.3f} "
                f"| {len(te)} |"
            )
        print()
    for path in sorted(OUT.glob("*_seed*.json")):
        if path.name.startswith("single_"):
            continue
        r = json.loads(path.read_text())
        results.setdefault(r["condition"], {})[r["seed"]] = r
    order = [c for c in ("clean", *METHODS) if c in results]
    print("Seeds 0, 1, 2 of every condition:\n")
    _metric_table({c: [results[c][s] for s in SEEDS if s in results[c]] for c in order})
    more = [c for c in order if len(results[c]) > len(SEEDS)]
    if more:
        print("\nAll seeds of the conditions run with more:\n")
        _metric_table({c: list(results[c].values()) for c in more})
    base = constant_baseline()
    cells = [f"{base[key]:.3f}" for key in METRICS]
    print("| constant predictor (no learning) | " + " | ".join(cells) + " | - |")
    if "clean" in results:
        from scipy.stats import ttest_ind

        clean_acc = [r["test"]["test/class_scene/acc"] for r in results["clean"].values()]
        print("\n| condition | scene acc - clean | Welch t | p (two-sided) | seeds |")
        print("|---|---|---|---|---|")
        for c in order[1:]:
            acc = [r["test"]["test/class_scene/acc"] for r in results[c].values()]
            test = ttest_ind(acc, clean_acc, equal_var=False)
            print(
                f"| {c} | {np.mean(acc) - np.mean(clean_acc):+.3f} | {test.statistic:+.2f} | "
                f"{test.pvalue:.3f} | {len(acc)} vs {len(clean_acc)} |"
            )
    clean_csv = OUT / "clean_seed0_sal.csv"
    if not clean_csv.is_file():
        return
    clean = SalTable.read_tasks(clean_csv)
    tasks = list(clean)
    print("\n| condition | " + " | ".join(f"UD {t}" for t in tasks) + " |")
    print("|---" * (len(tasks) + 1) + "|")
    tables = {
        c: SalTable.read_tasks(OUT / f"{c}_seed0_sal.csv")
        for c in order
        if (OUT / f"{c}_seed0_sal.csv").is_file()
    }
    for c, per_task in tables.items():
        cells = []
        for t in tasks:
            value = ud(clean[t], per_task[t])["ud"]
            cells.append("nan" if math.isnan(value) else f"{value:.2f}")
        print(f"| {c} | " + " | ".join(cells) + " |")
    for c, per_task in tables.items():
        last = {
            t: dict(zip(table.layers, table.sal[-1], strict=True)) for t, table in per_task.items()
        }
        names, _, matrix = task_similarity(last)
        short = [t.split("_")[0][:6] for t in names]
        print(f"\nSAL cosine similarity over shared layers, {c} (last checkpoint):")
        print("| | " + " | ".join(short) + " |\n" + "|---" * (len(short) + 1) + "|")
        for name, row in zip(short, matrix.tolist(), strict=True):
            print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")


def _suffix() -> str:
    """Names of the data, poisons and results at another size than 32 px end in ``_SIZE``."""
    return "" if SIZE == 32 else f"_{SIZE}"


def _size(argv: list[str]) -> list[str]:
    """Split ``--size N`` off the arguments and switch the data, poisons and results to it."""
    global OUT, SIZE
    if "--size" in argv:
        at = argv.index("--size")
        SIZE = int(argv[at + 1])
        OUT = Path(f"runs/taskonomy_cross_task{_suffix()}")
        argv = argv[:at] + argv[at + 2 :]
    return argv


def _seeds(argv: list[str]) -> tuple[list[str], tuple[int, ...]]:
    """Split ``--seeds N`` (seeds 0..N-1; default 0, 1, 2) off the conditions."""
    if "--seeds" not in argv:
        return argv, SEEDS
    at = argv.index("--seeds")
    return argv[:at] + argv[at + 2 :], tuple(range(int(argv[at + 1])))


def main(argv: list[str]) -> None:
    """``run|single CONDITION... [--seeds N] [--size PX]`` or ``report [--size PX]``."""
    argv = _size(argv)
    if argv[:1] == ["report"]:
        report()
        return
    conditions, seeds = _seeds(argv[1:])
    if argv[:1] == ["single"]:
        for condition in conditions or ["clean", *METHODS]:
            for seed in seeds:
                run_single(condition, seed)
        return
    if argv[:1] != ["run"]:
        raise SystemExit(__doc__)
    for condition in conditions or ["clean", *METHODS]:
        for seed in seeds:
            run(condition, seed)


if __name__ == "__main__":
    main(sys.argv[1:])
