"""Thresholds that separate learnable from unlearnable layers by their SAL values.

All k-means here are exact: in one dimension the optimal clusters are contiguous runs of
the sorted values, so dynamic programming over the split points finds the global optimum
of the within-cluster sum of squares (no random restarts, unlike ``sklearn.KMeans`` in the
paper's public code).

Every function here refuses ``nan`` and ``inf`` (``ValueError``); the callers check their
tables first and name the file (:meth:`~unlearn.sharpness.ud.SalTable.divergence`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def kmeans_1d(values: Sequence[float] | np.ndarray, k: int) -> np.ndarray:
    """Exact 1-D k-means: the cluster centres that minimise the sum of squared errors.

    Args:
        values: The values, any order, at least ``k`` of them.
        k: Number of clusters.

    Returns:
        The ``k`` centres in increasing order (``float64``). Ties between equally good
        splits go to the earliest split point.

    Raises:
        ValueError: Fewer than ``k`` values, or a non-finite value.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = x.size
    if k < 1 or n < k:
        raise ValueError(f"{k}-means needs at least {k} values, got {n}")
    if not np.all(np.isfinite(x)):
        raise ValueError("k-means got a non-finite value")
    s1 = np.concatenate([[0.0], np.cumsum(x)])
    s2 = np.concatenate([[0.0], np.cumsum(x * x)])

    def sse(i: int, j: int) -> float:
        """Sum of squared errors of x[i:j] around its mean."""
        total = s1[j] - s1[i]
        return max(s2[j] - s2[i] - total * total / (j - i), 0.0)

    # cost[c][j]: best SSE of x[:j] in c + 1 clusters; cut[c][j]: start of the last cluster.
    cost = np.full((k, n + 1), np.inf)
    cut = np.zeros((k, n + 1), dtype=np.int64)
    for j in range(1, n + 1):
        cost[0][j] = sse(0, j)
    for c in range(1, k):
        for j in range(c + 1, n + 1):
            for i in range(c, j):
                candidate = cost[c - 1][i] + sse(i, j)
                if candidate < cost[c][j]:
                    cost[c][j], cut[c][j] = candidate, i
    bounds = [n]
    for c in range(k - 1, 0, -1):
        bounds.append(int(cut[c][bounds[-1]]))
    bounds.append(0)
    bounds.reverse()
    return np.array([x[bounds[i] : bounds[i + 1]].mean() for i in range(k)])


def two_means_threshold(values: Sequence[float] | np.ndarray) -> float:
    """Midpoint of the two centres of the exact 1-D 2-means of ``values``."""
    low, high = kmeans_1d(values, 2)
    return float((low + high) / 2)


def three_means_upper_threshold(values: Sequence[float] | np.ndarray) -> float:
    """Midpoint of the middle and upper centres of the exact 1-D 3-means of ``values``."""
    _, mid, high = kmeans_1d(values, 3)
    return float((mid + high) / 2)


def mean_threshold(per_checkpoint: Sequence[Sequence[float]] | np.ndarray, k: int = 2) -> float:
    """beta: the k-means threshold of each checkpoint's layer SALs, averaged over checkpoints.

    Args:
        per_checkpoint: SAL values, one row of layers per checkpoint, ``[T, L]``.
        k: 2 for the paper's threshold, 3 for the upper boundary of a 3-means.
    """
    rule = {2: two_means_threshold, 3: three_means_upper_threshold}[k]
    rows = [np.asarray(r, dtype=np.float64) for r in per_checkpoint]
    if not rows:
        raise ValueError("a threshold needs at least one checkpoint")
    return float(np.mean([rule(r) for r in rows]))


def percentile_threshold(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile (linear interpolation) of all values pooled.

    Raises:
        ValueError: No value, or a non-finite one.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("a percentile needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError("a percentile got a non-finite value")
    return float(np.percentile(x, q))
