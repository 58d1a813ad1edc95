"""``--dry_run``: the grid as plain command lines and a SLURM job-array script.

Each array task runs ``python -m unlearn benchmark --run_poison N`` or ``--run_cell N``: the
runner of a local run, so skipping what is finished, cleaning a killed cell's partial run,
``error.json`` of a failed cell and poison timings are the same on a cluster.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import yaml

from unlearn.benchmark.check import Footprint, GridCheck
from unlearn.benchmark.grid import Layout, SlurmSpec, shell_line
from unlearn.io import write_text_atomic


@dataclasses.dataclass(frozen=True)
class Request:
    """What one array task asks SLURM for (``sbatch`` options).

    Args:
        nodes: ``--nodes``.
        tasks_per_node: ``--ntasks-per-node`` (one per device of the cell's trainer).
        gpus_per_node: ``--gres=gpu:N`` (left out when 0).
        cpus_per_task: ``--cpus-per-task``.
    """

    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int

    def options(self) -> list[str]:
        """The ``sbatch`` options."""
        options = [
            f"--nodes={self.nodes}",
            f"--ntasks-per-node={self.tasks_per_node}",
            f"--cpus-per-task={self.cpus_per_task}",
        ]
        if self.gpus_per_node:
            options.append(f"--gres=gpu:{self.gpus_per_node}")
        return options


def fit_request(footprint: Footprint, slurm: SlurmSpec) -> Request:
    """A cell's request: one task per device, GPUs unless the trainer runs on CPU."""
    gpus = slurm.gpus if slurm.gpus is not None else footprint.devices * footprint.uses_gpu
    return Request(
        nodes=footprint.nodes,
        tasks_per_node=footprint.devices,
        gpus_per_node=gpus,
        cpus_per_task=slurm.cpus_per_task or footprint.workers + 1,
    )


def poison_request(footprint: Footprint, slurm: SlurmSpec) -> Request:
    """A poison's request: one task, one GPU unless it computes on CPU or ``slurm.gpus`` is 0."""
    gpus = int(footprint.uses_gpu and (slurm.gpus is None or slurm.gpus > 0))
    return Request(1, 1, gpus, slurm.cpus_per_task or footprint.workers + 1)


def srun_prefix(footprint: Footprint, environ: Mapping[str, str] = os.environ) -> list[str]:
    """``srun ...`` to put before a cell's command inside a SLURM job when it spans processes.

    Under ``srun`` every process gets ``SLURM_PROCID``/``SLURM_LOCALID``/``SLURM_NTASKS``, from
    which Lightning's SLURM environment connects the ranks; outside SLURM, or for a cell of
    one process, the command runs as it is (Lightning starts its own ranks locally).
    """
    if footprint.processes <= 1 or "SLURM_JOB_ID" not in environ:
        return []
    prefix = [
        "srun",
        f"--nodes={footprint.nodes}",
        f"--ntasks={footprint.processes}",
        f"--ntasks-per-node={footprint.devices}",
        "--kill-on-bad-exit=1",
    ]
    if environ.get("SLURM_CPUS_PER_TASK"):  # newer srun does not inherit it from sbatch
        prefix.append(f"--cpus-per-task={environ['SLURM_CPUS_PER_TASK']}")
    return prefix


def array_spec(numbers: list[int]) -> str:
    """``--array`` value of task numbers, ranges joined: ``[1, 2, 3, 7]`` -> ``"1-3,7"``."""
    parts: list[str] = []
    start = previous = numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if number is not None:
            start = previous = number
    return ",".join(parts)


def _groups(requests: list[Request]) -> dict[Request, list[int]]:
    """Task numbers (1-based) by request, in order of first appearance."""
    groups: dict[Request, list[int]] = {}
    for number, request in enumerate(requests, 1):
        groups.setdefault(request, []).append(number)
    return groups


HEADER = """#!/usr/bin/env bash
# Benchmark '{name}' on SLURM, written by `unlearn benchmark --dry_run` on {date}.
#   bash {script}    (or sbatch it; from any directory) submits the job arrays below.
# Every task runs the benchmark's own runner on one poison or one cell:
#   {python} -m unlearn benchmark --config {spec} --output_dir {root} --run_poison N | --run_cell N
# with {python}, the interpreter that wrote this script: its environment must be there
# on the compute nodes (or edit PYTHON below). A finished poison or cell is skipped, a
# killed cell's partial run is removed and run again, a failed cell writes error.json:
# resubmit this script after a cancelled or failed task to finish the grid.
# Requests, from the slurm: section of the benchmark config or else derived from the cells'
# trainer settings (accelerator, devices, num_nodes, data num_workers):
{arrays}
# Run `--dry_run` again after editing the benchmark config. When the arrays are done:
#   {python} -m unlearn benchmark --config {spec} --output_dir {root} --report_only
"""

BODY = """set -euo pipefail
PYTHON={python}
if [ -z "${{SLURM_ARRAY_TASK_ID:-}}" ]; then
  script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"  # resolved before any cd
  mkdir -p {slurm_dir}
  poison_jobs=""
{submit_poisons}  dependency=""
  if [ -n "$poison_jobs" ]; then dependency="--dependency=afterany$poison_jobs"; fi
{submit_cells}  exit 0
fi
case "${{1:-}}" in
  poison) run=--run_poison ;;
  cell) run=--run_cell ;;
  *) echo "usage: sbatch --array=... $0 poison|cell" >&2; exit 2 ;;
esac
cd {workdir}
exec "$PYTHON" -m unlearn benchmark --config {spec} --output_dir {root}{timeout} \\
  "$run" "$SLURM_ARRAY_TASK_ID"
"""

SUBMIT = """  job=$(sbatch --parsable --array={array} {options} {dependency}"$script" {kind})
  echo "submitted {what} as job ${{job%%;*}}"
"""


def write_dry_run(layout: Layout, check: GridCheck, timeout: float | None = None) -> list[Path]:
    """Write the grid's SLURM script and what it reads under the layout's root; return the files.

    ``benchmark.yaml`` (the grid as it runs), ``poison_commands.txt`` and ``fit_commands.txt``
    (the plain command of each poison and cell, in task order) and ``slurm.sh``. ``check``
    parses every config first: a bad one raises before anything is written.
    """
    cells, poisons = layout.cells(), layout.poisons()
    check.check(cells)
    layout = Layout(layout.root.resolve(), layout.spec)  # the tasks run from any directory
    spec = layout.spec
    root = layout.root.resolve()
    files = {
        "spec": root / "benchmark.yaml",
        "poisons": root / "poison_commands.txt",
        "fits": root / "fit_commands.txt",
        "script": root / "slurm.sh",
    }
    write_text_atomic(files["spec"], yaml.safe_dump(dataclasses.asdict(spec), sort_keys=False))
    poison_lines = [shell_line(layout.poison_command(cell) or []) for cell in poisons]
    write_text_atomic(files["poisons"], "".join(f"{line}\n" for line in poison_lines))
    fit_lines = [shell_line(layout.fit_command(cell)) for cell in cells]
    write_text_atomic(files["fits"], "".join(f"{line}\n" for line in fit_lines))

    slurm = spec.slurm
    poison_groups = _groups([poison_request(check.poison_footprint(c), slurm) for c in poisons])
    cell_groups = _groups([fit_request(check.fit_footprint(c), spec.slurm) for c in cells])
    arrays, submit_poisons, submit_cells = [], "", ""
    for request, numbers in poison_groups.items():
        what = f"poisons {array_spec(numbers)} of {len(poisons)}"
        arrays.append(f"#   {what}: {' '.join(request.options())}")
        submit_poisons += SUBMIT.format(
            array=array_spec(numbers), options=" ".join(request.options()), dependency="",
            kind="poison", what=what,
        ) + '  poison_jobs="$poison_jobs:${job%%;*}"\n'  # fmt: skip
    for request, numbers in cell_groups.items():
        what = f"cells {array_spec(numbers)} of {len(cells)}"
        arrays.append(f"#   {what}: {' '.join(request.options())}")
        submit_cells += SUBMIT.format(
            array=array_spec(numbers), options=" ".join(request.options()),
            dependency="$dependency ", kind="cell", what=what,
        )  # fmt: skip
    quote = shlex.quote
    lines = [
        f"--job-name=unlearn-{spec.name}",
        f"--output={root}/slurm/%x-%A_%a.out",
        *([f"--partition={spec.slurm.partition}"] if spec.slurm.partition else []),
        *([f"--time={spec.slurm.time}"] if spec.slurm.time else []),
        *(line.removeprefix("#SBATCH").strip() for line in spec.slurm.extra),
    ]
    script = (
        HEADER.format(
            name=spec.name,
            date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            script=files["script"],
            python=sys.executable,
            spec=files["spec"],
            root=root,
            arrays="\n".join(arrays),
        )
        + "".join(f"#SBATCH {line}\n" for line in lines)
        + BODY.format(
            python=quote(sys.executable),
            slurm_dir=quote(str(root / "slurm")),
            submit_poisons=submit_poisons,
            submit_cells=submit_cells,
            workdir=quote(str(Path.cwd())),
            spec=quote(str(files["spec"])),
            root=quote(str(root)),
            timeout=f" --cell_timeout={timeout}" if timeout is not None else "",
        )
    )
    write_text_atomic(files["script"], script)
    files["script"].chmod(0o755)
    return list(files.values())
