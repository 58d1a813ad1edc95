"""SAL at checkpoints during training, with UD against a clean reference, in TensorBoard.

Add it with the preset ``callbacks/sal.yaml`` (a second ``--config``) or in a config's
``trainer.callbacks``. At the end of every ``every_n_epochs``-th training epoch (after the
last batch, before validation and checkpointing) and at the end of training it computes
the SAL of every measured layer of ``pl_module.model`` (:mod:`unlearn.sharpness`) on a probe
set fixed for the run, then

- appends the rows to ``sal.csv`` in the run's log directory (the whole file is rewritten
  atomically from the callback's history, which is also in its ``state_dict``, so a run
  resumed from a checkpoint continues the file without duplicates or gaps), and records the
  settings beside it in ``sal.json`` (:mod:`unlearn.sharpness.sidecar`);
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

A ``reference`` that is missing, unreadable, not finite or measured with other settings
(its ``sal.json``) is refused when the callback is built, before the run writes anything;
one whose layers differ from the model's when the fit starts; one without a ``sal.json`` is
taken with a warning. A SAL that is ``nan`` or ``inf`` (the
training diverged) is written as such, warned about, and neither crashes nor stops the fit;
no count, UD or ratio is logged for it, and no non-finite value is ever logged.

**A second probe.** With ``probe: test`` the probe is drawn, class-balanced by ``seed``, from
the data module's clean test split (``heldout_probe_dataset()``) instead: the same set in
every run on that data, whatever the training seed. ``name`` (default ``sal``) is the file
stem and the TensorBoard prefix, so a second instance (e.g. ``name: sal_heldout``) writes
``sal_heldout.csv`` and ``sal_heldout.json`` and logs every key under ``sal_heldout/``
(``sal_heldout/<layer>``, ``sal_heldout/mean``, ``sal_heldout/lp/count``, ``sal_heldout/ud``,
...) beside the first; its checkpoint state has its own key (:attr:`SharpnessCallback.state_key`).

The work is :class:`~unlearn.sharpness.monitor.SalMonitor`'s; this callback only turns the
trainer's hooks into its calls and hands the results to the loggers.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import Dataset

from unlearn.errors import UnlearnError, check_number
from unlearn.sharpness.checkpoint_metrics import CheckpointReport
from unlearn.sharpness.monitor import ProbeSettings, SalMonitor, SalWarning
from unlearn.sharpness.plots import sal_heatmap, task_similarity_figure
from unlearn.sharpness.sal import SALSettings
from unlearn.sharpness.sal_csv import write_sal_csv
from unlearn.sharpness.sidecar import require_same_settings, unchecked_note, write_sidecar


class SharpnessCallbackError(UnlearnError, ValueError):
    """A setting of the callback that cannot work with this model or reference."""


#: The probe sources: the training samples as the model sees them, or the clean test split.
PROBES: tuple[str, ...] = ("train", "test")

#: What ``name`` may be: a file stem and a TensorBoard tag part.
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class SharpnessCallback(Callback):
    """Compute per-layer SAL at checkpoints; log SAL, #LP and UD; write ``sal.csv``.

    The arguments are flat (as in ``callbacks/sal.yaml``); they are grouped into
    :attr:`monitor`'s :class:`~unlearn.sharpness.SALSettings` (``eps``, ``iters``,
    ``lr_min``, ``lr_max``, ``steps_per_iter``, ``cache_prefix``, ``pair_directions``,
    ``chain_group``) and
    :class:`~unlearn.sharpness.monitor.ProbeSettings` (``probe_size``, ``probe_batch_size``,
    ``seed``, ``input_key``, ``target_key``).

    Args:
        every_n_epochs: Measure after every n-th training epoch (and always after the last
            one and at the end of training).
        probe_size: Number of samples in the probe set (all where fewer), drawn once by
            ``seed`` from the ``probe`` source.
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
            A multi-task run needs a multi-task clean run's file (same tasks and layers). It
            must be finite and, where it has a ``sal.json``, measured with the same settings
            (:data:`~unlearn.sharpness.sidecar.COMPARED`); without one, a warning.
        first_order: Also compute the first-order estimate and log its rank agreement with
            the exact SAL (``sal/first_order_rho``, per task ``sal/<task>/first_order_rho``);
            it never replaces the exact values.
        cache_prefix: Cache the activations that do not depend on the measured layer.
        pair_directions: Run each layer's descent and ascent together (vectorised); same
            values, faster only where one probe batch does not fill the device.
        chain_group: Layers whose chains run together in one vectorised call per step:
            ``1`` (one at a time), an integer ``k``, ``"all"`` or ``"auto"`` (the largest
            group that fits in half the free GPU memory; 1 on a CPU); same values
            (:attr:`~unlearn.sharpness.SALSettings.chain_group`).
        seed: Seed of the probe subset.
        filename: Name of the SAL table in the log directory (the settings go beside it,
            under the same name with ``.json``); default ``<name>.csv``.
        dirpath: Directory of the SAL table; default: the trainer's ``log_dir``.
        input_key: Key of the inputs in the probe items (single-task runs; a multi-task
            run's views take ``rgb``).
        target_key: Key of the targets in the probe items (single-task runs; a multi-task
            run's views pack their own targets).
        probe: Where the probe comes from: ``"train"``, the data module's
            ``probe_dataset()`` (training images as the model sees them, poisoned in a
            poisoned run, without augmentation), drawn by ``seed``; ``"test"``, its
            ``heldout_probe_dataset()`` (the clean test split, without augmentation), drawn
            class-balanced by ``seed`` (:func:`~unlearn.sharpness.monitor.draw_probe`).
        name: The file stem (``<name>.csv``, ``<name>.json``) and the TensorBoard prefix
            (``sal``: the keys as listed above; another name puts every key under
            ``<name>/``, see :func:`metric_name`); two instances in one trainer need two
            names.
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
        chain_group: int | str = 1,
        seed: int = 0,
        filename: str | None = None,
        dirpath: str | Path | None = None,
        input_key: str = "image",
        target_key: str = "label",
        probe: str = "train",
        name: str = "sal",
    ) -> None:
        super().__init__()
        check_number("SharpnessCallback", "every_n_epochs", every_n_epochs, minimum=1)
        if probe not in PROBES:
            raise SharpnessCallbackError(
                f"SharpnessCallback: probe must be one of {list(PROBES)}, got {probe!r}"
            )
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SharpnessCallbackError(
                "SharpnessCallback: name must be a file stem of letters, digits, '_', '.' "
                f"or '-', got {name!r}"
            )
        self.every_n_epochs = every_n_epochs
        self.probe = probe
        self.name = name
        self.filename = filename if filename is not None else f"{name}.csv"
        self.dirpath = Path(dirpath) if dirpath is not None else None
        try:  # the settings check their own values
            drawn = ProbeSettings(
                size=probe_size,
                batch_size=probe_batch_size,
                seed=seed,
                input_key=input_key,
                target_key=target_key,
                balanced=probe == "test",
            )
            settings = SALSettings(
                eps=eps,
                iters=iters,
                lr_min=lr_min,
                lr_max=lr_max,
                steps_per_iter=steps_per_iter,
                cache_prefix=cache_prefix,
                pair_directions=pair_directions,
                chain_group=chain_group,
            )
        except ValueError as err:
            raise SharpnessCallbackError(f"SharpnessCallback: {err}") from None
        self.monitor = SalMonitor(
            settings=settings,
            probe=drawn,
            layers=layers,
            reference=reference,
            first_order=first_order,
            table=self.filename,
        )
        try:  # read now: a bad file stops the run before it has written anything
            found = self.monitor.reference
            if found is not None and found.settings is not None:
                require_same_settings(self.settings_record(), None, found.settings, found.source)
        except ValueError as err:
            raise SharpnessCallbackError(f"SharpnessCallback: {err}") from None
        self._batch_epoch: int | None = None  # epoch of the last training batch seen
        self._resumed_step: int | None = None  # global step of the checkpoint resumed from

    # ------------------------------------------------------------------ state
    @property
    def state_key(self) -> str:
        """The key of this instance's state in a checkpoint: one per ``name``.

        ``SharpnessCallback`` for the default name (as before the option existed, so older
        checkpoints resume), ``SharpnessCallback{'name': ...}`` for another.
        """
        if self.name == "sal":
            return super().state_key
        return self._generate_state_key(name=self.name)

    def state_dict(self) -> dict[str, Any]:
        """The SAL history (all rows so far), saved in Lightning checkpoints."""
        return self.monitor.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history of a resumed run."""
        self.monitor.load_state_dict(state_dict)

    def settings_record(self) -> dict[str, Any]:
        """What ``sal.json`` records: the settings, ``every_n_epochs``, ``probe``, ``name``."""
        return {
            **self.monitor.settings_record(),
            "every_n_epochs": self.every_n_epochs,
            "probe": self.probe,
            "name": self.name,
        }

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check the layers against the reference; rewrite a resumed run's table.

        The reference file itself (readable, finite, measured with these settings) is checked
        when the callback is built.

        Raises:
            SharpnessCallbackError: The data module has no ``probe`` source (see
                :data:`PROBES`), or the reference has other layers or tasks than the model.
        """
        self._source(trainer)  # refuse a data module without the probe before training
        reference = self.monitor.reference
        try:
            self.monitor.check(pl_module)
        except ValueError as err:
            raise SharpnessCallbackError(f"SharpnessCallback: {err}") from None
        if reference is not None and reference.settings is None and trainer.is_global_zero:
            warnings.warn(
                f"SharpnessCallback: the reference {unchecked_note(reference.source, 'this run')}",
                SalWarning,
                stacklevel=2,
            )
        path = self._path(trainer)  # on every rank: trainer.log_dir is a collective call
        if self.monitor.rows and trainer.is_global_zero:
            self._write(path)
            self._log_resumed(trainer, pl_module)

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Note the global step of the checkpoint a fit resumes from."""
        self._resumed_step = int(checkpoint.get("global_step", 0))

    def _log_resumed(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the SAL of the checkpoint resumed from again, at its step.

        TensorBoard drops what the killed run logged from that step on (:mod:`unlearn.resume`),
        this checkpoint's SAL included, which was measured before the checkpoint was saved.
        """
        step, self._resumed_step = self._resumed_step, None
        rows = [row for row in self.monitor.rows if row["step"] == step]
        if rows:
            self.monitor.probe_pairs(pl_module, self._source(trainer))
            self._log(trainer, self.monitor.report(pl_module, rows, pl_module.device), step)

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

    # ------------------------------------------------------------------ calls
    def _measure(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        step = trainer.global_step
        if self.monitor.measured(step):
            return
        rows = self.monitor.measure(
            pl_module,
            self._source(trainer),
            epoch=epoch,
            step=step,
            device=pl_module.device,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
        )
        path = self._path(trainer)  # on every rank: trainer.log_dir is a collective call
        if trainer.is_global_zero:
            self._write(path)
            self._log(trainer, self.monitor.report(pl_module, rows, pl_module.device), step)

    def _path(self, trainer: Trainer) -> Path:
        directory = self.dirpath or Path(trainer.log_dir or trainer.default_root_dir)
        return directory / self.filename

    def _write(self, path: Path) -> None:
        """``sal.csv`` from the history, then its ``sal.json`` (each atomically)."""
        write_sal_csv(path, self.monitor.rows)
        write_sidecar(path, self.settings_record(), self.monitor.rows)

    def _log(self, trainer: Trainer, report: CheckpointReport, step: int) -> None:
        def key(name: str) -> str:
            return metric_name(name, self.name)

        metrics = {key(k): v for k, v in report.metrics.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if not isinstance(logger, TensorBoardLogger):
                continue
            for task, table in report.tables.items():
                prefix = "sal" if task is None else f"sal/{task}"
                figure = sal_heatmap(table, task)
                logger.experiment.add_figure(key(f"{prefix}/heatmap"), figure, global_step=step)
                values = table.sal[-1][np.isfinite(table.sal[-1])]  # never nan/inf
                if values.size:
                    logger.experiment.add_histogram(
                        key(f"{prefix}/histogram"), values, global_step=step
                    )
            if report.similarity is not None:
                figure = task_similarity_figure(*report.similarity)
                logger.experiment.add_figure(key("sal/task_similarity"), figure, global_step=step)

    def _source(self, trainer: Trainer) -> Callable[[], Dataset]:
        """The data module's method that gives the ``probe`` source (see :data:`PROBES`).

        Raises:
            SharpnessCallbackError: The data module has no such method (one line naming
                ``probe``, the method and the data module).
        """
        method, what = {
            "train": ("probe_dataset", "the training samples as the model sees them"),
            "test": ("heldout_probe_dataset", "the clean test split"),
        }[self.probe]
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, method):
            found = "no data module" if datamodule is None else type(datamodule).__name__
            raise SharpnessCallbackError(
                f"SharpnessCallback: probe {self.probe!r} needs a data module with {method}() "
                f"({what}, without augmentation), found {found}"
            )
        return getattr(datamodule, method)


def metric_name(key: str, name: str) -> str:
    """The logged key of a SAL metric ``key`` (as listed in the module docstring) for ``name``.

    ``name`` ``"sal"`` leaves the keys as they are; another puts every key under
    ``<name>/``: ``sal/...`` becomes ``<name>/...``, any other key ``k`` (``ud``,
    ``lp/count``, ``similarity/a/b``, ...) becomes ``<name>/k``. E.g. for ``sal_heldout``:
    ``sal_heldout/conv1``, ``sal_heldout/mean``, ``sal_heldout/lp/count``, ``sal_heldout/ud``.
    """
    if name == "sal":
        return key
    if key.startswith("sal/"):
        return f"{name}/{key[len('sal/') :]}"
    return f"{name}/{key}"
