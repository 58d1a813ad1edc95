"""Command line: LightningCLI for fit/validate/test/predict, plus the project's subcommands."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import unlearn
from unlearn.data import BaseDataModule
from unlearn.errors import UnlearnError
from unlearn.tasks import BaseTask

#: subcommands that are not LightningCLI's, as "module:function" taking the remaining args
EXTRA_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "poison": ("unlearn.poisons.command:main", "make unlearnable examples for a data set"),
    "ud": ("unlearn.ud_command:main", "Unlearnable Distance of runs from their sal.csv"),
    "benchmark": ("unlearn.benchmark.command:main", "grid of methods x defenses x models"),
    "landscape": ("unlearn.landscape.command:main", "loss landscapes and trajectories"),
}
TRAINER_SUBCOMMANDS = {
    "fit": "train a task on a data module (clean or poisoned)",
    "validate": "evaluate on the validation set",
    "test": "evaluate on the test set",
    "predict": "predict on the test set",
}


class UnlearnCLI(LightningCLI):
    """LightningCLI that links the data set's shape and classes into the task."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link ``data.num_classes`` and ``data.image_shape`` into the model's arguments."""
        for field in ("num_classes", "image_shape"):
            parser.link_arguments(
                f"data.{field}", f"model.init_args.{field}", apply_on="instantiate"
            )


def _import_task_modules() -> None:
    """Import every subpackage whose classes configs name by short ``class_path``."""
    for name in ("unlearn.data", "unlearn.tasks", "unlearn.models", "unlearn.defenses"):
        importlib.import_module(name)
    for optional in ("unlearn.callbacks",):
        try:
            importlib.import_module(optional)
        except ModuleNotFoundError as err:
            if err.name != optional:
                raise


def _overview() -> str:
    lines = [f"unlearn {unlearn.__version__}: unlearnable examples with PyTorch Lightning", ""]
    lines.append("usage: python -m unlearn SUBCOMMAND [--config CONFIG.yaml] [options]")
    lines.append("")
    lines.append("subcommands:")
    for name, text in TRAINER_SUBCOMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    for name, (_, text) in EXTRA_SUBCOMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    lines.append("")
    lines.append("`python -m unlearn SUBCOMMAND --help` lists a subcommand's options.")
    lines.append("Example: python -m unlearn fit --config configs/quickstart.yaml")
    return "\n".join(lines)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m unlearn`` and the ``unlearn`` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(_overview())
        return
    if argv[0] in ("-V", "--version"):
        print(f"unlearn {unlearn.__version__}")
        return
    if argv[0] in EXTRA_SUBCOMMANDS:
        target, _ = EXTRA_SUBCOMMANDS[argv[0]]
        module_name, function = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            sys.exit(f"unlearn: the '{argv[0]}' subcommand is not available in this version")
        run, run_args = getattr(module, function), argv[1:]
    else:
        run, run_args = run_lightning, argv
    try:
        run(run_args)
    except UnlearnError as err:
        sys.exit(f"unlearn {argv[0]}: error: {err}")


def run_lightning(args: Sequence[str]) -> UnlearnCLI:
    """Run a LightningCLI subcommand (``fit``, ``validate``, ``test``, ``predict``)."""
    _import_task_modules()
    return UnlearnCLI(
        model_class=BaseTask,
        datamodule_class=BaseDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        args=list(args),
    )
