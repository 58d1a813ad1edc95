"""Drawing figures never switches the user's matplotlib backend (e.g. a notebook's).

Each plotting path runs in a fresh interpreter that selects the ``svg`` backend first, as a
user's session would, then imports and uses the path; the backend must still be ``svg``. A
fresh process matters: a module-level ``matplotlib.use`` fires only at the first import.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PRELUDE = """
import matplotlib
matplotlib.use("svg")
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
out = Path(sys.argv[1])
"""

EPILOGUE = """
print("backend:", matplotlib.get_backend())
"""

PATHS = {
    # the SAL callback in a real (tiny) fit: heatmap and histogram to TensorBoard
    "sal_callback": """
from lightning import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from unlearn.callbacks import SharpnessCallback
from unlearn.data import DigitsDataModule
from unlearn.models import SmallCNN
from unlearn.tasks import ClassificationTask

task = ClassificationTask(model=SmallCNN(10, (1, 32, 32), width=2), num_classes=10,
                          image_shape=(1, 32, 32))
callback = SharpnessCallback(probe_size=8, probe_batch_size=None, iters=1, layers="classifier")
trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, accelerator="cpu",
                  logger=TensorBoardLogger(out, name="run"), callbacks=[callback],
                  enable_progress_bar=False, enable_model_summary=False,
                  enable_checkpointing=False, default_root_dir=out)
trainer.fit(task, datamodule=DigitsDataModule(batch_size=8, augment=False))
assert list(Path(trainer.log_dir).glob("events.out.tfevents.*")), "no TensorBoard events"
""",
    # the SAL figures themselves, rendered by TensorBoard's add_figure and by savefig
    "sal_figures": """
import numpy as np
from torch.utils.tensorboard import SummaryWriter
from unlearn.sharpness.plots import sal_heatmap, task_similarity_figure
from unlearn.sharpness.ud import SalTable

table = SalTable("t", [(0, 1), (1, 2)], ["a", "b", "c"], np.array([4, 4, 4]),
                 np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]))
writer = SummaryWriter(str(out))
writer.add_figure("sal/heatmap", sal_heatmap(table), global_step=2)
writer.add_figure("sal/task_similarity",
                  task_similarity_figure(["x", "y"], np.array([[1.0, 0.5], [0.5, 1.0]])))
writer.close()
sal_heatmap(table, "x").savefig(out / "heatmap.png")
assert (out / "heatmap.png").stat().st_size > 1000
""",
    # the benchmark report's figures
    "benchmark_report": """
import csv
from unlearn.benchmark.grid import BenchmarkSpec, Cell, Layout
from unlearn.benchmark.report import make_figures
from unlearn.sharpness import SAL_COLUMNS

spec = BenchmarkSpec(name="t", train_configs={"digits": "x.yaml"}, methods=["clean", "em"])
layout = Layout(out, spec)
rows = []
for method, scale in (("clean", 1.0), ("em", 0.2)):
    cell = Cell("digits", "small_cnn", "none", 0, method)
    path = layout.sal_file(cell)
    path.parent.mkdir(parents=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SAL_COLUMNS)
        for step in (1, 2):
            for i, layer in enumerate(("a", "b", "c")):
                sal = scale * (i + 1) / step
                writer.writerow([step - 1, step, layer, 4, sal, sal, 0.0, 0.0, 2.3, 0.1])
    rows.append({**cell.keys(), "status": "ok", "ud": scale, "test_acc": 0.9})
names = make_figures(layout, rows, out, ["none"])
assert names == ["ud_bars.png", "ud_curves.png", "sal_heatmaps.png"], names
""",
    # the landscape figures, saved and logged
    "landscape": """
from unlearn.landscape.plots import log_figures, plot_contours, plot_surface_1d, save_figure

alphas = torch.linspace(-1, 1, 5)
fig = plot_surface_1d(alphas, {"clean": alphas**2 + 1.0})
path = save_figure(fig, out / "surface.png")
grid = torch.rand(4, 5) + 0.5
save_figure(plot_contours(torch.linspace(-1, 1, 5), torch.linspace(-1, 1, 4), {"p": grid}),
            out / "contours.png")
log_figures(out / "tb", {"surface": path})
""",
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n == "sal_callback" else n for n in PATHS],
)
def test_plotting_keeps_the_users_backend(name: str, tmp_path: Path) -> None:
    script = textwrap.dedent(PRELUDE) + textwrap.dedent(PATHS[name]) + textwrap.dedent(EPILOGUE)
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backend: svg" in result.stdout, (result.stdout[-500:], result.stderr[-1500:])
