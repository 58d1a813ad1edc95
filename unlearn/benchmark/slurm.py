"""``--dry_run``: the grid as plain command lines and SLURM job-array scripts.

``slurm.sh`` submits one job array per distinct request (poisons first, cells after them);
each array's own job script ``slurm_{poison,cell}s_K.sh`` carries that request as
``#SBATCH`` lines. Each array task runs ``python -m unlearn benchmark --run_poison N`` or
``--run_cell N``: the runner of a local run, so skipping what is finished, cleaning a killed
cell's partial run, ``error.json`` of a failed cell and poison timings are the same on a
cluster.
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


SUBMITTER = """#!/usr/bin/env bash
# Benchmark '{name}' on SLURM, written by `unlearn benchmark --dry_run` on {date}.
#   bash {script}    (from any directory) submits one job array per request:
{arrays}
# Each array's job script carries its request as #SBATCH lines. Every task runs the
# benchmark's own runner on one poison or one cell:
#   {python} -m unlearn benchmark --config {spec} --output_dir {root} --run_poison N | --run_cell N
# with {python}, the interpreter that wrote these scripts: its environment must be there
# on the compute nodes (or edit PYTHON= in the job scripts). A finished poison or cell is
# skipped, a killed cell's partial run is removed and run again, a failed cell writes
# error.json: run this script again after a cancelled or failed task to finish the grid.
# Requests come from the slurm: section of the benchmark config or else from the cells'
# trainer settings (accelerator, devices, num_nodes, data num_workers).
# Run `--dry_run` again after editing the benchmark config. When the arrays are done:
#   {python} -m unlearn benchmark --config {spec} --output_dir {root} --report_only
set -euo pipefail
mkdir -p {slurm_dir}
poison_jobs=""
{submit_poisons}dependency=""
if [ -n "$poison_jobs" ]; then dependency="--dependency=afterany$poison_jobs"; fi
{submit_cells}"""

SUBMIT = """job=$(sbatch --parsable --array={array} {dependency}{job_script})
echo "submitted {what} as job ${{job%%;*}}"
"""

JOB = """#!/usr/bin/env bash
# {what} of benchmark '{name}', one array task each; submitted by {submitter}
{sbatch_lines}set -euo pipefail
PYTHON={python}
if [ -z "${{SLURM_ARRAY_TASK_ID:-}}" ]; then
  echo "$0 runs as a SLURM array task; submit the grid with: bash {submitter}" >&2
  exit 2
fi
cd {workdir}
exec "$PYTHON" -m unlearn benchmark --config {spec} --output_dir {root}{timeout} \\
  {run} "$SLURM_ARRAY_TASK_ID"
"""


def write_dry_run(layout: Layout, check: GridCheck, timeout: float | None = None) -> list[Path]:
    """Write the grid's SLURM script and what it reads under the layout's root; return the files.

    ``benchmark.yaml`` (the grid as it runs), ``poison_commands.txt`` and ``fit_commands.txt``
    (the plain command of each poison and cell, in task order), ``slurm.sh`` (the submitter)
    and one job script per request group. ``check`` parses every config first: a bad one
    raises before anything is written.
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

    quote = shlex.quote
    common = [
        f"--job-name=unlearn-{spec.name}",
        f"--output={root}/slurm/%x-%A_%a.out",
        *([f"--partition={spec.slurm.partition}"] if spec.slurm.partition else []),
        *([f"--time={spec.slurm.time}"] if spec.slurm.time else []),
        *(line.removeprefix("#SBATCH").strip() for line in spec.slurm.extra),
    ]
    job_values = {
        "name": spec.name,
        "submitter": quote(str(files["script"])),
        "python": quote(sys.executable),
        "workdir": quote(str(Path.cwd())),
        "spec": quote(str(files["spec"])),
        "root": quote(str(root)),
        "timeout": f" --cell_timeout={timeout}" if timeout is not None else "",
    }
    groups = {
        "poison": _groups([poison_request(check.poison_footprint(c), spec.slurm) for c in poisons]),
        "cell": _groups([fit_request(check.fit_footprint(c), spec.slurm) for c in cells]),
    }
    totals = {"poison": len(poisons), "cell": len(cells)}
    for stale in [*root.glob("slurm_poisons_*.sh"), *root.glob("slurm_cells_*.sh")]:
        stale.unlink()  # of an earlier dry run with other request groups
    arrays, submits = [], {"poison": "", "cell": ""}
    for kind, by_request in groups.items():
        for number, (request, tasks) in enumerate(by_request.items(), 1):
            what = f"{kind}s {array_spec(tasks)} of {totals[kind]}"
            job_script = root / f"slurm_{kind}s_{number}.sh"
            sbatch_lines = "".join(f"#SBATCH {o}\n" for o in [*common, *request.options()])
            write_text_atomic(
                job_script,
                JOB.format(what=what, sbatch_lines=sbatch_lines, run=f"--run_{kind}", **job_values),
            )
            job_script.chmod(0o755)
            files[f"{kind}s_{number}"] = job_script
            arrays.append(f"#   {what}: {job_script.name}: {' '.join(request.options())}")
            submits[kind] += SUBMIT.format(
                array=array_spec(tasks),
                dependency="$dependency " if kind == "cell" else "",
                job_script=quote(str(job_script)),
                what=what,
            )
            if kind == "poison":
                submits[kind] += 'poison_jobs="$poison_jobs:${job%%;*}"\n'
    script = SUBMITTER.format(
        name=spec.name,
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        script=files["script"],
        python=sys.executable,
        spec=files["spec"],
        root=root,
        arrays="\n".join(arrays),
        slurm_dir=quote(str(root / "slurm")),
        submit_poisons=submits["poison"],
        submit_cells=submits["cell"],
    )
    write_text_atomic(files["script"], script)
    files["script"].chmod(0o755)
    return list(files.values())
