"""Training trajectories from saved checkpoints: loading, PCA, per-parameter comparison.

A trajectory is the sequence of a run's flat parameter vectors ``[T, P]``, one per saved
checkpoint, ordered by global step. Its PCA (as in Li et al., 2018) is taken on the
checkpoints' offsets from an origin (the final point of a run); two runs share one basis
when their points are stacked before the PCA, so that both paths are drawn in one plane.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unlearn.errors import UnlearnError
from unlearn.landscape.directions import ParameterSpace
from unlearn.models import build_model

MODEL_PREFIX = "model."


@dataclass
class RunTrajectory:
    """The checkpoints of one run, as flat parameter vectors.

    Attributes:
        name: the run's name (for legends and file names).
        space: layout of the flat vectors.
        points: parameters ``float32 [T, P]``, ordered by global step.
        steps: global step of each checkpoint, ``int64 [T]``.
        epochs: epoch of each checkpoint, ``int64 [T]``.
        buffers: the model's buffers (batch-norm statistics) at each checkpoint.
        paths: the checkpoint files.
        hparams: the task's hyperparameters stored in the last checkpoint.
    """

    name: str
    space: ParameterSpace
    points: Tensor
    steps: Tensor
    epochs: Tensor
    buffers: list[dict[str, Tensor]]
    paths: list[Path]
    hparams: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.points.shape[0]


def find_checkpoints(spec: str | Path) -> list[Path]:
    """The ``.ckpt`` files a run's ``checkpoints`` setting names.

    Args:
        spec: a directory (its ``*.ckpt`` files, or those of its ``checkpoints/``
            subdirectory), a glob pattern (``runs/x/version_*/checkpoints/*.ckpt``) or one file.

    Raises:
        UnlearnError: when nothing matches.
    """
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(path.glob("*.ckpt")) or sorted((path / "checkpoints").glob("*.ckpt"))
    else:
        found = sorted(Path(p) for p in glob.glob(str(spec), recursive=True))
    found = [p for p in found if p.is_file()]
    if not found:
        raise UnlearnError(
            f"checkpoints: no .ckpt files found at '{spec}' (expected a directory of "
            "checkpoints, a glob pattern or a file; train with callbacks/trajectory.yaml to "
            "keep a checkpoint every N steps)"
        )
    return found


def _model_state(checkpoint: dict[str, Any], path: Path) -> dict[str, Tensor]:
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise UnlearnError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    model_state = {
        k[len(MODEL_PREFIX) :]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)
    }
    if not model_state:
        raise UnlearnError(f"{path}: the state_dict has no '{MODEL_PREFIX}*' entries")
    return model_state


def _same_weights(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def build_model_from_hparams(hparams: dict[str, Any], source: Path | str) -> nn.Module:
    """The backbone a task's hyperparameters name (``model``, ``num_classes``, ``image_shape``).

    Raises:
        UnlearnError: when the task was trained with a module given by ``class_path``
            (not recorded in the hyperparameters) or the fields are missing.
    """
    name = hparams.get("model")
    if not isinstance(name, str) or "num_classes" not in hparams or "image_shape" not in hparams:
        raise UnlearnError(
            f"{source}: the checkpoint's hyper_parameters do not name a backbone "
            "(expected 'model' as a name such as 'lenet5', 'num_classes' and 'image_shape'); "
            "the landscape command rebuilds models from their names"
        )
    try:
        return build_model(name, int(hparams["num_classes"]), tuple(hparams["image_shape"]))
    except ValueError as err:
        raise UnlearnError(f"{source}: {err}") from None


def load_trajectory(name: str, spec: str | Path) -> tuple[RunTrajectory, nn.Module]:
    """Read every checkpoint of a run (weights only) and flatten its parameters.

    Checkpoints with the same global step (``last.ckpt`` beside the step's own file) are
    kept once.

    Args:
        name: the run's name.
        spec: see :func:`find_checkpoints`.

    Returns:
        The trajectory and the (untrained) model built from the hyperparameters, whose
        architecture matches the checkpoints.
    """
    records = []
    for path in find_checkpoints(spec):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UnlearnError(f"{path}: cannot be read as a checkpoint ({err})") from None
        if not isinstance(checkpoint, dict):
            raise UnlearnError(
                f"{path}: not a Lightning checkpoint (holds a {type(checkpoint).__name__}, "
                "expected a dict with 'state_dict')"
            )
        records.append((int(checkpoint.get("global_step", 0)), path, checkpoint))
    records.sort(key=lambda r: (r[0], str(r[1])))
    unique: dict[int, tuple[Path, dict[str, Any]]] = {}
    for step, path, checkpoint in records:
        if step in unique:
            kept_path, kept = unique[step]
            if not _same_weights(_model_state(kept, kept_path), _model_state(checkpoint, path)):
                raise UnlearnError(
                    f"checkpoints: '{kept_path}' and '{path}' are both at step {step} but hold "
                    "different weights; the location mixes runs (clear it before retraining)"
                )
            continue
        unique[step] = (path, checkpoint)
    last_path, last = unique[max(unique)]
    hparams = dict(last.get("hyper_parameters") or {})
    model = build_model_from_hparams(hparams, last_path)
    space = ParameterSpace.of(model)
    buffer_names = [n for n, _ in model.named_buffers()]
    points, buffers, steps, epochs, paths = [], [], [], [], []
    for step, (path, checkpoint) in sorted(unique.items()):
        state = _model_state(checkpoint, path)
        try:
            points.append(space.flatten(state).float())
        except (KeyError, RuntimeError) as err:
            raise UnlearnError(f"{path}: does not match the model: {err}") from None
        if points[-1].numel() != space.size:
            raise UnlearnError(f"{path}: parameter sizes differ from '{hparams['model']}'")
        buffers.append({n: state[n] for n in buffer_names if n in state})
        steps.append(step)
        epochs.append(int(checkpoint.get("epoch", 0)))
        paths.append(path)
    trajectory = RunTrajectory(
        name=name,
        space=space,
        points=torch.stack(points),
        steps=torch.tensor(steps, dtype=torch.long),
        epochs=torch.tensor(epochs, dtype=torch.long),
        buffers=buffers,
        paths=paths,
        hparams=hparams,
    )
    return trajectory, model


@dataclass(frozen=True)
class TrajectoryBasis:
    """Principal axes of one or more trajectories, around an origin.

    Attributes:
        origin: the plane's centre ``float64 [P]`` (a run's final point).
        components: orthonormal axes ``float64 [K, P]``, by decreasing variance.
        explained_variance_ratio: fraction of the trajectories' variance on each axis, ``[K]``.
    """

    origin: Tensor
    components: Tensor
    explained_variance_ratio: Tensor

    def project(self, points: Tensor) -> Tensor:
        """Coordinates ``[T, K]`` of points ``[T, P]`` in the basis, relative to the origin."""
        return (points.double() - self.origin) @ self.components.T


def fit_pca(
    trajectories: Sequence[Tensor], origin: Tensor, num_components: int = 2
) -> TrajectoryBasis:
    """PCA of the offsets ``points - origin`` of one or more trajectories, stacked.

    The offsets are centred on their mean before the SVD (sklearn's PCA, as in Li et al.'s
    code); the explained variance ratio is each axis' share of the total variance. Each
    axis is signed so that the first point of the first trajectory has a coordinate <= 0
    (paths run from left/bottom towards the origin).

    Args:
        trajectories: point sets ``[T_i, P]`` in the same space.
        origin: ``[P]``.
        num_components: ``K``, the number of axes kept.

    Returns:
        The basis.

    Raises:
        UnlearnError: with fewer than ``K + 1`` points in all, or a trajectory that does
            not move.
    """
    offsets = torch.cat([t.double() for t in trajectories]) - origin.double()
    if offsets.shape[0] < num_components + 1:
        raise UnlearnError(
            f"a {num_components}-D PCA needs at least {num_components + 1} checkpoints in all, "
            f"got {offsets.shape[0]}; save checkpoints more often (every_n_train_steps)"
        )
    centred = offsets - offsets.mean(dim=0)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    variance = singular.square()
    total = variance.sum()
    if total <= 0:
        raise UnlearnError("the trajectories do not move: every checkpoint has the same weights")
    components = vh[:num_components].clone()
    start = offsets[0] @ components.T
    components[start > 0] *= -1
    return TrajectoryBasis(
        origin=origin.double(),
        components=components,
        explained_variance_ratio=variance[:num_components] / total,
    )


@dataclass
class ParameterComparison:
    """Which coordinates moved most differently between two runs.

    The score of coordinate ``p`` is the root mean square over the common checkpoints of
    the difference of the two runs' displacements from their own first checkpoint:
    ``sqrt(mean_t ((a_t[p] - a_0[p]) - (b_t[p] - b_0[p]))^2)``.

    Attributes:
        steps: global steps both runs saved, ``[T]``.
        score: per-coordinate score ``[P]``.
        top: coordinates with the highest scores, ``[k]``, highest first.
        names: readable names of ``top``.
        paths_a: values of the ``top`` coordinates along run A, ``[T, k]``.
        paths_b: the same along run B.
        cumulative_share: share of ``sum(score^2)`` held by the ``n`` highest-scoring
            coordinates, for ``n = 1..P``, ``[P]``.
        tensor_share: share of ``sum(score^2)`` held by each parameter tensor, ``[len(names)]``.
    """

    steps: Tensor
    score: Tensor
    top: Tensor
    names: list[str]
    paths_a: Tensor
    paths_b: Tensor
    cumulative_share: Tensor
    tensor_share: Tensor

    def coordinates_for_share(self, share: float) -> int:
        """How many of the highest-scoring coordinates hold ``share`` of the squared score."""
        return int(torch.searchsorted(self.cumulative_share, torch.tensor(share)).item()) + 1


def compare_parameters(a: RunTrajectory, b: RunTrajectory, top_k: int = 8) -> ParameterComparison:
    """Score every coordinate by how differently it moved in runs ``a`` and ``b``.

    The runs are matched on the global steps that both saved.

    Raises:
        UnlearnError: different architectures, or fewer than two common steps.
    """
    if a.space != b.space:
        raise UnlearnError(
            f"runs '{a.name}' and '{b.name}' have different parameters; per-parameter paths "
            "compare runs of the same model"
        )
    common = sorted(set(a.steps.tolist()) & set(b.steps.tolist()))
    if len(common) < 2:
        raise UnlearnError(
            f"runs '{a.name}' and '{b.name}' share {len(common)} checkpoint steps; per-parameter "
            "paths need at least 2 (save checkpoints at the same steps in both runs)"
        )
    rows_a = torch.tensor([a.steps.tolist().index(s) for s in common])
    rows_b = torch.tensor([b.steps.tolist().index(s) for s in common])
    pa, pb = a.points[rows_a].double(), b.points[rows_b].double()
    difference = (pa - pa[0]) - (pb - pb[0])
    score = difference.square().mean(dim=0).sqrt()
    squared = score.square()
    total = squared.sum().clamp_min(torch.finfo(torch.float64).tiny)
    order = torch.argsort(score, descending=True)
    top = order[: min(top_k, score.numel())]
    owner = a.space.parameter_of()
    tensor_share = torch.zeros(len(a.space.names), dtype=torch.float64)
    tensor_share.index_add_(0, owner, squared)
    return ParameterComparison(
        steps=torch.tensor(common, dtype=torch.long),
        score=score,
        top=top,
        names=[a.space.coordinate_name(int(i)) for i in top],
        paths_a=pa[:, top],
        paths_b=pb[:, top],
        cumulative_share=squared[order].cumsum(0) / total,
        tensor_share=tensor_share / total,
    )
