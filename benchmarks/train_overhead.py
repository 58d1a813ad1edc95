"""Lightning's training overhead: images/s of `fit` against a plain PyTorch loop.

Both train the same model (fresh copy, same initial weights) on the same data loader
(same data module, augmentation on) with the same batch size, optimizer and loss, for the
same number of epochs; validation, checkpointing and logging to disk are off in both, so the
difference is what the Trainer and ClassificationTask add per step (hooks, metric updates,
progress bar). Runs alternate between the two and the medians of ``--repeats`` are compared.

    python benchmarks/train_overhead.py [--model small_cnn] [--epochs 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from lightning import Trainer
from torch import nn

from unlearn.data import DigitsDataModule
from unlearn.tasks import ClassificationTask


def plain_loop(model: nn.Module, loader: torch.utils.data.DataLoader, epochs: int) -> float:
    """Train with a hand-written loop; return images per second."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    model.train()
    seen = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            seen += batch["image"].shape[0]
    return seen / (time.perf_counter() - start)


def lightning_fit(task: ClassificationTask, dm: DigitsDataModule, epochs: int, bar: bool) -> float:
    """Train with ``Trainer.fit``; return images per second."""
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=bar,
        enable_model_summary=False,
    )
    n = len(dm.train_dataset()) * epochs
    start = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    dm = DigitsDataModule(batch_size=args.batch_size)
    dm.setup()
    torch.manual_seed(0)
    template = ClassificationTask(args.model, dm.num_classes, dm.image_shape, lr=0.05)
    # constant learning rate in both: the plain loop has no scheduler
    template.configure_optimizers = lambda: torch.optim.SGD(  # type: ignore[method-assign]
        template.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4
    )
    results: dict[str, list[float]] = {"plain": [], "fit": [], "fit+bar": []}
    plain_loop(copy.deepcopy(template.model), dm.train_dataloader(), 1)  # warm-up
    for _ in range(args.repeats):
        results["plain"].append(
            plain_loop(copy.deepcopy(template.model), dm.train_dataloader(), args.epochs)
        )
        for name, bar in (("fit", False), ("fit+bar", True)):
            task = copy.deepcopy(template)
            task.configure_optimizers = lambda t=task: torch.optim.SGD(  # type: ignore[method-assign]
                t.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4
            )
            results[name].append(lightning_fit(task, dm, args.epochs, bar))
    plain = statistics.median(results["plain"])
    print(
        f"model={args.model} batch={args.batch_size} epochs={args.epochs} "
        f"repeats={args.repeats} threads={torch.get_num_threads()}"
    )
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:>8}: {median:8.1f} images/s (median)  ratio to plain: {median / plain:.3f}")


if __name__ == "__main__":
    main()
