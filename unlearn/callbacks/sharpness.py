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

**Multi-task runs.** Where ``pl_module`` has ``sal_views()`` (e.g.
:class:`~unlearn.tasks.multitask.MultiTaskTask`), each task is measured as its own model: the
shared encoder with the task's head (layers ``encoder.*`` and ``head.*``), that task's loss
and packed targets, on the probe set's ``rgb``. ``sal.csv`` then has a further column
``task`` (rows per checkpoint, task and layer); the logged keys are ``sal/<task>/<layer>``,
``sal/<task>/mean``, ``lp/<task>/count``, with a multi-task clean ``reference`` ``ud/<task>``
and ``lp/<task>/ratio`` (each task against the reference's same task), and
``similarity/<a>/<b>`` (cosine similarity of the tasks' SAL vectors over the shared layers,
for each pair with ``a`` before ``b`` in the model's task order), and in TensorBoard
``sal/<task>/heatmap``, ``sal/<task>/histogram`` and the annotated matrix
``sal/task_similarity``.

Under DDP the layers (of a multi-task run: the (task, layer) pairs) are split across the
processes by cost (:mod:`unlearn.sharpness.shard`), the results gathered, and only rank zero
logs and writes. The computation uses
``pl_module.model`` directly (not the DDP wrapper, so no gradient all-reduce fires), leaves
the model, its gradients and the random streams as they were, and so does not change the
training.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import default_collate

from unlearn.io import write_text_atomic
from unlearn.sharpness import (
    SAL_COLUMNS,
    SALSettings,
    SalTable,
    compute_sal,
    cross_entropy,
    first_order_sal,
    measured_layers,
    spearman,
    top1_correct,
    two_means_threshold,
)
from unlearn.sharpness.shard import layer_costs, split_layers
from unlearn.sharpness.ud import TASK_COLUMN, lp_count, ratio, sal_tasks
from unlearn.sharpness.ud import beta as clean_beta

log = logging.getLogger(__name__)

#: Columns of the callback's ``sal.csv``: the required ones, then extras.
CSV_COLUMNS: tuple[str, ...] = (*SAL_COLUMNS, "acc0", "acc_rise", "acc_drop", "cached")
#: Columns of a multi-task run's ``sal.csv``: those of :data:`CSV_COLUMNS`, then ``task``.
TASK_CSV_COLUMNS: tuple[str, ...] = (*CSV_COLUMNS, TASK_COLUMN)

#: One unit of SAL work: (task, layer); the task is ``None`` in a single-task run.
Unit = tuple[str | None, str]


@dataclass
class _Target:
    """What SAL measures for one task (the whole model in a single-task run)."""

    model: torch.nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    correct_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    layers: list[str]


def _key(kind: str, name: str, task: str | None) -> str:
    """``kind/name``, or ``kind/task/name`` in a multi-task run."""
    return f"{kind}/{name}" if task is None else f"{kind}/{task}/{name}"


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
            expression on module names, or a list of module names. In a multi-task run the
            names are those of each task's view (``encoder.*``, ``head.*``).
        reference: A clean run's ``sal.csv``; enables the ``ud`` and ``lp/ratio`` curves.
            A multi-task run needs a multi-task clean run's file (same tasks and layers).
        first_order: Also compute the first-order estimate and log its rank agreement with
            the exact SAL (``sal/first_order_rho``, per task ``sal/<task>/first_order_rho``);
            it never replaces the exact values.
        cache_prefix: Cache the activations that do not depend on the measured layer.
        pair_directions: Run each layer's descent and ascent together (vectorised); same
            values, faster only where one probe batch does not fill the device.
        seed: Seed of the probe subset.
        filename: Name of the SAL table in the log directory.
        dirpath: Directory of the SAL table; default: the trainer's ``log_dir``.
        input_key: Key of the inputs in the probe items (single-task runs; a multi-task
            run's views take ``rgb``).
        target_key: Key of the targets in the probe items (single-task runs; a multi-task
            run's views pack their own targets).
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
        pair_directions: bool = False,
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
            pair_directions=pair_directions,
        )
        self.layers = layers
        # a single-task reference, or each task's of a multi-task one (a `task` column)
        self.reference: SalTable | None = None
        self.task_references: dict[str, SalTable] | None = None
        if reference is not None and sal_tasks(reference):
            self.task_references = SalTable.read_tasks(reference)
        elif reference is not None:
            self.reference = SalTable.read(reference)
        self.first_order = first_order
        self.seed = seed
        self.filename = filename
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.input_key = input_key
        self.target_key = target_key
        self.rows: list[dict[str, Any]] = []
        # probe pairs per task (None: the single task), on the CPU, built once per run
        self._probe: dict[str | None, list[tuple[torch.Tensor, torch.Tensor]]] | None = None
        self._shards: list[list[Unit]] | None = None
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
        targets = self._targets(pl_module)
        if None in targets:
            if self.task_references is not None and len(self.task_references) == 1:
                (self.reference,) = self.task_references.values()
            elif self.task_references is not None:
                raise ValueError(
                    f"SharpnessCallback: the reference {self._reference_source()} is a "
                    f"multi-task run's (tasks {list(self.task_references)}); this model has "
                    "a single task"
                )
            if self.reference is not None:
                self._check_layers(targets[None].layers, self.reference, "")
        elif self.reference is not None:
            raise ValueError(
                f"SharpnessCallback: the reference {self.reference.source} has no task "
                "column; a multi-task run needs a multi-task clean run's sal.csv"
            )
        elif self.task_references is not None:
            ours, theirs = list(targets), list(self.task_references)
            if set(ours) != set(theirs):
                raise ValueError(
                    f"SharpnessCallback: the tasks differ from the reference "
                    f"{self._reference_source()}: only in this model: "
                    f"{[t for t in ours if t not in theirs]}; only in the reference: "
                    f"{[t for t in theirs if t not in ours]}"
                )
            for task, target in targets.items():
                self._check_layers(target.layers, self.task_references[task], f" of {task}")
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
    def _targets(self, pl_module: LightningModule) -> dict[str | None, _Target]:
        """``{None: the model}``, or ``{task: its view}`` where the module has ``sal_views()``."""
        sal_views = getattr(pl_module, "sal_views", None)
        if not callable(sal_views):
            model = pl_module.model
            layers = measured_layers(model, self.layers)
            return {None: _Target(model, cross_entropy, top1_correct, layers)}
        targets: dict[str | None, _Target] = {}
        for task, view in sal_views().items():
            try:
                layers = measured_layers(view.model, self.layers)
            except ValueError as err:
                raise ValueError(f"SharpnessCallback, task {task!r}: {err}") from None
            targets[task] = _Target(view.model, view.loss_fn, view.correct_fn, layers)
        return targets

    def _probe_batches(
        self, pl_module: LightningModule, trainer: Trainer
    ) -> dict[str | None, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The probe pairs of each task, on the CPU (drawn once per run)."""
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
            size = self.probe_batch_size or n
            sal_views = getattr(pl_module, "sal_views", None)
            if callable(sal_views):
                batches = [default_collate(items[i : i + size]) for i in range(0, n, size)]
                self._probe = {task: view.pairs(batches) for task, view in sal_views().items()}
            else:
                x = torch.stack([item[self.input_key] for item in items])
                y = torch.stack([torch.as_tensor(item[self.target_key]) for item in items])
                self._probe = {
                    None: [(x[i : i + size], y[i : i + size]) for i in range(0, n, size)]
                }
        return self._probe

    def _my_units(
        self,
        trainer: Trainer,
        targets: dict[str | None, _Target],
        probe: dict,
        units: list[Unit],
        device: torch.device,
    ) -> list[Unit]:
        """This process's share of the (task, layer) units, balanced by cost across ranks."""
        if trainer.world_size == 1:
            return units
        if self._shards is None:
            costs = [
                cost
                for task, target in targets.items()
                for cost in layer_costs(
                    target.model, probe[task][0][0][:1].to(device), target.layers
                )
            ]
            labels = [layer if task is None else f"{task}/{layer}" for task, layer in units]
            parts = split_layers(labels, costs, trainer.world_size)
            unit_of = dict(zip(labels, units, strict=True))
            self._shards = [[unit_of[label] for label in part] for part in parts]
        return self._shards[trainer.global_rank]

    def _measure(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        step = trainer.global_step
        if any(r["step"] == step for r in self.rows):
            return
        targets = self._targets(pl_module)
        probe = self._probe_batches(pl_module, trainer)
        units = [(task, layer) for task, target in targets.items() for layer in target.layers]
        mine = self._my_units(trainer, targets, probe, units, pl_module.device)
        rows = []
        for task, target in targets.items():
            layers = [layer for t, layer in mine if t == task]
            if not layers:
                continue
            records = compute_sal(
                target.model,
                _to(probe[task], pl_module.device),
                layers,
                loss_fn=target.loss_fn,
                correct_fn=target.correct_fn,
                settings=self.settings,
            )
            extra = {} if task is None else {TASK_COLUMN: task}
            rows += [{"epoch": epoch, "step": step, **r.as_dict(), **extra} for r in records]
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(gathered, rows)
            by_unit = {
                (row.get(TASK_COLUMN), row["layer"]): row for part in gathered for row in part
            }
            rows = [by_unit[unit] for unit in units]
        columns = CSV_COLUMNS if None in targets else TASK_CSV_COLUMNS
        self.rows.extend({k: row[k] for k in columns} for row in rows)
        path = self._path(trainer)  # on every rank: trainer.log_dir is a collective call
        if trainer.is_global_zero:
            self._write(path)
            estimates = None
            if self.first_order:
                estimates = {
                    task: first_order_sal(
                        target.model,
                        _to(probe[task], pl_module.device),
                        target.layers,
                        loss_fn=target.loss_fn,
                        eps=self.settings.eps,
                    )
                    for task, target in targets.items()
                }
            self._log(trainer, rows, step, estimates)

    # ------------------------------------------------------------------ output
    def _path(self, trainer: Trainer) -> Path:
        directory = self.dirpath or Path(trainer.log_dir or trainer.default_root_dir)
        return directory / self.filename

    def _reference_source(self) -> str:
        tables = [self.reference] if self.reference is not None else []
        tables += list((self.task_references or {}).values())
        return tables[0].source if tables else "(none)"

    @staticmethod
    def _check_layers(names: list[str], reference: SalTable, what: str) -> None:
        if set(names) != set(reference.layers):
            raise ValueError(
                f"SharpnessCallback: the measured layers{what} differ from the reference "
                f"{reference.source}: only in this model: "
                f"{sorted(set(names) - set(reference.layers))}; only in the reference: "
                f"{sorted(set(reference.layers) - set(names))}"
            )

    def _write(self, path: Path) -> None:
        """Rewrite ``path`` from the history: a temporary file, then an atomic rename."""
        columns = TASK_CSV_COLUMNS if self.rows and TASK_COLUMN in self.rows[0] else CSV_COLUMNS
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(path, buffer.getvalue())

    def _log(
        self,
        trainer: Trainer,
        rows: list[dict],
        step: int,
        estimates: dict[str | None, dict[str, float]] | None,
    ) -> None:
        tasks = list(dict.fromkeys(r.get(TASK_COLUMN) for r in rows))
        metrics: dict[str, float] = {}
        tables: dict[str | None, SalTable] = {}
        for task in tasks:
            now = [r for r in rows if r.get(TASK_COLUMN) == task]
            tables[task] = SalTable.from_rows(self.rows, "this run", task)
            metrics.update(self._task_metrics(now, tables[task], task))
            if estimates is not None:
                values = [r["sal"] for r in now]
                guess = [estimates[task][r["layer"]] for r in now]
                metrics[_key("sal", "first_order_rho", task)] = spearman(values, guess)
        similarity = None
        if len(tasks) >= 2:
            from unlearn.tasks.multitask import task_similarity

            names, shared, matrix = task_similarity(
                {
                    task: {r["layer"]: r["sal"] for r in rows if r[TASK_COLUMN] == task}
                    for task in tasks
                }
            )
            if shared:
                similarity = (names, matrix.numpy())
                for i, a in enumerate(names):
                    for j in range(i + 1, len(names)):
                        metrics[f"similarity/{a}/{names[j]}"] = float(matrix[i, j])
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, TensorBoardLogger):
                for task, table in tables.items():
                    self._log_images(logger, table, step, task)
                if similarity is not None:
                    self._log_similarity(logger, *similarity, step)

    def _task_metrics(self, rows: list[dict], table: SalTable, task: str | None) -> dict:
        """SAL, #LP and (with a reference) UD of one task (or the single task) at a checkpoint."""
        values = np.array([r["sal"] for r in rows])
        metrics: dict[str, float] = {_key("sal", r["layer"], task): float(r["sal"]) for r in rows}
        metrics[_key("sal", "mean", task)] = float(values.mean())
        reference = self.reference if task is None else (self.task_references or {}).get(task)
        count = _key("lp", "count", task)
        if reference is not None:
            threshold = clean_beta(reference)
            t = len(table.checkpoints)
            clean = reference.first(min(t, len(reference.checkpoints)))
            metrics[count] = float((values > threshold).sum())
            ud = ratio(lp_count(table, threshold)[0], lp_count(clean, threshold)[0])
            metrics["ud" if task is None else f"ud/{task}"] = ud
            clean_now = clean.aligned(table.layers)[-1]
            metrics[_key("lp", "ratio", task)] = ratio(
                metrics[count], float((clean_now > threshold).sum())
            )
        elif len(values) >= 2:
            metrics[count] = float((values > two_means_threshold(values)).sum())
        return metrics

    @staticmethod
    def _log_images(
        logger: TensorBoardLogger, table: SalTable, step: int, task: str | None = None
    ) -> None:
        plt = _pyplot()
        fig, ax = plt.subplots(
            figsize=(4 + 0.3 * len(table.checkpoints), 1.5 + 0.25 * len(table.layers))
        )
        image = ax.imshow(table.sal.T, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(table.layers)), table.layers, fontsize=6)
        ax.set_xticks(range(len(table.checkpoints)), [str(e) for e, _ in table.checkpoints])
        ax.set_xlabel("epoch")
        ax.set_title("SAL per layer" if task is None else f"SAL per layer: {task}")
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        prefix = "sal" if task is None else f"sal/{task}"
        logger.experiment.add_figure(f"{prefix}/heatmap", fig, global_step=step, close=True)
        logger.experiment.add_histogram(f"{prefix}/histogram", table.sal[-1], global_step=step)

    @staticmethod
    def _log_similarity(
        logger: TensorBoardLogger, names: list[str], matrix: np.ndarray, step: int
    ) -> None:
        plt = _pyplot()
        n = len(names)
        fig, ax = plt.subplots(figsize=(2.5 + 0.9 * n, 2 + 0.8 * n))
        image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title("SAL cosine similarity, shared layers")
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        logger.experiment.add_figure("sal/task_similarity", fig, global_step=step, close=True)


def _to(pairs: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> list:
    """Probe pairs on ``device`` (one task's at a time: the inputs are not copied per task)."""
    return [(x.to(device), y.to(device)) for x, y in pairs]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
