"""Read scalars back from TensorBoard event files."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series under ``log_dir``, as ``tag -> [(step, value)]``.

    Each directory holding event files is read as TensorBoard reads a run: its files in
    order, with the events a restart marker (``purge_step``) drops left out.
    """
    series: dict[str, list[tuple[int, float]]] = {}
    runs = sorted({events.parent for events in Path(log_dir).rglob("events.out.tfevents.*")})
    for run in runs:
        accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, []).extend(
                (event.step, event.value) for event in accumulator.Scalars(tag)
            )
    return series
