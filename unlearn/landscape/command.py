"""``python -m unlearn landscape``: loss surfaces and trajectories of finished runs.

Usage::

    python -m unlearn landscape --config configs/landscape/linear.yaml
    python -m unlearn landscape --config configs/landscape/linear.yaml --surface.steps_2d 11
    python -m unlearn landscape --config configs/landscape/lenet5.yaml --print_config
    python -m unlearn landscape --help

The config names the runs (their checkpoints and the data they were trained on) and the
analyses; the YAML style is LightningCLI's (``data: {class_path, init_args}``). Outputs in
``output_dir``: PNG figures, the raw grids as ``.npz``, ``summary.json`` and the resolved
``config.yaml``; with ``log_dir``, the figures are also added to TensorBoard there.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from torch import Tensor

from unlearn.data import ImageClassificationDataModule
from unlearn.errors import UnlearnError
from unlearn.io import atomic_path, write_text_atomic
from unlearn.landscape.directions import Normalisation, random_direction
from unlearn.landscape.surface import (
    BatchNormMode,
    LossEvaluator,
    grid_coordinates,
    surface_1d,
    surface_2d,
)
from unlearn.landscape.trajectory import (
    ParameterComparison,
    RunTrajectory,
    compare_parameters,
    fit_pca,
    load_trajectory,
)

Analysis = Literal["surface", "trajectory", "parameters"]
ANALYSES: tuple[str, ...] = ("surface", "trajectory", "parameters")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class RunSpec:
    """One finished run.

    Args:
        name: short label used in legends and file names (letters, digits, ``_.-``).
        checkpoints: directory, glob pattern or file of the run's ``.ckpt`` files (one per
            trajectory point; see ``callbacks/trajectory.yaml``).
        data: the data module the run trained on (poisoned runs name their poison); its
            training data as trained on, without augmentation, is the probe set.
    """

    name: str
    checkpoints: str
    data: ImageClassificationDataModule


@dataclass
class ProbeSettings:
    """The samples the loss is measured on.

    Args:
        split: ``train`` (each run's training data as trained on: poisoned for a poisoned
            run, no augmentation) or ``test`` (the clean test split).
        num_samples: size of the subset, drawn by ``seed`` (the same indices for every
            run); 0 or more than the split takes all of it.
        batch_size: samples per forward pass.
        seed: seed of the subset.
    """

    split: Literal["train", "test"] = "train"
    num_samples: int = 1024
    batch_size: int = 512
    seed: int = 0


@dataclass
class SurfaceSettings:
    """Loss along filter-normalised random directions around one checkpoint of each run.

    Args:
        checkpoint: index into the run's checkpoints ordered by step (-1: the last).
        dims: which surfaces: ``[1]``, ``[2]`` or ``[1, 2]``.
        span: ``(low, high)`` range of the step along each direction.
        steps_1d: points of the 1-D grid.
        steps_2d: points per axis of the 2-D grid.
        norm: ``filter`` (Li et al.), ``layer`` or ``none``.
        ignore_biasbn: zero the direction on 1-D tensors (biases, norm layers).
        seed: seed of the random directions (the same raw directions for every run).
        plot_3d: also draw a 3-D surface per run.
    """

    checkpoint: int = -1
    dims: list[int] = field(default_factory=lambda: [1, 2])
    span: tuple[float, float] = (-1.0, 1.0)
    steps_1d: int = 41
    steps_2d: int = 21
    norm: Literal["filter", "layer", "none"] = "filter"
    ignore_biasbn: bool = True
    seed: int = 0
    plot_3d: bool = True


@dataclass
class TrajectorySettings:
    """PCA of the checkpoints' parameters and the loss on the plane of the first two axes.

    Args:
        shared_basis: one basis for all runs (their points stacked; the plane is centred on
            the first run's final point); otherwise one basis per run, centred on its end.
        steps: points per axis of the plane's grid.
        margin: space around the paths, as a fraction of their extent on each axis.
    """

    shared_basis: bool = True
    steps: int = 21
    margin: float = 0.25


@dataclass
class ParameterSettings:
    """Per-parameter paths: which coordinates moved most differently from a reference run.

    Args:
        reference: name of the run the others are compared to (default: the first).
        top_k: coordinates drawn and listed.
        max_params: largest model (in parameters) the analysis runs on.
    """

    reference: str | None = None
    top_k: int = 8
    max_params: int = 200_000


def build_parser() -> ArgumentParser:
    """The parser of ``python -m unlearn landscape``."""
    import unlearn.data  # noqa: F401 - registers the data modules for short class names

    parser = ArgumentParser(
        prog="python -m unlearn landscape",
        description="Loss landscapes of finished runs: filter-normalised 1-D/2-D surfaces, "
        "PCA trajectories on their loss plane, per-parameter paths (clean vs poisoned).",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML config file")
    parser.add_argument("--runs", type=list[RunSpec], required=True, help="the runs to analyse")
    parser.add_argument("--output_dir", type=str, required=True, help="where outputs go")
    parser.add_argument(
        "--analyses",
        type=list[Analysis] | None,
        default=None,
        help="which analyses (default: every one that applies to the runs)",
    )
    parser.add_argument("--probe", type=ProbeSettings, default=ProbeSettings())
    parser.add_argument("--surface", type=SurfaceSettings, default=SurfaceSettings())
    parser.add_argument("--trajectory", type=TrajectorySettings, default=TrajectorySettings())
    parser.add_argument("--parameters", type=ParameterSettings, default=ParameterSettings())
    parser.add_argument(
        "--bn",
        type=BatchNormMode,
        default="eval",
        help="batch norm: 'eval' (the checkpoint's running statistics) or 'recompute' "
        "(re-estimated on the probe set at every grid point)",
    )
    parser.add_argument(
        "--log_dir", type=str | None, default=None, help="TensorBoard directory for the figures"
    )
    parser.add_argument(
        "--device",
        type=Literal["auto", "cpu", "cuda"],
        default="auto",
        help="where to evaluate (auto: cuda if available)",
    )
    parser.add_argument("--progress", type=bool, default=True, help="progress bars")
    return parser


# ---------------------------------------------------------------------------- helpers
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UnlearnError("device: 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def probe_batches(
    data: ImageClassificationDataModule, probe: ProbeSettings, device: torch.device
) -> list[tuple[Tensor, Tensor]]:
    """A seeded subset of a run's training data (as trained on) or of the test split.

    Returns:
        ``(images float [B, C, H, W], labels int64 [B])`` batches on ``device``.
    """
    dataset = data.probe_dataset() if probe.split == "train" else data.test_dataset()
    n = len(dataset)
    count = n if probe.num_samples <= 0 else min(probe.num_samples, n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(probe.seed))
    items = [dataset[int(i)] for i in order[:count].sort().values]
    images = torch.stack([item["image"] for item in items]).to(device)
    labels = torch.stack([torch.as_tensor(item["label"]) for item in items]).to(device)
    return [
        (images[i : i + probe.batch_size], labels[i : i + probe.batch_size])
        for i in range(0, count, probe.batch_size)
    ]


def save_npz(path: Path, **arrays: Any) -> Path:
    """Write arrays to ``path`` (``.npz``) atomically."""
    with atomic_path(path) as tmp, open(tmp, "xb") as handle:
        np.savez(handle, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


def _check(runs: Sequence[RunSpec], cfg: Any) -> None:
    if not runs:
        raise UnlearnError("runs: at least one run is needed")
    names = [run.name for run in runs]
    for name in names:
        if not NAME_PATTERN.match(name):
            raise UnlearnError(f"runs: name '{name}' may only use letters, digits and _ . -")
    if len(set(names)) != len(names):
        raise UnlearnError(f"runs: names must be unique, got {names}")
    if cfg.probe.batch_size < 1:
        raise UnlearnError(f"probe.batch_size must be >= 1, got {cfg.probe.batch_size}")
    for key, value in (
        ("parameters.top_k", cfg.parameters.top_k),
        ("parameters.max_params", cfg.parameters.max_params),
    ):
        if value < 1:
            raise UnlearnError(f"{key} must be >= 1, got {value}")
    surface = cfg.surface
    if not surface.dims or not set(surface.dims) <= {1, 2}:
        raise UnlearnError(f"surface.dims must be a non-empty subset of [1, 2], got {surface.dims}")
    if not surface.span[0] < surface.span[1]:
        raise UnlearnError(f"surface.span must be (low, high) with low < high, got {surface.span}")
    for key, value in (
        ("surface.steps_1d", surface.steps_1d),
        ("surface.steps_2d", surface.steps_2d),
        ("trajectory.steps", cfg.trajectory.steps),
    ):
        if value < 2:
            raise UnlearnError(f"{key} must be >= 2, got {value}")
    if cfg.trajectory.margin < 0:
        raise UnlearnError(f"trajectory.margin must be >= 0, got {cfg.trajectory.margin}")
    reference = cfg.parameters.reference
    if reference is not None and reference not in names:
        raise UnlearnError(f"parameters.reference '{reference}' is not one of the runs {names}")


# ---------------------------------------------------------------------------- the analysis
class Landscape:
    """The analyses of one invocation: holds the runs, writes outputs, collects figures.

    Args:
        runs: the runs' specifications.
        output_dir: where PNG, ``.npz`` and ``summary.json`` go.
        probe: the probe set's settings.
        bn: batch norm handling.
        device: where to evaluate.
        progress: show progress bars.
    """

    def __init__(
        self,
        runs: Sequence[RunSpec],
        output_dir: str | Path,
        probe: ProbeSettings,
        bn: BatchNormMode = "eval",
        device: torch.device | None = None,
        progress: bool = True,
    ) -> None:
        self.specs = list(runs)
        self.output_dir = Path(output_dir)
        self.bn = bn
        self.device = device or torch.device("cpu")
        self.progress = progress
        self.figures: dict[str, Path] = {}
        self.summary: dict[str, Any] = {"runs": {}}
        self.trajectories: dict[str, RunTrajectory] = {}
        self.models: dict[str, torch.nn.Module] = {}
        self.batches: dict[str, list[tuple[Tensor, Tensor]]] = {}
        for spec in self.specs:
            trajectory, model = load_trajectory(spec.name, spec.checkpoints)
            self.trajectories[spec.name] = trajectory
            self.models[spec.name] = model.to(self.device).eval()
            self.batches[spec.name] = probe_batches(spec.data, probe, self.device)
            self.summary["runs"][spec.name] = {
                "checkpoints": len(trajectory),
                "first_step": int(trajectory.steps[0]),
                "last_step": int(trajectory.steps[-1]),
                "model": trajectory.hparams.get("model"),
                "parameters": trajectory.space.size,
                "probe_samples": sum(int(x.shape[0]) for x, _ in self.batches[spec.name]),
            }
            self._final_metrics(spec, trajectory)
        # the output directory is made by :meth:`prepare_output`, once the input is checked

    def check_settings(self, surface: SurfaceSettings) -> None:
        """Refuse settings that do not fit the loaded runs (before anything is written)."""
        for name, trajectory in self.trajectories.items():
            index = surface.checkpoint
            if not -len(trajectory) <= index < len(trajectory):
                raise UnlearnError(
                    f"surface.checkpoint {index} is outside run '{name}''s "
                    f"{len(trajectory)} checkpoints"
                )

    def prepare_output(self) -> None:
        """Create the output directory.

        Called once every run has loaded and the input is checked, so that bad input leaves
        no empty directory behind.
        """
        self.output_dir.mkdir(parents=True, exist_ok=True)

    # -------------------------------------------------------------- shared pieces
    def evaluator(self, name: str, buffers: dict[str, Tensor]) -> LossEvaluator:
        """Loss of run ``name``'s model on its probe batches, with the given buffers."""
        trajectory = self.trajectories[name]
        return LossEvaluator(
            self.models[name],
            trajectory.space,
            self.batches[name],
            buffers={k: v.to(self.device) for k, v in buffers.items()},
            bn=self.bn,
        )

    def _final_metrics(self, spec: RunSpec, trajectory: RunTrajectory) -> None:
        """Probe and clean-test loss/accuracy of the last checkpoint, for the summary."""
        final = trajectory.points[-1].to(self.device)
        loss, acc = self.evaluator(spec.name, trajectory.buffers[-1])(final)
        test_set = probe_batches(spec.data, ProbeSettings(split="test", num_samples=0), self.device)
        test = LossEvaluator(
            self.models[spec.name],
            trajectory.space,
            test_set,
            buffers={k: v.to(self.device) for k, v in trajectory.buffers[-1].items()},
            bn="eval",
        )
        test_loss, test_acc = test(final)
        self.summary["runs"][spec.name].update(
            probe_loss=loss, probe_acc=acc, test_loss=test_loss, test_acc=test_acc
        )

    def _figure(self, name: str, fig: Any) -> None:
        from unlearn.landscape.plots import save_figure

        self.figures[name] = save_figure(fig, self.output_dir / f"{name}.png")

    # -------------------------------------------------------------- analyses
    def surface(self, settings: SurfaceSettings) -> None:
        """1-D and 2-D filter-normalised random-direction surfaces around one checkpoint."""
        from unlearn.landscape.plots import plot_contours, plot_surface_1d, plot_surface_3d

        norm: Normalisation = settings.norm
        alphas = grid_coordinates(settings.span, settings.steps_1d)
        axis = grid_coordinates(settings.span, settings.steps_2d)
        lines, line_accs, planes, plane_accs = {}, {}, {}, {}
        self.check_settings(settings)
        for name, trajectory in self.trajectories.items():
            index = settings.checkpoint
            origin = trajectory.points[index].to(self.device)
            evaluate = self.evaluator(name, trajectory.buffers[index])
            generator = torch.Generator().manual_seed(settings.seed)
            dx, dy = (
                random_direction(trajectory.space, origin, generator, norm, settings.ignore_biasbn)
                for _ in range(2)
            )
            centre, _ = evaluate(origin)
            record = self.summary["runs"][name]
            record["surface_step"] = int(trajectory.steps[index])
            record["surface_centre_loss"] = centre
            if 1 in settings.dims:
                lines[name], line_accs[name] = surface_1d(
                    evaluate, origin, dx, alphas, self.progress, f"{name}: 1-D surface"
                )
                record["surface_1d_mean_rise"] = float((lines[name] - centre).mean())
            if 2 in settings.dims:
                planes[name], plane_accs[name] = surface_2d(
                    evaluate, origin, dx, dy, axis, axis, self.progress, f"{name}: 2-D surface"
                )
                record["surface_2d_mean_rise"] = float((planes[name] - centre).mean())
        names = list(self.trajectories)
        if lines:
            save_npz(
                self.output_dir / "surface_1d.npz",
                runs=np.array(names),
                alphas=alphas,
                loss=torch.stack([lines[n] for n in names]),
                acc=torch.stack([line_accs[n] for n in names]),
            )
            self._figure("surface_1d", plot_surface_1d(alphas, lines, line_accs))
        if planes:
            where = "last checkpoint" if settings.checkpoint == -1 else "chosen checkpoint"
            save_npz(
                self.output_dir / "surface_2d.npz",
                runs=np.array(names),
                xs=axis,
                ys=axis,
                loss=torch.stack([planes[n] for n in names]),
                acc=torch.stack([plane_accs[n] for n in names]),
            )
            self._figure(
                "surface_2d",
                plot_contours(
                    axis,
                    axis,
                    planes,
                    axis_labels=("direction 1", "direction 2"),
                    title=f"loss around each run's {where} ({norm}-normalised directions)",
                ),
            )
            if settings.plot_3d:
                for name in names:
                    fig = plot_surface_3d(axis, axis, planes[name], title=name)
                    self._figure(f"surface_3d_{name}", fig)

    def trajectory(self, settings: TrajectorySettings) -> None:
        """PCA of the trajectories and the loss on the plane of their first two axes."""
        names = list(self.trajectories)
        spaces = {self.trajectories[n].space for n in names}
        if settings.shared_basis and len(names) > 1 and len(spaces) == 1:
            self._trajectory_plane("trajectory", names, names[0], settings)
        else:
            for name in names:
                self._trajectory_plane(f"trajectory_{name}", [name], name, settings)

    def _trajectory_plane(
        self, stem: str, names: list[str], centre: str, settings: TrajectorySettings
    ) -> None:
        from unlearn.landscape.plots import plot_contours

        runs = [self.trajectories[n] for n in names]
        basis = fit_pca([r.points for r in runs], runs[names.index(centre)].points[-1])
        coords = {r.name: basis.project(r.points) for r in runs}
        stacked = torch.cat(list(coords.values()))
        low, high = stacked.min(dim=0).values, stacked.max(dim=0).values
        pad = settings.margin * (high - low).clamp_min(1e-6)
        xs = torch.linspace(float(low[0] - pad[0]), float(high[0] + pad[0]), settings.steps)
        ys = torch.linspace(float(low[1] - pad[1]), float(high[1] + pad[1]), settings.steps)
        xs, ys = xs.double(), ys.double()
        origin = basis.origin.float().to(self.device)
        dx, dy = (c.float().to(self.device) for c in basis.components)
        # the plane is centred on one run's end; its buffers serve every run's data
        buffers = self.trajectories[centre].buffers[-1]
        losses, accs = {}, {}
        for name in names:
            evaluate = self.evaluator(name, buffers)
            losses[name], accs[name] = surface_2d(
                evaluate, origin, dx, dy, xs, ys, self.progress, f"{name}: trajectory plane"
            )
        ratio = basis.explained_variance_ratio
        save_npz(
            self.output_dir / f"{stem}.npz",
            runs=np.array(names),
            centre=np.array(centre),
            xs=xs,
            ys=ys,
            loss=torch.stack([losses[n] for n in names]),
            acc=torch.stack([accs[n] for n in names]),
            explained_variance_ratio=ratio,
            **{f"coords_{n}": coords[n] for n in names},
            **{f"steps_{n}": self.trajectories[n].steps for n in names},
        )
        self.summary.setdefault("trajectory", {})[stem] = {
            "runs": names,
            "centre": centre,
            "explained_variance_ratio": [float(r) for r in ratio],
        }
        labels = (f"PC1 ({100 * ratio[0]:.1f}%)", f"PC2 ({100 * ratio[1]:.1f}%)")
        panels = {f"loss on {n}'s data": losses[n] for n in names}
        title = f"trajectories in a {'shared ' if len(names) > 1 else ''}PCA plane"
        self._figure(stem, plot_contours(xs, ys, panels, coords, labels, title))

    def parameters(self, settings: ParameterSettings) -> None:
        """Which coordinates moved most differently from the reference run."""
        from unlearn.landscape.plots import (
            plot_difference_concentration,
            plot_input_weight_maps,
            plot_parameter_paths,
        )

        names = list(self.trajectories)
        reference = settings.reference or names[0]
        ref = self.trajectories[reference]
        if ref.space.size > settings.max_params:
            raise UnlearnError(
                f"parameters: the model has {ref.space.size} parameters, more than "
                f"parameters.max_params={settings.max_params}; raise it or drop the analysis"
            )
        comparisons: dict[str, ParameterComparison] = {}
        arrays: dict[str, Any] = {"tensor_names": np.array(ref.space.names)}
        for name in names:
            if name == reference:
                continue
            comp = compare_parameters(ref, self.trajectories[name], settings.top_k)
            label = f"{reference}_vs_{name}"
            comparisons[f"{reference} vs {name}"] = comp
            arrays.update(
                {
                    f"{label}_steps": comp.steps,
                    f"{label}_score": comp.score.float(),
                    f"{label}_top": comp.top,
                    f"{label}_top_names": np.array(comp.names),
                    f"{label}_paths_{reference}": comp.paths_a,
                    f"{label}_paths_{name}": comp.paths_b,
                    f"{label}_tensor_share": comp.tensor_share,
                }
            )
            size = comp.score.numel()
            self.summary.setdefault("parameters", {})[label] = {
                "top": dict(zip(comp.names, [float(comp.score[i]) for i in comp.top], strict=True)),
                "difference_norm": float(comp.score.norm()),
                "top_k_share": float(comp.cumulative_share[len(comp.names) - 1]),
                "coordinates_for_50pct": comp.coordinates_for_share(0.5),
                "coordinates_for_90pct": comp.coordinates_for_share(0.9),
                "fraction_for_50pct": comp.coordinates_for_share(0.5) / size,
                "fraction_for_90pct": comp.coordinates_for_share(0.9) / size,
                "tensor_share": dict(
                    zip(ref.space.names, [float(s) for s in comp.tensor_share], strict=True)
                ),
            }
            self._figure(f"parameters_{label}", plot_parameter_paths(comp, reference, name))
            pixel_map = self._input_weight_score(ref, comp)
            if pixel_map is not None:
                fig = plot_input_weight_maps(
                    pixel_map, f"path difference per input weight: {reference} vs {name}"
                )
                self._figure(f"parameters_{label}_input_map", fig)
        save_npz(self.output_dir / "parameters.npz", **arrays)
        self._figure(
            "parameters_concentration",
            plot_difference_concentration(comparisons, list(ref.space.names)),
        )

    @staticmethod
    def _input_weight_score(run: RunTrajectory, comp: ParameterComparison) -> Tensor | None:
        """The score of a linear layer on raw pixels as ``[K, C, H, W]``, if the model has one.

        That is the first 2-D weight whose input size is the image's (a linear classifier);
        other models give ``None``.
        """
        shape = run.hparams.get("image_shape")
        if shape is None:
            return None
        pixels = int(np.prod(shape))
        scores = torch.split(comp.score, run.space.numels)
        for weight_shape, score in zip(run.space.shapes, scores, strict=True):
            if len(weight_shape) == 2 and weight_shape[1] == pixels:
                return score.view(weight_shape[0], *shape)
        return None

    def applicable(self, parameters: ParameterSettings) -> dict[str, str]:
        """Analyses that cannot run on these runs, with the reason."""
        reasons = {}
        shortest = min(len(t) for t in self.trajectories.values())
        total = sum(len(t) for t in self.trajectories.values())
        if total < 3 or shortest < 2:
            reasons["trajectory"] = "needs at least 2 checkpoints per run (3 in all)"
        spaces = {t.space for t in self.trajectories.values()}
        if len(self.trajectories) < 2:
            reasons["parameters"] = "needs two runs"
        elif len(spaces) > 1:
            reasons["parameters"] = "needs runs of the same model"
        elif next(iter(spaces)).size > parameters.max_params:
            reasons["parameters"] = f"the model has more than {parameters.max_params} parameters"
        elif shortest < 2:
            reasons["parameters"] = "needs at least 2 checkpoints per run"
        return reasons

    def write_summary(self, config_text: str | None = None) -> None:
        """``summary.json`` (and the resolved ``config.yaml``) in the output directory."""
        summary = json.dumps(self.summary, indent=2) + "\n"
        write_text_atomic(self.output_dir / "summary.json", summary)
        if config_text is not None:
            write_text_atomic(self.output_dir / "config.yaml", config_text)


def run_landscape(cfg: Any, init: Any, config_text: str | None = None) -> Landscape:
    """Run the analyses a parsed config asks for; the function behind the command.

    Args:
        cfg: the parsed namespace (plain values).
        init: the same with the data modules instantiated.
        config_text: the resolved config, saved beside the outputs.

    Returns:
        The finished analysis (its ``summary`` and ``figures``).
    """
    _check(init.runs, cfg)
    device = _device(cfg.device)
    landscape = Landscape(
        init.runs, cfg.output_dir, init.probe, bn=cfg.bn, device=device, progress=cfg.progress
    )
    skipped = landscape.applicable(init.parameters)
    if cfg.analyses is None:
        analyses = [a for a in ANALYSES if a not in skipped]
        for name, reason in skipped.items():
            print(f"landscape: skipping '{name}': {reason}", file=sys.stderr)
    else:
        analyses = list(dict.fromkeys(cfg.analyses))
        for name in analyses:
            if name in skipped:
                raise UnlearnError(f"analyses: '{name}' {skipped[name]}")
    if "surface" in analyses:
        landscape.check_settings(init.surface)
    landscape.prepare_output()
    for name in analyses:
        started = time.perf_counter()
        if name == "surface":
            landscape.surface(init.surface)
        elif name == "trajectory":
            landscape.trajectory(init.trajectory)
        else:
            landscape.parameters(init.parameters)
        landscape.summary.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 2)
    landscape.summary["analyses"] = analyses
    landscape.write_summary(config_text)
    if cfg.log_dir:
        from unlearn.landscape.plots import log_figures

        log_figures(cfg.log_dir, landscape.figures)
    return landscape


def main(args: Sequence[str] | None = None) -> None:
    """Entry point: ``python -m unlearn landscape ...``."""
    argv = list(sys.argv[1:] if args is None else args)
    parser = build_parser()
    cfg = parser.parse_args(argv)
    init = parser.instantiate(cfg)
    started = time.perf_counter()
    landscape = run_landscape(cfg, init, parser.dump(cfg, skip_none=False))
    outputs = sorted(p.name for p in landscape.output_dir.iterdir() if not p.name.startswith("."))
    print(
        f"wrote {len(outputs)} files to {landscape.output_dir} "
        f"({', '.join(landscape.summary['analyses'])}; "
        f"{time.perf_counter() - started:.1f} s)"
    )
    for name, record in landscape.summary["runs"].items():
        print(
            f"  {name}: {record['checkpoints']} checkpoints, probe loss {record['probe_loss']:.4f}"
            f" acc {record['probe_acc']:.3f}, clean test acc {record['test_acc']:.3f}"
        )
