"""The benchmark grid: its specification, its cells, and the plain commands of each cell."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.benchmark.measures import MEASURES
from unlearn.errors import UnlearnError, check_number

#: the method name that means "no poison" (the clean reference of every other method)
CLEAN = "clean"
#: the defense name that means "no defense"
NO_DEFENSE = "none"
#: what a name of the grid (data, method, model, defense, the benchmark's) may be made of
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: The kinds of a pre-registered hypothesis -> the fields its entry must give besides ``id``
#: and ``kind`` (evaluated by :mod:`unlearn.benchmark.hypotheses`)
HYPOTHESIS_KINDS: dict[str, tuple[str, ...]] = {
    "below_floor": ("methods",),
    "not_below_floor": ("methods",),
    "above_one_and_floor": ("methods",),
    "defense_raises": ("methods", "defense"),
    "spearman_above": ("threshold",),
}
#: The fields any hypothesis may give, with their defaults
HYPOTHESIS_DEFAULTS: dict[str, Any] = {"measure": "headline", "defense": NO_DEFENSE,
                                       "alpha": 0.05}  # fmt: skip


@dataclass
class SlurmSpec:
    """What the SLURM script (``--dry_run``) requests; ``None`` fields are derived or left out.

    Args:
        partition: ``--partition`` of every task (``None``: the cluster's default).
        gpus: GPUs per node of each cell's task (``0``: a CPU cluster). ``None``: the cell's
            ``trainer.devices`` unless its ``trainer.accelerator`` is ``cpu`` (``auto`` is
            taken as GPU). A poison task gets one GPU unless its ``device`` is ``cpu`` or
            ``gpus`` is 0.
        cpus_per_task: ``--cpus-per-task`` of every task (``None``: the task's data loader
            workers + 1).
        time: ``--time`` of every task, e.g. ``"24:00:00"`` (``None``: the partition's limit).
        extra: more ``#SBATCH`` lines, e.g. ``["--account=lab", "--qos=long"]``.
    """

    partition: str | None = None
    gpus: int | None = None
    cpus_per_task: int | None = None
    time: str | None = None
    extra: list[str] = field(default_factory=list)


@dataclass
class BenchmarkSpec:
    """What a benchmark runs: every combination of data x model x method x defense x seed.

    Args:
        name: the benchmark's name (default output directory ``runs/benchmark/<name>``).
        train_configs: data set name -> the ``fit`` config that trains on it.
        poison_configs: template of the ``poison`` config of a data set and method, with
            ``{data}`` and ``{method}`` placeholders.
        methods: poison methods; ``clean`` trains without poison and is the UD reference.
        models: backbone names given to ``--model.init_args.model``.
        defenses: defense name -> list of defense specs (``class_path``/``init_args``);
            ``none`` maps to an empty list.
        seeds: training seeds (``--seed_everything``); poisons use their config's own seed.
        callbacks: callback presets added to every fit with ``--config`` (SAL by default).
        fit_args: extra arguments of every ``fit`` command (e.g. ``--trainer.max_epochs=5``).
        poison_args: extra arguments of every ``poison`` command.
        slurm: what the SLURM script of ``--dry_run`` requests (see :class:`SlurmSpec`).
        defense_methods: defense name -> the methods it is applied to (default: every
            method); each list must hold ``clean``, the reference of that defense's UDs.
        output_dir: where the grid writes its cells, poisons and report (default
            ``runs/benchmark/<name>``). A path inside the repository keeps the small text
            results under version control (see docs/benchmark.md).
        hypotheses: the pre-registered hypotheses the report answers, each a mapping with
            ``id``, ``kind`` (one of :data:`HYPOTHESIS_KINDS`) and that kind's fields, and
            optionally ``measure``, ``defense``, ``alpha`` (:data:`HYPOTHESIS_DEFAULTS`).
            They change no cell, command or poison.
    """

    name: str = "benchmark"
    train_configs: dict[str, str] = field(default_factory=dict)
    poison_configs: str = "configs/{data}/poison_{method}.yaml"
    methods: list[str] = field(default_factory=lambda: [CLEAN])
    models: list[str] = field(default_factory=lambda: ["small_cnn"])
    defenses: dict[str, list[dict]] = field(default_factory=lambda: {NO_DEFENSE: []})
    seeds: list[int] = field(default_factory=lambda: [0])
    callbacks: list[str] = field(default_factory=lambda: ["callbacks/sal.yaml"])
    fit_args: list[str] = field(default_factory=list)
    poison_args: list[str] = field(default_factory=list)
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    defense_methods: dict[str, list[str]] = field(default_factory=dict)
    output_dir: str | None = None
    hypotheses: list[dict] = field(default_factory=list)

    def check(self) -> None:
        """Refuse an empty or inconsistent grid with a message naming the field."""
        if not self.train_configs:
            raise UnlearnError("benchmark: 'train_configs' is empty; map a data name to a config")
        for key in ("methods", "models", "defenses", "seeds"):
            if not getattr(self, key):
                raise UnlearnError(f"benchmark: '{key}' is empty")
        named = {"name": [self.name], "train_configs": list(self.train_configs)}
        named |= {"methods": self.methods, "models": self.models, "defenses": list(self.defenses)}
        for key, names in named.items():
            for name in names:
                if not isinstance(name, str) or not NAME_PATTERN.match(name) or "__" in name:
                    raise UnlearnError(
                        f"benchmark: {key}: name {name!r} may only use letters, digits and "
                        "single '_', '.' or '-' (it names directories; '__' separates the "
                        "keys of a cell's id)"
                    )
            if len(set(names)) != len(names):
                raise UnlearnError(f"benchmark: '{key}' names one entry twice: {names}")
        if len(set(self.seeds)) != len(self.seeds):
            raise UnlearnError(f"benchmark: 'seeds' names one seed twice: {self.seeds}")
        if CLEAN not in self.methods:
            raise UnlearnError(
                f"benchmark: 'methods' must include '{CLEAN}', the reference UD is measured "
                f"against; found {self.methods}"
            )
        for defense, methods in self.defense_methods.items():
            where = f"benchmark: defense_methods.{defense}"
            if defense not in self.defenses:
                raise UnlearnError(
                    f"{where}: no such defense; expected one of {list(self.defenses)}"
                )
            unknown = [m for m in methods if m not in self.methods]
            if unknown:
                raise UnlearnError(f"{where}: {unknown} are not in 'methods' {self.methods}")
            if CLEAN not in methods:
                raise UnlearnError(
                    f"{where}: must include '{CLEAN}', the reference of this defense's UDs; "
                    f"found {methods}"
                )
        ids: set[str] = set()
        for i, entry in enumerate(self.hypotheses):
            self._check_hypothesis(i, entry, ids)
            ids.add(entry["id"])
        for name, path in self.train_configs.items():
            if not Path(path).is_file():
                raise UnlearnError(f"benchmark: train_configs.{name}: file '{path}' not found")
        for path in self.callbacks:
            if not Path(path).is_file():
                raise UnlearnError(f"benchmark: callbacks: file '{path}' not found")
        slurm = self.slurm
        if slurm.gpus is not None and slurm.gpus < 0:
            raise UnlearnError(f"benchmark: slurm.gpus must be >= 0; found {slurm.gpus}")
        if slurm.cpus_per_task is not None and slurm.cpus_per_task < 1:
            raise UnlearnError(
                f"benchmark: slurm.cpus_per_task must be >= 1; found {slurm.cpus_per_task}"
            )

    def _check_hypothesis(self, i: int, entry: Any, ids: set[str]) -> None:
        """Refuse entry ``i`` of :attr:`hypotheses` naming ``hypotheses[i].field``.

        ``ids``: the ids of the entries before it (an id names one hypothesis).
        """
        where = f"benchmark: hypotheses[{i}]"
        if not isinstance(entry, dict):
            raise UnlearnError(f"{where}: expected a mapping with 'id' and 'kind'; found {entry!r}")
        kind = entry.get("kind")
        if kind not in HYPOTHESIS_KINDS:
            raise UnlearnError(
                f"{where}.kind: expected one of {list(HYPOTHESIS_KINDS)}; found {kind!r}"
            )
        name = entry.get("id")
        if not isinstance(name, str) or not name.strip():
            raise UnlearnError(f"{where}.id: expected a name such as 'H1'; found {name!r}")
        if name in ids:
            raise UnlearnError(f"{where}.id: expected an id of its own; found {name!r} twice")
        needed = HYPOTHESIS_KINDS[kind]
        allowed = ["id", "kind", *needed, *(k for k in HYPOTHESIS_DEFAULTS if k not in needed)]
        for key in entry:
            if key not in allowed:
                raise UnlearnError(
                    f"{where}.{key}: expected only the fields {allowed} for kind '{kind}'; "
                    f"found {key!r}"
                )
        for key in needed:
            if key not in entry:
                raise UnlearnError(f"{where}.{key}: expected for kind '{kind}'; found none")
        measure = entry.get("measure", HYPOTHESIS_DEFAULTS["measure"])
        if measure not in MEASURES:
            raise UnlearnError(
                f"{where}.measure: expected one of {list(MEASURES)}; found {measure!r}"
            )
        alpha = entry.get("alpha", HYPOTHESIS_DEFAULTS["alpha"])
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise UnlearnError(f"{where}.alpha: expected a number in (0, 1); found {alpha!r}")
        check_number("", f"{where}.alpha", alpha, above=0, below=1)
        defense = entry.get("defense", HYPOTHESIS_DEFAULTS["defense"])
        if defense not in self.defenses:
            default = "" if "defense" in entry else " (the default)"
            raise UnlearnError(
                f"{where}.defense: expected one of {list(self.defenses)}; found "
                f"{defense!r}{default}"
            )
        if kind == "defense_raises" and (defense == NO_DEFENSE or NO_DEFENSE not in self.defenses):
            raise UnlearnError(
                f"{where}.defense: expected a defense other than '{NO_DEFENSE}' (compared with "
                f"the grid's '{NO_DEFENSE}' cells, which 'defenses' must have); found {defense!r}"
            )
        if "methods" in needed:
            self._check_hypothesis_methods(where, entry["methods"], kind, defense)
        if kind == "spearman_above":
            threshold = entry["threshold"]
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
                raise UnlearnError(
                    f"{where}.threshold: expected a number in [-1, 1); found {threshold!r}"
                )
            check_number("", f"{where}.threshold", threshold, minimum=-1, below=1)

    def _check_hypothesis_methods(self, where: str, methods: Any, kind: str, defense: str) -> None:
        """Refuse ``methods`` unless poisoned methods run under ``defense`` (and without one).

        The second only for ``defense_raises``, which compares the two.
        """
        if not isinstance(methods, list) or not methods:
            raise UnlearnError(
                f"{where}.methods: expected a non-empty list of methods; found {methods!r}"
            )
        defenses = [defense, NO_DEFENSE] if kind == "defense_raises" else [defense]
        for method in methods:
            if method not in self.methods or method == CLEAN:
                poisoned = [m for m in self.methods if m != CLEAN]
                raise UnlearnError(
                    f"{where}.methods: expected methods of the grid {poisoned}; found {method!r}"
                )
            for name in defenses:
                run = self.defense_methods.get(name, self.methods)
                if method not in run:
                    raise UnlearnError(
                        f"{where}.methods: expected methods the grid runs with defense "
                        f"'{name}' {[m for m in run if m != CLEAN]}; found {method!r}"
                    )


@dataclass(frozen=True, order=True)
class Cell:
    """One run of the grid."""

    data: str
    model: str
    defense: str
    seed: int
    method: str

    @property
    def id(self) -> str:
        """Directory-safe name, e.g. ``digits__small_cnn__em__none__s0``."""
        return f"{self.data}__{self.model}__{self.method}__{self.defense}__s{self.seed}"

    def reference(self) -> Cell:
        """The clean cell of the same data, model, defense and seed."""
        return Cell(self.data, self.model, self.defense, self.seed, CLEAN)

    def keys(self) -> dict[str, str | int]:
        """The grid keys as a row."""
        return {
            "data": self.data,
            "model": self.model,
            "method": self.method,
            "defense": self.defense,
            "seed": self.seed,
        }


class Layout:
    """Where a benchmark keeps its files under ``root``.

    ``poisons/<data>__<method>__<hash>/`` (shared by every cell that uses that poison) with
    its ``.log``, ``.seconds.json`` and ``.lock`` beside it, ``cells/<cell id>/run/`` (the
    fit's log directory: ``metrics.json``, ``sal.csv``, TensorBoard events, checkpoints),
    ``cells/<cell id>/fit.log``, ``cells/<cell id>/error.json``, ``cells/<cell id>/cell.lock``,
    and ``benchmark.lock`` (held by the runner that works on the grid).
    """

    def __init__(self, root: Path, spec: BenchmarkSpec, python: str = sys.executable) -> None:
        self.root = root
        self.spec = spec
        self.python = python

    def cells(self) -> list[Cell]:
        """Every cell, clean references first within each (data, model, defense, seed)."""
        spec = self.spec
        order = {m: (0 if m == CLEAN else 1, i) for i, m in enumerate(spec.methods)}
        cells = [
            Cell(data, model, defense, seed, method)
            for data in spec.train_configs
            for model in spec.models
            for defense in spec.defenses
            for seed in spec.seeds
            for method in spec.defense_methods.get(defense, spec.methods)
        ]
        return sorted(cells, key=lambda c: (c.data, c.model, c.defense, c.seed, order[c.method]))

    def poisons(self) -> list[Cell]:
        """One cell per distinct poison (the first that uses it), in the order of :meth:`cells`.

        ``--run_poison N`` generates the poison of the N-th (1-based).
        """
        seen: dict[tuple[str, str], Cell] = {}
        for cell in self.cells():
            if cell.method != CLEAN:
                seen.setdefault((cell.data, cell.method), cell)
        return list(seen.values())

    def poison_number(self, cell: Cell) -> int:
        """The 1-based number of the poison of a poisoned cell in :meth:`poisons`."""
        keys = [(c.data, c.method) for c in self.poisons()]
        return keys.index((cell.data, cell.method)) + 1

    def lock_file(self) -> Path:
        """Held exclusively by a runner of the whole grid, shared by array tasks."""
        return self.root / "benchmark.lock"

    def cell_dir(self, cell: Cell) -> Path:
        """The cell's directory."""
        return self.root / "cells" / cell.id

    def run_dir(self, cell: Cell) -> Path:
        """The fit's log directory."""
        return self.cell_dir(cell) / "run"

    def metrics_file(self, cell: Cell) -> Path:
        """Written by ``fit --test_after_fit`` when the cell has finished."""
        return self.run_dir(cell) / "metrics.json"

    def sal_file(self, cell: Cell) -> Path:
        """The SAL log of the cell's run."""
        return self.run_dir(cell) / "sal.csv"

    def poison_used_file(self, cell: Cell) -> Path:
        """Which poison a finished poisoned cell trained on (written by the runner)."""
        return self.run_dir(cell) / "poison.json"

    def error_file(self, cell: Cell) -> Path:
        """Written when the cell failed."""
        return self.cell_dir(cell) / "error.json"

    def fit_log(self, cell: Cell) -> Path:
        """The output of the cell's fit runs (appended, one ``$ command`` line per run)."""
        return self.cell_dir(cell) / "fit.log"

    def cell_lock(self, cell: Cell) -> Path:
        """Held by the array task that runs the cell."""
        return self.cell_dir(cell) / "cell.lock"

    def poison_log(self, poison: Path) -> Path:
        """The output of the poison's runs."""
        return poison.parent / f"{poison.name}.log"

    def poison_timing(self, poison: Path) -> Path:
        """Seconds the poison took, written when it was generated."""
        return poison.parent / f"{poison.name}.seconds.json"

    def poison_lock(self, poison: Path) -> Path:
        """Held by the array task that generates the poison."""
        return poison.parent / f"{poison.name}.lock"

    def poison_config(self, cell: Cell) -> Path:
        """The poison config of the cell's data and method."""
        return Path(self.spec.poison_configs.format(data=cell.data, method=cell.method))

    def poison_dir(self, cell: Cell) -> Path | None:
        """The poison store of the cell (``None`` for clean cells), keyed by content hash."""
        if cell.method == CLEAN:
            return None
        config = self.poison_config(cell)
        if not config.is_file():
            raise UnlearnError(
                f"benchmark: poison config '{config}' for data '{cell.data}' and method "
                f"'{cell.method}' not found (template: '{self.spec.poison_configs}')"
            )
        digest = hashlib.sha256(config.read_bytes())
        digest.update(json.dumps(self.spec.poison_args).encode())
        return self.root / "poisons" / f"{cell.data}__{cell.method}__{digest.hexdigest()[:12]}"

    def poison_command(self, cell: Cell) -> list[str] | None:
        """``python -m unlearn poison ...`` for the cell's poison (``None`` when clean)."""
        directory = self.poison_dir(cell)
        if directory is None:
            return None
        return [
            self.python, "-m", "unlearn", "poison",
            "--config", str(self.poison_config(cell)),
            "--output_dir", str(directory),
            *self.spec.poison_args,
        ]  # fmt: skip

    def fit_command(self, cell: Cell) -> list[str]:
        """``python -m unlearn fit ...`` that trains, tests and measures SAL for the cell."""
        spec = self.spec
        # the logger's save_dir is linked to --trainer.default_root_dir by the CLI
        logger = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"name": "", "version": "run"},
        }
        command = [self.python, "-m", "unlearn", "fit", "--config", spec.train_configs[cell.data]]
        for preset in spec.callbacks:
            command += ["--config", preset]
        command += [
            *spec.fit_args,
            f"--model.init_args.model={cell.model}",
            f"--seed_everything={cell.seed}",
            f"--trainer.logger={json.dumps(logger)}",
            f"--trainer.default_root_dir={self.cell_dir(cell)}",
            "--test_after_fit=true",
        ]
        poison = self.poison_dir(cell)
        if poison is not None:
            command.append(f"--data.init_args.poison={poison}")
        defenses = spec.defenses[cell.defense] or []
        if defenses:
            command.append(f"--model.init_args.defenses={json.dumps(defenses)}")
        return command


def shell_line(command: list[str]) -> str:
    """A command as one line a shell runs as is."""
    return shlex.join(command)
