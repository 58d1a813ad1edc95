"""``--dry_run``: the grid as plain command lines and a SLURM job-array script."""

from __future__ import annotations

from pathlib import Path

from unlearn.benchmark.grid import Layout, shell_line
from unlearn.io import write_text_atomic

SLURM_TEMPLATE = """#!/usr/bin/env bash
# Runs the benchmark '{name}' on a SLURM cluster: `bash {script}` submits two job arrays,
# one task per poison, then one task per cell once every poison exists (afterok). Each task
# runs one line of {poisons} or {fits}. Adjust the #SBATCH lines to your cluster; a cell's
# fit can itself use several GPUs through its trainer config (strategy ddp, devices N).
# When the arrays are done, from any machine that sees {root}:
#   python -m unlearn benchmark --config {config} --output_dir {root} --report_only
#SBATCH --job-name=unlearn-{name}
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output={root}/slurm/%x-%A_%a.out
set -euo pipefail
cd {workdir}
if [ -z "${{SLURM_ARRAY_TASK_ID:-}}" ]; then
  mkdir -p {root}/slurm
  dependency=""
  if [ {n_poisons} -gt 0 ]; then
    poison_job=$(sbatch --parsable --array=1-{n_poisons} "$0" poison)
    dependency="--dependency=afterok:$poison_job"
  fi
  sbatch $dependency --array=1-{n_fits} "$0" fit
  exit 0
fi
list={poisons}
[ "$1" = fit ] && list={fits}
line=$(sed -n "${{SLURM_ARRAY_TASK_ID}}p" "$list")
# a finished cell is never rerun
metrics=$(printf '%s\\n' "$line" | sed -n 's/.*--trainer.default_root_dir=\\([^ ]*\\).*/\\1/p')
if [ -n "$metrics" ] && [ -f "$metrics/run/metrics.json" ]; then exit 0; fi
eval "$line"
"""


def write_dry_run(layout: Layout, config: str) -> list[Path]:
    """Write ``poison_commands.txt``, ``fit_commands.txt`` and ``slurm.sh``; return them."""
    cells = layout.cells()
    poisons: dict[str, str] = {}
    for cell in cells:
        command = layout.poison_command(cell)
        if command is not None:
            poisons.setdefault(str(layout.poison_dir(cell)), shell_line(command))
    fits = [shell_line(layout.fit_command(cell)) for cell in cells]
    root = layout.root
    files = [root / "poison_commands.txt", root / "fit_commands.txt", root / "slurm.sh"]
    write_text_atomic(files[0], "".join(f"{line}\n" for line in poisons.values()))
    write_text_atomic(files[1], "".join(f"{line}\n" for line in fits))
    script = SLURM_TEMPLATE.format(
        name=layout.spec.name,
        script=files[2],
        poisons=files[0],
        fits=files[1],
        root=root,
        config=config,
        workdir=Path.cwd(),
        n_poisons=len(poisons),
        n_fits=len(fits),
    )
    write_text_atomic(files[2], script)
    files[2].chmod(0o755)
    return files
