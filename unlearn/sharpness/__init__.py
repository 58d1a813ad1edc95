"""SAL and UD as plain functions of a model and a probe set (no Lightning inside).

- :func:`compute_sal`: exact per-layer Sharpness-Aware Learnability (``sal.py``), with the
  frozen part's activations cached (``prefix_cache.py``);
- :func:`first_order_sal`: the one-pass estimate, and :func:`spearman` to compare;
- thresholds (``threshold.py``) and #LP / UD from ``sal.csv`` tables (``ud.py``);
- per task of a multi-task model: :func:`per_task_sal`, :func:`task_similarity`
  (``multitask.py``);
- during training: :class:`SalMonitor` (``monitor.py``), the work behind
  :class:`~unlearn.callbacks.SharpnessCallback`: the probe set, the clean reference
  (``reference.py``), the split across processes (``shard.py``), ``sal.csv``
  (``sal_csv.py``) and its settings in ``sal.json`` (``sidecar.py``), a checkpoint's
  metrics (``checkpoint_metrics.py``) and figures (``plots.py``).
"""

from unlearn.sharpness.first_order import first_order_sal, spearman
from unlearn.sharpness.monitor import ProbeSettings, SalMonitor
from unlearn.sharpness.multitask import SALView, per_task_sal, task_similarity
from unlearn.sharpness.sal import (
    LayerSAL,
    SALSettings,
    compute_sal,
    cross_entropy,
    measured_layers,
    model_untouched,
    top1_correct,
)
from unlearn.sharpness.threshold import (
    kmeans_1d,
    mean_threshold,
    percentile_threshold,
    three_means_upper_threshold,
    two_means_threshold,
)
from unlearn.sharpness.ud import SAL_COLUMNS, SalTable, beta, lp_count, thresholds, ud

__all__ = [
    "SAL_COLUMNS",
    "LayerSAL",
    "ProbeSettings",
    "SALSettings",
    "SALView",
    "SalMonitor",
    "SalTable",
    "beta",
    "compute_sal",
    "cross_entropy",
    "first_order_sal",
    "kmeans_1d",
    "lp_count",
    "mean_threshold",
    "measured_layers",
    "model_untouched",
    "per_task_sal",
    "percentile_threshold",
    "spearman",
    "task_similarity",
    "three_means_upper_threshold",
    "thresholds",
    "top1_correct",
    "two_means_threshold",
    "ud",
]
