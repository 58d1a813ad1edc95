"""The noise floor of UD and the permutation test of a condition's UDs against it.

The noise floor is the distribution of UD when nothing is poisoned: the UD of every clean
run (seed) ``i`` against every other clean run ``j`` (``j``'s beta), all ordered pairs
``i != j`` (``k (k - 1)`` values for ``k`` clean runs). A condition's values (e.g. its UDs of
seed ``s`` against clean seed ``s``) are compared with the floor's by a permutation test of
the difference of means (:func:`permutation_test`): exact over all ``C(n + m, n)`` splits of
the pooled values, or a seeded Monte-Carlo of :data:`MONTE_CARLO_DRAWS` splits where there
are more than :data:`EXACT_LIMIT`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from unlearn.errors import UnlearnError
from unlearn.sharpness.ud import SalTable, ud

Alternative = Literal["less", "greater", "two-sided"]
#: The alternatives :func:`permutation_test` knows.
ALTERNATIVES: tuple[str, ...] = ("less", "greater", "two-sided")
#: Most splits enumerated exactly; above it, a Monte-Carlo of :data:`MONTE_CARLO_DRAWS`.
EXACT_LIMIT = 200_000
#: Random splits drawn where ``C(n + m, n)`` exceeds :data:`EXACT_LIMIT`.
MONTE_CARLO_DRAWS = 100_000
#: Seed of the Monte-Carlo draws (the same p for the same input on every call).
MONTE_CARLO_SEED = 0


class NoiseFloorError(UnlearnError, ValueError):
    """Input the floor or its test cannot use: too few clean runs, empty or non-finite values."""


def floor_pairs(cleans: Sequence[SalTable], t: int | None = None) -> list[tuple[int, int, float]]:
    """``(i, j, UD of clean i against clean j)`` for all ordered pairs ``i != j``.

    Args:
        cleans: The clean runs' tables (``k >= 2``), e.g. one per seed.
        t: Use the first ``t`` checkpoints of each run (``UD(t)``); all where None.

    Returns:
        ``k (k - 1)`` triples, ``i`` outer and ``j`` inner (in the order of ``cleans``).

    Raises:
        NoiseFloorError: Fewer than 2 tables, or a UD that is not finite (naming the pair).
        SalTableError: A table with a non-finite SAL, different layer sets, too few
            checkpoints (naming the file).
    """
    if len(cleans) < 2:
        raise NoiseFloorError(f"a noise floor needs at least 2 clean runs; found {len(cleans)}")
    for table in cleans:
        table.require_finite()
    out = []
    for i, run in enumerate(cleans):
        for j, reference in enumerate(cleans):
            if i == j:
                continue
            value = float(ud(reference, run, t=t)["ud"])
            if not math.isfinite(value):
                raise NoiseFloorError(
                    f"UD of {run.source} against {reference.source} is {value}; the noise "
                    "floor needs finite UDs (a clean run with #LP 0)"
                )
            out.append((i, j, value))
    return out


def noise_floor(cleans: Sequence[SalTable], t: int | None = None) -> list[float]:
    """The floor's values: UD of clean ``i`` against clean ``j``, every ordered ``i != j``.

    See :func:`floor_pairs` (same order, arguments and errors).
    """
    return [value for _, _, value in floor_pairs(cleans, t)]


def _checked(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise NoiseFloorError(f"{name}: expected at least one value; found none")
    if not np.isfinite(array).all():
        raise NoiseFloorError(f"{name}: expected finite values; found {array.tolist()}")
    return array


def permutation_test(
    values: Sequence[float], floor: Sequence[float], alternative: Alternative = "less"
) -> float:
    """p-value of the difference of means ``mean(values) - mean(floor)`` by permutation.

    The statistic of a split of the pooled ``n + m`` values into ``n`` and ``m`` is the
    difference of their means; p is the share of splits at least as extreme as the observed
    one: ``<=`` it (``"less"``: values below the floor), ``>=`` it (``"greater"``), or
    ``|.| >=`` its absolute value (``"two-sided"``). Ties count as extreme (a tolerance of
    ``1e-9`` times the scale of the values absorbs rounding).

    Exact where ``C(n + m, n) <= EXACT_LIMIT``: every split is enumerated, the observed one
    among them, so ``p >= 1 / C(n + m, n)``. Above it, :data:`MONTE_CARLO_DRAWS` random splits
    (seed :data:`MONTE_CARLO_SEED`) and ``p = (1 + extreme draws) / (1 + draws)``.

    Args:
        values: The condition's values, ``n >= 1`` (e.g. UDs).
        floor: The floor's values, ``m >= 1``.
        alternative: ``"less"``, ``"greater"`` or ``"two-sided"``.

    Raises:
        NoiseFloorError: Empty or non-finite input, or an unknown ``alternative``.
    """
    if alternative not in ALTERNATIVES:
        raise NoiseFloorError(f"alternative: expected one of {ALTERNATIVES}; found {alternative!r}")
    x, y = _checked(values, "values"), _checked(floor, "floor")
    pooled = np.concatenate([x, y])
    n, total = x.size, pooled.size
    splits = math.comb(total, n)
    if splits <= EXACT_LIMIT:
        chosen = np.array(list(itertools.combinations(range(total), n)), dtype=np.int64)
    else:
        rng = np.random.default_rng(MONTE_CARLO_SEED)
        chosen = np.argsort(rng.random((MONTE_CARLO_DRAWS, total)), axis=1)[:, :n]
    sums = pooled[chosen].sum(axis=1)
    diffs = sums / n - (pooled.sum() - sums) / (total - n)
    observed = x.mean() - y.mean()
    tol = 1e-9 * max(1.0, float(np.abs(pooled).max()))
    if alternative == "less":
        extreme = diffs <= observed + tol
    elif alternative == "greater":
        extreme = diffs >= observed - tol
    else:
        extreme = np.abs(diffs) >= abs(observed) - tol
    if splits <= EXACT_LIMIT:
        return float(extreme.sum() / splits)
    return float((1 + extreme.sum()) / (1 + MONTE_CARLO_DRAWS))


def verdict(
    values: Sequence[float],
    floor: Sequence[float],
    alternative: Alternative = "two-sided",
    alpha: float = 0.05,
) -> tuple[str, float]:
    """``("below floor" | "above floor" | "within floor", p)`` of :func:`permutation_test`.

    Below (above) where p < ``alpha`` and the values' mean is below (above) the floor's;
    a one-sided ``alternative`` can only find its own direction. Otherwise within.
    """
    p = permutation_test(values, floor, alternative)
    if p < alpha:
        below = float(np.mean(values)) < float(np.mean(floor))
        return ("below floor" if below else "above floor"), p
    return "within floor", p
