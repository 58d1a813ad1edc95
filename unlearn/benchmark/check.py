"""Check every config a grid names before anything runs, and read what each task asks for.

Each cell's ``fit`` command and each poison's ``poison`` command is parsed by the parser the
command itself uses (so class paths are resolved and every field is type-checked) without
building anything; a bad config stops the benchmark before its first cell with one line
naming the config and the field. The parsed trainer settings tell the SLURM script what to
request and the runner how to launch a cell that spans several processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from unlearn.benchmark.grid import CLEAN, Cell, Layout
from unlearn.cli import UnlearnCLI, run_lightning
from unlearn.errors import UnlearnError, one_line
from unlearn.models import MODELS
from unlearn.poisons.command import build_parser as poison_parser


@dataclass(frozen=True)
class Footprint:
    """What one task (a cell's fit or a poison) asks of the machines it runs on.

    Args:
        accelerator: the trainer's ``accelerator`` (``cpu``, ``gpu``, ``auto``, ...) or the
            poison's ``device`` (``cpu``, ``cuda``, ``auto``).
        devices: processes per node (the trainer's ``devices``; ``auto``/-1 count as 1).
        nodes: the trainer's ``num_nodes``.
        workers: data loader worker processes of each process.
    """

    accelerator: str
    devices: int = 1
    nodes: int = 1
    workers: int = 0

    @property
    def processes(self) -> int:
        """Processes the task runs in (one per device and node)."""
        return self.devices * self.nodes

    @property
    def uses_gpu(self) -> bool:
        """Whether the task computes on GPUs (``auto`` is taken to mean: where there are)."""
        return self.accelerator not in ("cpu",)


def _device_count(devices: Any) -> int:
    """Processes per node from a trainer's ``devices`` (an int, a list or a string)."""
    if isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return max(1, len([d for d in text.split(",") if d.strip()]))
        devices = int(text) if text.lstrip("-").isdigit() else 1
    return devices if isinstance(devices, int) and devices > 0 else 1


class _ParserBuilt(Exception):
    """Carries the parser out of :class:`_ParserOnly` before anything is parsed."""

    def __init__(self, parser: ArgumentParser) -> None:
        super().__init__("parser built")
        self.parser = parser


class _ParserOnly(UnlearnCLI):
    """The project's CLI stopped once its parser exists; its parsers raise, not exit."""

    def init_parser(self, **kwargs: Any) -> Any:
        return super().init_parser(**{**kwargs, "exit_on_error": False})

    def parse_arguments(self, parser: Any, args: Any) -> None:
        raise _ParserBuilt(parser)


class GridCheck:
    """Parses the configs of a grid's cells and poisons, each distinct one once.

    Args:
        layout: the benchmark's files and spec.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._fit_parser: ArgumentParser | None = None
        self._poison_parser: ArgumentParser | None = None
        self._fits: dict[tuple[str, str, str], Namespace] = {}
        self._poisons: dict[tuple[str, str], Namespace] = {}

    def check(self, cells: list[Cell]) -> None:
        """Parse the fit and poison configs of ``cells``; the first bad one raises UnlearnError."""
        for cell in cells:
            self.fit(cell)
            if cell.method != CLEAN:
                self.poison(cell)

    def fit(self, cell: Cell) -> Namespace:
        """The parsed ``fit`` config of the cell (the same for every seed and method)."""
        key = (cell.data, cell.model, cell.defense)
        if key not in self._fits:
            self._fits[key] = self._parse_fit(cell)
        return self._fits[key]

    def poison(self, cell: Cell) -> Namespace:
        """The parsed ``poison`` config of the cell's data and method."""
        key = (cell.data, cell.method)
        if key not in self._poisons:
            self._poisons[key] = self._parse_poison(cell)
        return self._poisons[key]

    def fit_footprint(self, cell: Cell) -> Footprint:
        """What the cell's trainer asks for."""
        config = self.fit(cell)
        trainer = config.get("trainer") or Namespace()
        data = (config.get("data") or Namespace()).get("init_args") or Namespace()
        return Footprint(
            accelerator=str(trainer.get("accelerator") or "auto"),
            devices=_device_count(trainer.get("devices", 1)),
            nodes=max(1, int(trainer.get("num_nodes") or 1)),
            workers=int(data.get("num_workers") or 0),
        )

    def poison_footprint(self, cell: Cell) -> Footprint:
        """What the poison of the cell's data and method asks for (one process)."""
        config = self.poison(cell)
        data = (config.get("data") or Namespace()).get("init_args") or Namespace()
        return Footprint(
            accelerator=str(config.get("device") or "auto"),
            workers=int(data.get("num_workers") or 0),
        )

    def _parse_fit(self, cell: Cell) -> Namespace:
        if self._fit_parser is None:
            try:
                run_lightning(["fit"], cli_class=_ParserOnly)
            except _ParserBuilt as built:
                self._fit_parser = built.parser
        assert self._fit_parser is not None
        command = self.layout.fit_command(cell)
        args = command[command.index("fit") :]
        where = (
            f"benchmark: fit config '{self.layout.spec.train_configs[cell.data]}' of data "
            f"'{cell.data}' (model '{cell.model}', defense '{cell.defense}', with the "
            f"callbacks and fit_args of the benchmark)"
        )
        try:
            config = self._fit_parser.parse_args(args).fit
        except Exception as err:  # jsonargparse raises ArgumentError, or others for bad files
            raise UnlearnError(f"{where}: {one_line(err)}") from None
        model = (config.get("model") or Namespace()).get("init_args") or Namespace()
        name = model.get("model")
        if isinstance(name, str) and name not in MODELS:
            raise UnlearnError(
                f"{where}: field 'model.init_args.model' (benchmark 'models'): unknown model "
                f"'{name}'; expected one of {sorted(MODELS)}"
            )
        return config

    def _parse_poison(self, cell: Cell) -> Namespace:
        directory = self.layout.poison_dir(cell)  # a missing config file raises here
        if self._poison_parser is None:
            self._poison_parser = poison_parser()
            self._poison_parser.exit_on_error = False
        config = self.layout.poison_config(cell)
        try:
            return self._poison_parser.parse_args(
                ["--config", str(config), "--output_dir", str(directory),
                 *self.layout.spec.poison_args]
            )  # fmt: skip
        except Exception as err:
            raise UnlearnError(
                f"benchmark: poison config '{config}' of data '{cell.data}' and method "
                f"'{cell.method}': {one_line(err)}"
            ) from None
