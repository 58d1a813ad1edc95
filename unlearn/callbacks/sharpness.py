"""SAL at checkpoints during training, with UD against a clean reference, in TensorBoard.

Add it with the preset ``callbacks/sal.yaml`` (a second ``--config``) or in a config's
``trainer.callbacks``. At the end of every ``every_n_epochs``-th training epoch (after the
last batch, before validation and checkpointing) and at the end of training it computes
the SAL of every measured layer of ``pl_module.model`` (:mod:`unlearn.sharpness`) on a probe
set fixed for the run, then

- appends the rows to ``sal.csv`` in the run's log directory (the whole file is rewritten
  atomically from the callback's history, which is also in its ``state_dict``, so a run
  resumed from a checkpoint continues the file without duplicates or gaps);
- logs ``sal/<layer>``, ``sal/mean``, ``lp/count`` and, with a ``reference``, ``ud`` and
  ``lp/ratio`` to every logger, and to TensorBoard a layers x checkpoints heatmap
  (``sal/heatmap``) and a histogram (``sal/histogram``).

Under DDP the layers are split across the processes by cost (:mod:`unlearn.sharpness.shard`),
the results gathered, and only rank zero logs and writes. The computation uses
``pl_module.model`` directly (not the DDP wrapper, so no gradient all-reduce fires), leaves
the model, its gradients and the random streams as they were, and so does not change the
training.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from unlearn.sharpness import (
    SAL_COLUMNS,
    SALSettings,
    SalTable,
    compute_sal,
    first_order_sal,
    measured_layers,
    spearman,
    two_means_threshold,
)
from unlearn.sharpness.shard import layer_costs, split_layers
from unlearn.sharpness.ud import beta as clean_beta
from unlearn.sharpness.ud import lp_count, ratio

log = logging.getLogger(__name__)

#: Columns of the callback's ``sal.csv``: the required ones, then extras.
CSV_COLUMNS: tuple[str, ...] = (*SAL_COLUMNS, "acc0", "acc_rise", "acc_drop", "cached")


class SharpnessCallback(Callback):
    """Compute per-layer SAL at checkpoints; log SAL, #LP and UD; write ``sal.csv``.

    Args:
        every_n_epochs: Measure after every n-th training epoch (and always after the last
            one and at the end of training).
        probe_size: Number of training samples in the probe set (all where fewer), drawn
            once by ``seed`` from the data module's ``probe_dataset()`` (training images as
            the model sees them, poisoned in a poisoned run, without augmentation).
        probe_batch_size: SGD batch size of the SAL steps; ``None`` is the whole probe set
            in one batch, which also saves the evaluation passes. The default 256 and one
            pass per iteration are the published procedure's, on the probe set instead of
            the whole training set: they reproduce its values best (docs/sal_ud.md).
        steps_per_iter: SGD steps per SAL iteration (cycling through the probe batches);
            ``None`` is one pass over the probe set.
        eps: Radius of the ball, relative to each layer's weight norm.
        iters: SAL iterations per direction.
        lr_min: Learning rate of the descent.
        lr_max: Learning rate of the ascent.
        layers: Which layers to measure: ``None`` (every Conv and Linear), a regular
            expression on module names, or a list of module names.
        reference: A clean run's ``sal.csv``; enables the ``ud`` and ``lp/ratio`` curves.
        first_order: Also compute the first-order estimate and log its rank agreement with
            the exact SAL (``sal/first_order_rho``); it never replaces the exact values.
        cache_prefix: Cache the activations that do not depend on the measured layer.
        seed: Seed of the probe subset.
        filename: Name of the SAL table in the log directory.
        dirpath: Directory of the SAL table; default: the trainer's ``log_dir``.
        input_key: Key of the inputs in the probe items.
        target_key: Key of the targets in the probe items.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        probe_size: int = 1024,
        probe_batch_size: int | None = 256,
        steps_per_iter: int | None = None,
        eps: float = 0.05,
        iters: int = 10,
        lr_min: float = 0.1,
        lr_max: float = 0.1,
        layers: str | list[str] | None = None,
        reference: str | Path | None = None,
        first_order: bool = False,
        cache_prefix: bool = True,
        seed: int = 0,
        filename: str = "sal.csv",
        dirpath: str | Path | None = None,
        input_key: str = "image",
        target_key: str = "label",
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if probe_size < 1 or (probe_batch_size is not None and probe_batch_size < 1):
            raise ValueError(
                f"probe_size and probe_batch_size must be >= 1, got {probe_size}, "
                f"{probe_batch_size}"
            )
        self.every_n_epochs = every_n_epochs
        self.probe_size = probe_size
        self.probe_batch_size = probe_batch_size
        self.settings = SALSettings(
            eps=eps,
            iters=iters,
            lr_min=lr_min,
            lr_max=lr_max,
            steps_per_iter=steps_per_iter,
            cache_prefix=cache_prefix,
        )
        self.layers = layers
        self.reference = SalTable.read(reference) if reference is not None else None
        self.first_order = first_order
        self.seed = seed
        self.filename = filename
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.input_key = input_key
        self.target_key = target_key
        self.rows: list[dict[str, Any]] = []
        self._probe: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._shards: list[list[str]] | None = None
        self._batch_epoch: int | None = None  # epoch of the last training batch seen

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The SAL history (all rows so far), saved in Lightning checkpoints."""
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history of a resumed run."""
        self.rows = [dict(r) for r in state_dict.get("rows", [])]

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check the layers against the reference; rewrite ``sal.csv`` of a resumed run."""
        names = measured_layers(pl_module.model, self.layers)
        if self.reference is not None and set(names) != set(self.reference.layers):
            raise ValueError(
                f"SharpnessCallback: the measured layers differ from the reference "
                f"{self.reference.source}: only in this model: "
                f"{sorted(set(names) - set(self.reference.layers))}; only in the reference: "
                f"{sorted(set(self.reference.layers) - set(names))}"
            )
        path = self._path(trainer)  # on every rank: trainer.log_dir is a collective call
        if self.rows and trainer.is_global_zero:
            self._write(path)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """After an epoch's last batch: measure if this epoch is due."""
        self._batch_epoch = trainer.current_epoch
        last = trainer.is_last_batch or batch_idx + 1 >= trainer.num_training_batches
        if not last:
            return
        epoch = trainer.current_epoch
        final = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs == 0 or final:
            self._measure(trainer, pl_module, epoch)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Measure the final model unless it was measured already."""
        if trainer.global_step > 0:
            epoch = self._batch_epoch if self._batch_epoch is not None else trainer.current_epoch
            self._measure(trainer, pl_module, epoch)

    # ------------------------------------------------------------------ work

    def _probe_batches(self, pl_module: LightningModule, trainer: Trainer) -> list:
        if self._probe is None:
            datamodule = trainer.datamodule
            if datamodule is None or not hasattr(datamodule, "probe_dataset"):
                raise ValueError(
                    "SharpnessCallback needs a data module with probe_dataset() (the training "
                    "samples as the model sees them, without augmentation)"
                )
            dataset = datamodule.probe_dataset()
            n = min(self.probe_size, len(dataset))
            generator = torch.Generator().manual_seed(self.seed)
            chosen = torch.randperm(len(dataset), generator=generator)[:n].tolist()
            items = [dataset[i] for i in chosen]
            x = torch.stack([item[self.input_key] for item in items])
            y = torch.stack([torch.as_tensor(item[self.target_key]) for item in items])
            size = self.probe_batch_size or n
            self._probe = [(x[i : i + size], y[i : i + size]) for i in range(0, n, size)]
        device = pl_module.device
        return [(x.to(device), y.to(device)) for x, y in self._probe]

    def _my_layers(self, trainer: Trainer, model: torch.nn.Module, probe: list) -> list[str]:
        names = measured_layers(model, self.layers)
        if trainer.world_size == 1:
            return names
        if self._shards is None:
            costs = layer_costs(model, probe[0][0], names)
            self._shards = split_layers(names, costs, trainer.world_size)
        return self._shards[trainer.global_rank]

    def _measure(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        step = trainer.global_step
        if any(r["step"] == step for r in self.rows):
            return
        model = pl_module.model
        probe = self._probe_batches(pl_module, trainer)
        mine = self._my_layers(trainer, model, probe)
        records = compute_sal(model, probe, mine, settings=self.settings) if mine else []
        rows = [{"epoch": epoch, "step": step, **r.as_dict()} for r in records]
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(gathered, rows)
            by_layer = {row["layer"]: row for part in gathered for row in part}
            rows = [by_layer[name] for name in measured_layers(model, self.layers)]
        self.rows.extend({k: row[k] for k in CSV_COLUMNS} for row in rows)
        path = self._path(trainer)  # on every rank: trainer.log_dir is a collective call
        if trainer.is_global_zero:
            self._write(path)
            estimate = None
            if self.first_order:
                estimate = first_order_sal(model, probe, self.layers, eps=self.settings.eps)
            self._log(trainer, rows, step, estimate)

    # ------------------------------------------------------------------ output
    def _path(self, trainer: Trainer) -> Path:
        directory = self.dirpath or Path(trainer.log_dir or trainer.default_root_dir)
        return directory / self.filename

    def _write(self, path: Path) -> None:
        """Rewrite ``path`` from the history: a temporary file, then an atomic rename."""
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", newline="") as f:
                f.write(buffer.getvalue())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _log(
        self, trainer: Trainer, rows: list[dict], step: int, estimate: dict[str, float] | None
    ) -> None:
        values = np.array([r["sal"] for r in rows])
        metrics: dict[str, float] = {f"sal/{r['layer']}": float(r["sal"]) for r in rows}
        metrics["sal/mean"] = float(values.mean())
        table = SalTable.from_rows(self.rows, "this run")
        if self.reference is not None:
            threshold = clean_beta(self.reference)
            t = len(table.checkpoints)
            clean = self.reference.first(min(t, len(self.reference.checkpoints)))
            metrics["lp/count"] = float((values > threshold).sum())
            metrics["ud"] = ratio(lp_count(table, threshold)[0], lp_count(clean, threshold)[0])
            clean_now = clean.aligned(table.layers)[-1]
            metrics["lp/ratio"] = ratio(metrics["lp/count"], float((clean_now > threshold).sum()))
        elif len(values) >= 2:
            metrics["lp/count"] = float((values > two_means_threshold(values)).sum())
        if estimate is not None:
            metrics["sal/first_order_rho"] = spearman(values, [estimate[r["layer"]] for r in rows])
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, TensorBoardLogger):
                self._log_images(logger, table, step)

    @staticmethod
    def _log_images(logger: TensorBoardLogger, table: SalTable, step: int) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(
            figsize=(4 + 0.3 * len(table.checkpoints), 1.5 + 0.25 * len(table.layers))
        )
        image = ax.imshow(table.sal.T, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(table.layers)), table.layers, fontsize=6)
        ax.set_xticks(range(len(table.checkpoints)), [str(e) for e, _ in table.checkpoints])
        ax.set_xlabel("epoch")
        ax.set_title("SAL per layer")
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        logger.experiment.add_figure("sal/heatmap", fig, global_step=step, close=True)
        logger.experiment.add_histogram("sal/histogram", table.sal[-1], global_step=step)
