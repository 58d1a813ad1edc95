"""Which layers make a grid's UD: per layer, how often each condition counts it learnable.

UD is #LP(poisoned) / #LP(clean), where #LP is the mean number of layers per checkpoint
with SAL above the clean run's beta. This script splits that count by layer: for each
finished cell of ``--defense`` it takes the beta of the clean cell of the same seed (the
same 2-means beta as the report's UD), and prints per layer

- ``LP``: the fraction of checkpoints at which the layer's SAL is above that beta, mean over
  seeds (0 = never counted learnable, 1 = at every checkpoint); the column sums are #LP;
- ``SAL``: the layer's median SAL over checkpoints, median over seeds;

and per condition and seed the beta, #LP and UD, so a UD far from 1 can be traced to the
layers that carry it. ``--measure`` picks the SAL table (:data:`MEASURES` of the benchmark
report: headline, heldout, scale_free). Reads only the committed ``sal.csv`` files.

Example::

    python benchmarks/ud_layers.py --config configs/benchmark/fashion_mnist.yaml \\
        > docs/results/fashion_mnist/ud_layers.txt
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

import numpy as np

from unlearn.benchmark.command import layout_of_config
from unlearn.benchmark.grid import CLEAN, Cell, Layout
from unlearn.benchmark.measures import MEASURES
from unlearn.sharpness.ud import SalTable, beta, lp_count, ratio


def read_table(layout: Layout, cell: Cell, measure: str) -> SalTable | None:
    """The cell's SAL table of ``measure``; ``None`` when the cell has not finished."""
    if not layout.metrics_file(cell).is_file():
        return None
    m = MEASURES[measure]
    path = layout.run_dir(cell) / m.sal_file
    return SalTable.read(path, value=m.value) if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the benchmark config")
    parser.add_argument("--defense", default="none")
    parser.add_argument("--measure", choices=list(MEASURES), default="headline")
    args = parser.parse_args()
    layout = layout_of_config(args.config)
    cells = [c for c in layout.cells() if c.defense == args.defense]
    clean = {c.seed: read_table(layout, c, args.measure) for c in cells if c.method == CLEAN}
    lp_rate: dict[str, list[np.ndarray]] = defaultdict(list)
    median_sal: dict[str, list[np.ndarray]] = defaultdict(list)
    per_seed: list[str] = []
    layers: list[str] = []
    numel: np.ndarray | None = None
    for cell in cells:
        reference = clean.get(cell.seed)
        table = read_table(layout, cell, args.measure)
        if table is None or reference is None:
            continue
        layers, numel = reference.layers, reference.numel
        b = beta(reference)
        values = table.aligned(layers)
        lp_rate[cell.method].append((values > b).mean(axis=0))
        median_sal[cell.method].append(np.median(values, axis=0))
        lp, _ = lp_count(table, b)
        lp_clean, _ = lp_count(reference, b)
        per_seed.append(
            f"{cell.method:>13} s{cell.seed}: beta {b:.3g}, #LP {lp:.2f} vs clean "
            f"{lp_clean:.2f}, UD {ratio(lp, lp_clean):.3g}, {len(table.checkpoints)} checkpoints"
        )
    if not lp_rate or numel is None:
        raise SystemExit(f"ud_layers: no finished cell with a clean reference in {layout.root}")
    methods = [m for m in layout.spec.methods if m in lp_rate]
    seeds = {m: len(lp_rate[m]) for m in methods}
    print(f"{layout.spec.name}, defense {args.defense}, measure {args.measure}")
    print("seeds per condition: " + ", ".join(f"{m} {n}" for m, n in seeds.items()))
    print()
    print("LP: fraction of checkpoints above the clean seed's beta (mean over seeds)")
    print("SAL: median over checkpoints (median over seeds)")
    print()
    head = f"{'layer':<22} {'numel':>7} | " + " | ".join(f"{m[:12]:>12}" for m in methods)
    print(head)
    print("-" * len(head))
    for i, name in enumerate(layers):
        cols = []
        for m in methods:
            rate = statistics.fmean(float(r[i]) for r in lp_rate[m])
            sal = statistics.median(float(s[i]) for s in median_sal[m])
            cols.append(f"{rate:4.2f} {sal:7.3g}")
        print(f"{name:<22} {int(numel[i]):>7} | " + " | ".join(f"{c:>12}" for c in cols))
    totals = [f"{statistics.fmean(float(r.sum()) for r in lp_rate[m]):12.2f}" for m in methods]
    print(f"{'#LP (sum of LP)':<22} {'':>7} | " + " | ".join(totals))
    print()
    print("per seed:")
    print("\n".join(per_seed))


if __name__ == "__main__":
    main()
