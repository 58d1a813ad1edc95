"""Loss landscapes: filter-normalised surfaces, PCA trajectories, per-parameter paths.

Plain torch functions (no Lightning) in :mod:`~unlearn.landscape.directions`,
:mod:`~unlearn.landscape.surface` and :mod:`~unlearn.landscape.trajectory`; figures in
:mod:`~unlearn.landscape.plots`; the ``python -m unlearn landscape`` command in
:mod:`~unlearn.landscape.command`; the checkpoint callback that keeps a trajectory in
:mod:`~unlearn.landscape.callback`.
"""

from unlearn.landscape.callback import TrajectoryCheckpoint
from unlearn.landscape.directions import ParameterSpace, normalise_direction, random_direction
from unlearn.landscape.surface import LossEvaluator, grid_coordinates, surface_1d, surface_2d
from unlearn.landscape.trajectory import (
    ParameterComparison,
    RunTrajectory,
    TrajectoryBasis,
    compare_parameters,
    fit_pca,
    load_trajectory,
)

__all__ = [
    "LossEvaluator",
    "ParameterComparison",
    "ParameterSpace",
    "RunTrajectory",
    "TrajectoryBasis",
    "TrajectoryCheckpoint",
    "compare_parameters",
    "fit_pca",
    "grid_coordinates",
    "load_trajectory",
    "normalise_direction",
    "random_direction",
    "surface_1d",
    "surface_2d",
]
