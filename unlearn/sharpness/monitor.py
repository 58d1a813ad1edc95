"""SAL at the checkpoints of a training run, as a plain object (no Lightning inside).

:class:`SalMonitor` holds what a run's SAL measurement keeps between checkpoints: the
settings, the probe set (drawn once), the clean reference, the split of the work across
processes and the history of ``sal.csv`` rows (its state, to save in checkpoints). Per
checkpoint it measures this process's share of the layers (:meth:`SalMonitor.measure`) and
gives the scalars and tables to log (:meth:`SalMonitor.report`).

The trained module is read by duck typing: one with ``sal_views()``
(:class:`~unlearn.sharpness.multitask.HasSALViews`) is measured task by task, each view on
the probe set's ``rgb`` with the task's packed targets; any other is measured through its
``model`` attribute with cross-entropy and top-1 accuracy on ``(item[input_key],
item[target_key])`` pairs. The model itself is used, never a DDP wrapper, and left as found.

A checkpoint whose SAL is ``nan`` or ``inf`` (a diverged training) is kept as such in the
history (so in ``sal.csv``); :meth:`SalMonitor.report` then warns (:class:`SalWarning`, once
per such checkpoint, naming the epoch and the layers) and gives no count or UD for it. It
never raises for it and never stops anything: whether the training goes on is the trainer's
settings' business. Other metrics left out (a non-finite ``ud`` or ``lp/ratio``) are said
once per run and key.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from unlearn.errors import check_number
from unlearn.sharpness.checkpoint_metrics import CheckpointReport, checkpoint_report, metric_key
from unlearn.sharpness.first_order import first_order_sal
from unlearn.sharpness.multitask import HasSALViews
from unlearn.sharpness.reference import SalReference
from unlearn.sharpness.sal import (
    LayerFilter,
    SALSettings,
    compute_sal,
    cross_entropy,
    measured_layers,
    top1_correct,
)
from unlearn.sharpness.sal_csv import columns_of
from unlearn.sharpness.shard import Unit, gather_rows, layer_costs, split_layers
from unlearn.sharpness.sidecar import sidecar_path
from unlearn.sharpness.ud import TASK_COLUMN, SalTable

#: The probe pairs ``(inputs [B, ...], targets [B, ...])`` of each task (``None``: the single
#: task), on the CPU.
ProbePairs = dict[str | None, list[tuple[Tensor, Tensor]]]


class SalWarning(UserWarning):
    """A note on the SAL measurement (a non-finite SAL, a metric left out, unchecked settings)."""


@dataclass(frozen=True)
class ProbeSettings:
    """How the probe set is drawn from the probe source (the training samples by default).

    Attributes:
        size: Number of samples (all where fewer), drawn once by ``seed``.
        batch_size: SGD batch size of the SAL steps; ``None``: the whole probe in one batch.
        seed: Seed of the draw (its own generator: the training's random streams are not
            touched).
        input_key: Key of the inputs in the items (single-task modules).
        target_key: Key of the targets in the items (single-task modules).
        balanced: Draw class-balanced (:func:`draw_probe`) where every item's
            ``target_key`` is a class index; otherwise (and where ``False``) a plain draw.
    """

    size: int = 1024
    batch_size: int | None = 256
    seed: int = 0
    input_key: str = "image"
    target_key: str = "label"
    balanced: bool = False

    def __post_init__(self) -> None:
        """Reject sizes below one (:class:`~unlearn.errors.ConfigError`, naming the field)."""
        check_number("", "probe_size", self.size, minimum=1)
        check_number("", "probe_batch_size", self.batch_size, minimum=1)


@dataclass
class Target:
    """What SAL measures for one task (the whole model in a single-task run)."""

    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    correct_fn: Callable[[Tensor, Tensor], Tensor]
    layers: list[str]


class SalMonitor:
    """SAL of a module at checkpoints, its history, and UD against a clean reference.

    Args:
        settings: The SAL numerics.
        probe: How the probe set is drawn.
        layers: Which layers to measure (see :func:`~unlearn.sharpness.measured_layers`; in a
            multi-task module, names of each task's view: ``encoder.*``, ``head.*``).
        reference: A clean run's ``sal.csv`` (a multi-task run's for a multi-task module);
            enables UD. Read at its first use (see :attr:`reference`).
        first_order: Also report the first-order estimate's rank agreement with the SAL.
        table: The name of the file the rows are written to (and, beside it, its sidecar),
            as the warnings name them.
    """

    def __init__(
        self,
        settings: SALSettings | None = None,
        probe: ProbeSettings | None = None,
        layers: LayerFilter = None,
        reference: str | Path | None = None,
        first_order: bool = False,
        table: str = "sal.csv",
    ) -> None:
        self.settings = settings or SALSettings()
        self.probe = probe or ProbeSettings()
        self.layers = layers
        #: The clean reference's ``sal.csv`` as given (read at first use, see :attr:`reference`).
        self.reference_path = reference
        self._reference: SalReference | None = None
        self.first_order = first_order
        self.table = table
        #: Every ``sal.csv`` row so far, in order (the state saved in checkpoints).
        self.rows: list[dict[str, Any]] = []
        self._references: dict[str | None, SalTable] | None = None
        self._pairs: ProbePairs | None = None
        self._shards: list[list[Unit]] | None = None
        self._said: set[str] = set()  # metric keys whose omission was warned about

    def settings_record(self) -> dict[str, Any]:
        """The settings of the measurement as JSON values, for ``sal.json``.

        Those of :mod:`unlearn.sharpness.sidecar` except the caller's ``every_n_epochs``.
        """
        layers = self.layers
        if callable(layers):
            layers = f"<predicate {getattr(layers, '__qualname__', repr(layers))}>"
        elif layers is not None and not isinstance(layers, str):
            layers = list(layers)
        return {
            "probe_size": self.probe.size,
            "probe_batch_size": self.probe.batch_size,
            "steps_per_iter": self.settings.steps_per_iter,
            "eps": self.settings.eps,
            "iters": self.settings.iters,
            "lr_min": self.settings.lr_min,
            "lr_max": self.settings.lr_max,
            "layers": layers,
            "seed": self.probe.seed,
        }

    @property
    def reference(self) -> SalReference | None:
        """The clean reference, read at its first use (the SAL callback asks when it is built).

        Raises:
            SalTableError: The file cannot serve as a reference (naming it).
        """
        if self._reference is None and self.reference_path is not None:
            self._reference = SalReference.read(self.reference_path)
        return self._reference

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The history (all rows so far)."""
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history of a resumed run."""
        self.rows = [dict(r) for r in state_dict.get("rows", [])]

    def measured(self, step: int) -> bool:
        """Whether the history has the checkpoint at global step ``step``."""
        return any(r["step"] == step for r in self.rows)

    # ------------------------------------------------------------------ setup
    def targets(self, module: nn.Module) -> dict[str | None, Target]:
        """``{None: module.model}``, or ``{task: its view}`` where the module has ``sal_views()``.

        Raises:
            ValueError: The layer filter selects nothing (naming the task).
        """
        if not isinstance(module, HasSALViews):
            model = module.model
            layers = measured_layers(model, self.layers)
            return {None: Target(model, cross_entropy, top1_correct, layers)}
        targets: dict[str | None, Target] = {}
        for task, view in module.sal_views().items():
            try:
                layers = measured_layers(view.model, self.layers)
            except ValueError as err:
                raise ValueError(f"task {task!r}: {err}") from None
            targets[task] = Target(view.model, view.loss_fn, view.correct_fn, layers)
        return targets

    def check(self, module: nn.Module) -> None:
        """Check the measured layers (and tasks) against the reference, before training.

        Raises:
            ValueError: Nothing measured, or tasks or layers other than the reference's
                (see :meth:`SalReference.resolve`).
        """
        self._references = None
        self._resolve(self.targets(module))

    def _resolve(self, targets: dict[str | None, Target]) -> dict[str | None, SalTable]:
        """The reference table of each task (``{}`` without a reference), checked once."""
        if self._references is None:
            self._references = (
                {}
                if self.reference is None
                else self.reference.resolve({task: t.layers for task, t in targets.items()})
            )
        return self._references

    def probe_pairs(self, module: nn.Module, dataset: Callable[[], Dataset]) -> ProbePairs:
        """The probe pairs of each task, on the CPU, drawn at the first call of the run.

        Args:
            module: The trained module (decides single- or multi-task pairs).
            dataset: Gives the probe source, unaugmented (called once): the training
                samples as the model sees them, or another split (the callback's ``probe``).
        """
        if self._pairs is None:
            samples = dataset()
            chosen = draw_probe(samples, self.probe)
            n = len(chosen)
            items = [samples[i] for i in chosen]
            size = self.probe.batch_size or n
            if isinstance(module, HasSALViews):
                batches = [default_collate(items[i : i + size]) for i in range(0, n, size)]
                self._pairs = {
                    task: view.pairs(batches) for task, view in module.sal_views().items()
                }
            else:
                x = torch.stack([item[self.probe.input_key] for item in items])
                y = torch.stack([torch.as_tensor(item[self.probe.target_key]) for item in items])
                self._pairs = {
                    None: [(x[i : i + size], y[i : i + size]) for i in range(0, n, size)]
                }
        return self._pairs

    def _my_units(
        self,
        targets: dict[str | None, Target],
        pairs: ProbePairs,
        units: list[Unit],
        device: torch.device,
        rank: int,
        world_size: int,
    ) -> list[Unit]:
        """This process's share of the units, balanced by cost (the same split on every rank)."""
        if world_size == 1:
            return units
        if self._shards is None:
            costs = [
                cost
                for task, target in targets.items()
                for cost in layer_costs(
                    target.model, pairs[task][0][0][:1].to(device), target.layers
                )
            ]
            self._shards = split_layers(units, costs, world_size)
        return self._shards[rank]

    # ------------------------------------------------------------------ work
    def measure(
        self,
        module: nn.Module,
        dataset: Callable[[], Dataset],
        epoch: int,
        step: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ) -> list[dict[str, Any]]:
        """Measure the checkpoint; add its rows to the history and return them.

        With ``world_size > 1`` each process measures its share of the units and the rows
        are gathered (a collective call: every rank calls it).

        Args:
            module: The trained module at the checkpoint.
            dataset: The probe source (see :meth:`probe_pairs`).
            epoch: The epoch just finished (0-based).
            step: The global step.
            device: Where the model is.
            rank: This process's rank.
            world_size: Number of processes.

        Returns:
            The checkpoint's rows (every unit's), with the ``sal.csv`` columns.
        """
        targets = self.targets(module)
        pairs = self.probe_pairs(module, dataset)
        units = [(task, layer) for task, target in targets.items() for layer in target.layers]
        mine = self._my_units(targets, pairs, units, device, rank, world_size)
        rows: list[dict[str, Any]] = []
        for task, target in targets.items():
            layers = [layer for t, layer in mine if t == task]
            if not layers:
                continue
            records = compute_sal(
                target.model,
                _to(pairs[task], device),
                layers,
                loss_fn=target.loss_fn,
                correct_fn=target.correct_fn,
                settings=self.settings,
            )
            extra = {} if task is None else {TASK_COLUMN: task}
            rows += [{"epoch": epoch, "step": step, **r.as_dict(), **extra} for r in records]
        rows = gather_rows(rows, units, world_size)
        columns = columns_of(None not in targets)
        self.rows.extend({k: row[k] for k in columns} for row in rows)
        return rows

    def report(
        self, module: nn.Module, rows: Sequence[dict[str, Any]], device: torch.device
    ) -> CheckpointReport:
        """The scalars and tables of the checkpoint just measured (its ``rows``).

        With ``first_order`` this runs the first-order estimate of every layer (one pass).
        Warns (:class:`SalWarning`) where the checkpoint's SAL is not finite, and once per
        key where a metric is left out for another reason (see
        :mod:`~unlearn.sharpness.checkpoint_metrics`).
        """
        targets = self.targets(module)
        estimates = None
        if self.first_order:
            pairs = self.probe_pairs(module, _no_dataset)
            estimates = {
                task: first_order_sal(
                    target.model,
                    _to(pairs[task], device),
                    target.layers,
                    loss_fn=target.loss_fn,
                    eps=self.settings.eps,
                )
                for task, target in targets.items()
            }
        report = checkpoint_report(rows, self.rows, self._resolve(targets), estimates)
        self._warn(rows, report)
        return report

    def _warn(self, rows: Sequence[dict[str, Any]], report: CheckpointReport) -> None:
        """Say what the report leaves out: every non-finite checkpoint, other omissions once."""
        if report.non_finite:
            layers = [
                layer if task is None else f"{task}/{layer}"
                for task, names in report.non_finite.items()
                for layer in names
            ]
            own = {
                metric_key("sal", layer, task)
                for task, names in report.non_finite.items()
                for layer in names
            }
            kept = [k for k in report.skipped if k not in own]
            warnings.warn(
                f"SAL is nan/inf at epoch {rows[0]['epoch']} (step {rows[0]['step']}) in "
                f"layer(s) {layers}: the training has diverged there. Written as such to "
                f"{self.table} (and listed under non_finite in "
                f"{sidecar_path(self.table).name}); not logged for this "
                f"checkpoint: {kept or 'those layers'}. SAL does not stop the training.",
                SalWarning,
                stacklevel=3,
            )
            return
        for key, why in report.skipped.items():
            if key not in self._said:
                self._said.add(key)
                warnings.warn(
                    f"{key} not logged at epoch {rows[0]['epoch']}: {why} (said once; it stays "
                    "out wherever this holds)",
                    SalWarning,
                    stacklevel=3,
                )


def draw_probe(samples: Dataset, probe: ProbeSettings) -> list[int]:
    """Positions of the probe set in ``samples``: ``min(probe.size, len(samples))`` of them.

    A plain draw is the first of a random order (``torch.randperm`` by ``probe.seed``). A
    balanced one (``probe.balanced``, where every item's ``probe.target_key`` is a class
    index) shuffles each class's members by ``probe.seed`` (classes in increasing order)
    and takes them round-robin: the first of each class, then the second of each, and so
    on, skipping a class once it is used up. So the classes give equal counts (one more for
    the lowest classes, ``size % K`` of them) as far as their sizes allow, every probe batch
    is about balanced too, and the set depends on the labels, ``size`` and ``seed`` only.

    Args:
        samples: The probe source (items are dicts; only the labels are read for a balanced
            draw).
        probe: The size, seed, target key and whether to balance.

    Returns:
        Distinct positions in ``[0, len(samples))``, in probe order.
    """
    n = min(probe.size, len(samples))
    generator = torch.Generator().manual_seed(probe.seed)
    labels = _class_labels(samples, probe.target_key) if probe.balanced else None
    if labels is None:
        return torch.randperm(len(samples), generator=generator)[:n].tolist()
    classes = labels.unique(sorted=True)
    members = [(labels == c).nonzero().flatten() for c in classes]
    shuffled = [m[torch.randperm(m.numel(), generator=generator)] for m in members]
    positions = torch.cat(shuffled)
    # round r of the round-robin takes each class's r-th member, classes in order
    rounds = torch.cat([torch.arange(m.numel()) for m in shuffled])
    klass = torch.cat([torch.full((m.numel(),), k) for k, m in enumerate(shuffled)])
    order = torch.argsort(rounds * len(shuffled) + klass)
    return positions[order][:n].tolist()


def _class_labels(samples: Dataset, key: str) -> Tensor | None:
    """``int64 [N]`` class of every item, or ``None`` where an item has no integer class.

    For ``key`` ``"label"`` a dataset's ``labels`` tensor ``[N]`` (the classification data
    modules' datasets have one) gives them without loading the images; otherwise every item
    is read.
    """
    found = getattr(samples, "labels", None) if key == "label" else None
    if isinstance(found, Tensor) and found.shape == (len(samples),):
        return None if found.is_floating_point() or found.is_complex() else found.long()
    labels = []
    for i in range(len(samples)):
        item = samples[i]
        value = item.get(key) if isinstance(item, dict) else None
        if value is None:
            return None
        value = torch.as_tensor(value)
        if value.ndim != 0 or value.is_floating_point() or value.is_complex():
            return None
        labels.append(int(value))
    return torch.tensor(labels, dtype=torch.long)


def _to(pairs: list[tuple[Tensor, Tensor]], device: torch.device) -> list:
    """Probe pairs on ``device`` (one task's at a time: the inputs are not copied per task)."""
    return [(x.to(device), y.to(device)) for x, y in pairs]


def _no_dataset() -> Dataset:
    raise RuntimeError("SalMonitor.report needs a measurement first (measure draws the probe)")
