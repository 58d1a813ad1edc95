"""Command line: LightningCLI for fit/validate/test/predict, plus the project's subcommands."""

from __future__ import annotations

import importlib
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import yaml
from jsonargparse import ArgumentParser, get_loader, set_loader
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import unlearn
from unlearn.data import BaseDataModule
from unlearn.errors import ConfigError, exit_usage, input_error_in, one_line
from unlearn.io import write_json_atomic
from unlearn.resume import keep_last_checkpoints
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
    """LightningCLI that links the data set's shape and classes into the task.

    ``fit --test_after_fit=true`` tests the final weights on the test split after training
    and writes ``metrics.json`` (final validation and test metrics, seconds) into the run's
    log directory: one command gives a finished, measured run (the benchmark uses this).

    ``trainer.default_root_dir`` is the one place a run writes: the logger's ``save_dir`` is
    linked to it, so the run's logs land in ``{default_root_dir}/{name}/version_N``, and with
    them the checkpoints, ``sal.csv`` and ``metrics.json``. TensorBoard's placeholder
    ``hp_metric`` (a constant -1 in every run) is turned off.

    Every full checkpoint callback whose ``save_last`` is unset, Lightning's default one
    included, keeps ``checkpoints/last.ckpt`` (:func:`unlearn.resume.keep_last_checkpoints`):
    the same command with ``--ckpt_path=last`` and a fixed logger ``version`` resumes a
    killed run, and reproduces the uninterrupted one (:mod:`unlearn.resume`).
    """

    def before_instantiate_classes(self) -> None:
        """Turn off TensorBoard's placeholder ``hp_metric``."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        loggers = (config.get("trainer") or {}).get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = getattr(logger, "init_args", None)
            if init_args is not None and str(logger.class_path).endswith("TensorBoardLogger"):
                init_args["default_hp_metric"] = False

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the data set's classes and shape into the model; add ``--test_after_fit``."""
        for field in ("num_classes", "image_shape"):
            parser.link_arguments(
                f"data.{field}", f"model.init_args.{field}", apply_on="instantiate"
            )
        # one place for a run's files: ``--trainer.default_root_dir`` moves the logs too
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="after fit, test the final weights and write metrics.json in the log dir",
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, each of its full checkpoint callbacks keeping ``last.ckpt``."""
        trainer = super().instantiate_trainer(**kwargs)
        keep_last_checkpoints(trainer)
        return trainer

    def before_fit(self) -> None:
        """Start the clock of the run."""
        self._fit_started = time.perf_counter()

    def after_fit(self) -> None:
        """Test the final weights and record the metrics when ``--test_after_fit`` is set."""
        if not self.config.get(self.subcommand, {}).get("test_after_fit", False):
            return
        fit_seconds = time.perf_counter() - self._fit_started
        validation = {k: float(v) for k, v in self.trainer.callback_metrics.items()}
        tested = self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        # ``log_dir`` broadcasts from rank zero: every rank must ask before any returns
        log_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if not self.trainer.is_global_zero:
            return
        record = {
            "validation": validation,
            "test": {k: float(v) for k, v in (tested[0] if tested else {}).items()},
            "epochs": self.trainer.current_epoch,
            "global_step": self.trainer.global_step,
            "fit_seconds": fit_seconds,
        }
        write_json_atomic(log_dir / "metrics.json", record)


def _import_task_modules() -> None:
    """Import every subpackage whose classes configs name by short ``class_path``."""
    for name in (
        "unlearn.data",
        "unlearn.tasks",
        "unlearn.models",
        "unlearn.defenses",
        "unlearn.callbacks",
    ):
        importlib.import_module(name)


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
    """Entry point of ``python -m unlearn`` and the ``unlearn`` console script.

    Bad input exits 2 with one line ``unlearn SUB: error: MESSAGE`` on stderr: an
    :class:`~unlearn.errors.UnlearnError`, also one raised by a class's ``__init__`` while
    jsonargparse builds it, a parse error of an option or a config file (see
    :func:`parse_errors_raise`) and invalid YAML in a config file (:func:`name_config_files`).
    """
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
        run, run_args = getattr(importlib.import_module(module_name), function), argv[1:]
    else:
        run, run_args = run_lightning, argv
    name_config_files()
    try:
        with parse_errors_raise():
            run(run_args)
    except Exception as err:  # re-raised unless an input check is at its root
        found = input_error_in(err)
        if found is None:
            raise
        exit_usage(argv[0], found)


@contextmanager
def parse_errors_raise() -> Iterator[None]:
    """Within the block, jsonargparse's parse errors raise :class:`ConfigError` (one line).

    jsonargparse prints a parser's usage (some 60 lines for ``fit``) and a nested message,
    then exits 2; here its message is condensed by :func:`~unlearn.errors.one_line` (the
    field's dotted name and the reason) for :func:`main` to print. Parsers built with
    ``exit_on_error=False`` raise their ``ArgumentError`` as before.
    """
    original = ArgumentParser.error

    def error(self: ArgumentParser, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            original(self, message, ex)
        raise ConfigError(one_line(message)) from None

    ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        ArgumentParser.error = original  # type: ignore[method-assign]


def _yaml_error_text(err: yaml.YAMLError) -> str:
    """``problem (line L, column C) while context`` of a YAML error (1-based place)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    place = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    context = getattr(err, "context", None)
    return f"{problem}{place}" + (f" {context}" if context else "")


def name_config_files() -> None:
    """Make invalid YAML in a config file an error naming the file (once per process).

    jsonargparse's YAML loader reports ``in "<unicode string>"``: it is given the file's
    text. The loader installed here gets the file's path too (jsonargparse passes it to
    loaders that take a ``path``) and raises :class:`ConfigError` with it; a value on the
    command line (no path) raises the YAML error as before, which jsonargparse handles.
    """
    current = get_loader("yaml")
    if getattr(current, "names_config_files", False):
        return

    def load(value: str, path: str | os.PathLike = "") -> Any:
        try:
            return current(value)
        except yaml.YAMLError as err:
            if not str(path):
                raise
            raise ConfigError(f"{path}: not valid YAML: {_yaml_error_text(err)}") from None

    load.names_config_files = True  # type: ignore[attr-defined]
    set_loader("yaml", load, (yaml.YAMLError,))


def run_lightning(
    args: Sequence[str], run: bool = True, cli_class: type[UnlearnCLI] = UnlearnCLI
) -> UnlearnCLI:
    """Run a LightningCLI subcommand (``fit``, ``validate``, ``test``, ``predict``).

    Args:
        args: The command line after ``python -m unlearn``, e.g. ``["fit", "--config", ...]``.
        run: ``False`` only builds the trainer, model and data module from ``args`` (no
            subcommand then), for scripts that drive the trainer themselves.
        cli_class: a subclass of :class:`UnlearnCLI` to build instead (the benchmark's
            config check stops one after it has built its parser).
    """
    _import_task_modules()
    with warnings.catch_warnings():
        # We always pass the arguments explicitly (``main`` strips the subcommand dispatch), so
        # LightningCLI's warning about ``args`` next to ``sys.argv`` is noise for every run.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return cli_class(
            model_class=BaseTask,
            datamodule_class=BaseDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            args=list(args),
            run=run,
        )
