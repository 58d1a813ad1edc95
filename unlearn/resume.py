"""A fit resumed from an epoch-end checkpoint reproduces the uninterrupted fit exactly.

A checkpoint holds the weights, the optimizer and scheduler, the loops' counters and the
callbacks' states, but not the random streams. So every training epoch draws from streams
that are a function of the epoch only: at its start (:func:`start_epoch`, called by
:meth:`unlearn.tasks.BaseTask.on_train_epoch_start`, after every callback's
``on_train_epoch_start``) torch (CPU and every CUDA device), numpy's global generator and
Python's ``random`` are reseeded from :func:`epoch_seed` of the run's seed
(``seed_everything``'s ``PL_GLOBAL_SEED``), the epoch and the process's global rank (DDP ranks
draw apart), and the training loader starts its iterator afresh: the shuffling, the base seed
of its workers (new workers every epoch, persistent ones too; Lightning's
``pl_worker_init_function`` seeds them from it), the augmentations, the defenses' draws
(cutout, mixing, UEraser, adversarial training) all follow. Without ``PL_GLOBAL_SEED`` (no
``seed_everything``) nothing is reseeded.

What happens elsewhere draws nothing that leaks into an epoch: the sanity check runs inside
Lightning's ``isolate_rng``, the SAL callback draws its probe with its own generator and
restores the streams after each measurement, validation does not shuffle, and the next
epoch reseeds anyway.

TensorBoard: a resumed fit writes into the killed run's directory when the logger's
``version`` is fixed; :func:`drop_events_from` then marks the checkpoint's global step as a
restart (the ``purge_step`` of TensorBoard's ``SummaryWriter``), so TensorBoard drops what the
killed run logged from that step on and each step appears once. Loggers are flushed with every
checkpoint and at every epoch start (:func:`flush_loggers`), so what was logged before a
checkpoint is on disk when the checkpoint is.

Only checkpoints written at the end of an epoch resume exactly (``last.ckpt`` of the CLI's
checkpoints, :func:`keep_last_checkpoints`); a mid-epoch checkpoint resumes, with other draws
for the rest of its epoch.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

#: where Lightning's ``seed_everything`` leaves the run's seed
SEED_ENV = "PL_GLOBAL_SEED"


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The 64-bit seed of one epoch of one process: a function of its three arguments only.

    Args:
        seed: the run's seed (``seed_everything``'s, ``>= 0``).
        epoch: the training epoch, 0-based.
        rank: the process's global rank (0 without DDP).
    """
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0])


def seed_streams(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy's global generator and ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def run_seed() -> int | None:
    """The run's seed as ``seed_everything`` recorded it, or ``None`` (not seeded)."""
    value = os.environ.get(SEED_ENV)
    return int(value) if value is not None else None


def start_epoch(trainer: Trainer, first: bool) -> None:
    """Flush the loggers, reseed the streams for this epoch and restart the training iterator.

    Call it last before the epoch's first batch is fetched (``on_train_epoch_start`` of the
    module, which runs after the callbacks').

    Args:
        trainer: the fitting trainer; ``trainer.current_epoch`` is the epoch starting.
        first: whether this is the first epoch of this ``fit`` call. Lightning builds that
            epoch's iterator before ``on_train_start`` (a later epoch's after
            ``on_train_epoch_start``), so it is built again here, after the reseed.
    """
    flush_loggers(trainer)
    seed = run_seed()
    if seed is None:
        return
    seed_streams(epoch_seed(seed, trainer.current_epoch, trainer.global_rank))
    fetcher = trainer.fit_loop._data_fetcher
    if fetcher is None:
        return
    fetcher.teardown()  # ends the workers, persistent ones too: new ones get this epoch's seed
    if first:
        iter(fetcher)  # later epochs: the epoch loop builds the iterator after this hook


def flush_loggers(trainer: Trainer) -> None:
    """Write what every logger holds to disk (``Logger.save``)."""
    for logger in trainer.loggers:
        logger.save()


def drop_events_from(trainer: Trainer, step: int) -> None:
    """Have TensorBoard drop the events at global step ``>= step`` in each TensorBoard log dir.

    Writes the restart marker of ``SummaryWriter(purge_step=step)`` (a ``SessionLog.START``
    event at ``step``) into the writer Lightning already opened: TensorBoard then discards the
    earlier events of that directory from ``step`` on, and keeps what is written after it.
    A fresh log directory has nothing to drop. Rank zero only (the others log nothing); a
    ``tensorboardX`` writer (Lightning's fallback without ``tensorboard``) is left as it is.
    """
    loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    if not loggers or not trainer.is_global_zero:
        return
    try:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    for logger in loggers:
        writer = logger.experiment
        if isinstance(writer, SummaryWriter):
            marker = Event(step=step, session_log=SessionLog(status=SessionLog.START))
            writer._get_file_writer().add_event(marker)


def keep_last_checkpoints(trainer: Trainer) -> None:
    """Have every full checkpoint callback whose ``save_last`` is unset keep ``last.ckpt``.

    That covers Lightning's default ``ModelCheckpoint`` (one full checkpoint per epoch), so
    ``last.ckpt`` is at most an epoch old. Lightning writes ``last.ckpt`` whenever the callback
    saves a checkpoint: a callback monitoring a metric saves it at a new best only. A
    weights-only callback (e.g. :class:`~unlearn.landscape.TrajectoryCheckpoint`) is left as
    it is: its ``last.ckpt`` could not resume a fit.
    """
    for callback in trainer.checkpoint_callbacks:
        if (
            isinstance(callback, ModelCheckpoint)
            and callback.save_last is None
            and not callback.save_weights_only
        ):
            callback.save_last = True
