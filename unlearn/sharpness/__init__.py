"""SAL and UD as plain functions of a model and a probe set (no Lightning inside).

- :func:`compute_sal`: exact per-layer Sharpness-Aware Learnability (``sal.py``), with the
  frozen part's activations cached (``prefix_cache.py``);
- :func:`first_order_sal`: the one-pass estimate, and :func:`spearman` to compare;
- thresholds (``threshold.py``) and #LP / UD from ``sal.csv`` tables (``ud.py``).
"""

from unlearn.sharpness.first_order import first_order_sal, spearman
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
    "SALSettings",
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
    "percentile_threshold",
    "spearman",
    "three_means_upper_threshold",
    "thresholds",
    "top1_correct",
    "two_means_threshold",
    "ud",
]
