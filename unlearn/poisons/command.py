"""``python -m unlearn poison``: make a poison for a data module's training split.

Usage::

    python -m unlearn poison --config configs/digits/poison_em.yaml
    python -m unlearn poison --config configs/digits/poison_em.yaml --method.init_args.eps 0.05
    python -m unlearn poison --data DigitsDataModule --method LSP --output_dir poisons/digits/lsp
    python -m unlearn poison --help                 # every method and its arguments
    python -m unlearn poison --method.help EM       # one method's arguments
    python -m unlearn poison export --poison poisons/digits/em --output exports/digits_em

The config has the same shape as LightningCLI's: ``data: {class_path, init_args}`` and
``method: {class_path, init_args}`` plus ``output_dir``, ``seed``, ``poison_ratio``,
``device``. A rerun after an interruption continues from ``{output_dir}/state.pt``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, DefaultHelpFormatter

import unlearn
from unlearn.data import ImageClassificationDataModule
from unlearn.data.config import data_config, instantiate_config
from unlearn.data.poison_store import POISON_FILE, StoreExistsError, save_poison
from unlearn.errors import ConfigError, check_number
from unlearn.io import write_text_atomic
from unlearn.poisons.base import PoisonContext, PoisonData, PoisonMethod

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"


def _subclasses(base: type) -> list[type]:
    found, todo = [], [base]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if not inspect.isabstract(sub):
                found.append(sub)
    return sorted(set(found), key=lambda k: k.__name__)


def _signature_line(klass: type) -> str:
    parts = []
    for name, p in inspect.signature(klass.__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = p.default
        if isinstance(default, float):
            default = f"{default:.6g}"
        parts.append(name if default is inspect.Parameter.empty else f"{name}={default}")
    return f"  {klass.__name__} ({klass.__module__}): " + ", ".join(parts)


def methods_overview() -> str:
    """One line per known method: its name, module and arguments with defaults."""
    importlib.import_module("unlearn.poisons")  # registers the built-in methods

    lines = ["methods (--method CLASS, --method.help CLASS for details):"]
    lines += [_signature_line(k) for k in _subclasses(PoisonMethod)]
    lines.append("data modules (--data CLASS, --data.help CLASS):")
    lines += [f"  {k.__name__}" for k in _subclasses(ImageClassificationDataModule)]
    return "\n".join(lines)


class _RawEpilogFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description and the method list kept as written."""


def build_parser() -> ArgumentParser:
    """The parser of ``python -m unlearn poison``."""
    for name in ("unlearn.data", "unlearn.poisons"):  # register short class names
        importlib.import_module(name)

    parser = ArgumentParser(
        prog="python -m unlearn poison",
        description="Make unlearnable examples for a data module's training split and write\n"
        "them to a poison store (poison.pt + meta.json).\n"
        "Export a store as PNG files: python -m unlearn poison export --help",
        epilog=methods_overview(),
        formatter_class=_RawEpilogFormatter,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML config file")
    parser.add_subclass_arguments(
        ImageClassificationDataModule, "data", required=True, help="the clean data set"
    )
    parser.add_subclass_arguments(PoisonMethod, "method", required=True, help="the method")
    parser.add_argument(
        "--output_dir", type=str, required=True, help="directory of the poison store"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument(
        "--poison_ratio",
        type=float,
        default=1.0,
        help="fraction of the training samples to poison (drawn by seed)",
    )
    parser.add_argument(
        "--device",
        type=Literal["auto", "cpu", "cuda"],
        default="auto",
        help="where to compute (auto: cuda if available)",
    )
    parser.add_argument(
        "--overwrite",
        action=ActionYesNo,
        default=False,
        help="replace a finished poison; a saved state of other settings is discarded "
        "(one of the same settings is resumed)",
    )
    parser.add_argument("--progress", action=ActionYesNo, default=True, help="progress bars")
    parser.add_argument(
        "--checkpoint_interval",
        type=float,
        default=60.0,
        help="seconds between saves of the resumable state",
    )
    return parser


def load_images(data: ImageClassificationDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole clean training split as ``uint8 [N, C, H, W]`` and labels ``int64 [N]``."""
    source = data.train_source
    images = getattr(source, "images", None)
    if not isinstance(images, torch.Tensor):
        images = torch.stack([source.image(i) for i in range(len(source))])
    return images, source.labels


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but no CUDA device is available")
    return torch.device(device)


def _missing_directories(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, innermost first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


@contextmanager
def _removed_if_failed(directories: list[Path]) -> Iterator[None]:
    """Remove ``directories`` (innermost first) if the block raises and they are empty.

    Only what the command created is listed, and ``rmdir`` removes only empty directories:
    a directory that holds a resumable ``state.pt`` (or anything else) stays.
    """
    try:
        yield
    except BaseException:
        for directory in directories:
            try:
                directory.rmdir()
            except OSError:
                break  # not empty (or gone): its ancestors are not empty either
        raise


def generate_poison(
    data: ImageClassificationDataModule,
    method: PoisonMethod,
    output_dir: str | Path,
    seed: int = 0,
    poison_ratio: float = 1.0,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = False,
    checkpoint_interval: float = 60.0,
    config_text: str | None = None,
) -> Path:
    """Make a poison and write its store; the function behind the command.

    Args:
        data: the clean data module (its training split is poisoned; nothing is written to it).
        method: the method.
        output_dir: the store's directory.
        seed: seed of the subset, the method's randomness and the surrogate's initialisation.
        poison_ratio: fraction of the training samples to poison, in ``(0, 1]``.
        device: ``auto``, ``cpu`` or ``cuda``.
        overwrite: replace a finished store; discard a saved state of other settings or an
            unreadable one (a state of the same settings resumes either way).
        progress: show progress bars.
        checkpoint_interval: seconds between saves of the resumable state.
        config_text: the resolved config, written to ``config.yaml`` beside the store.

    Returns:
        The path of ``poison.pt``.
    """
    from lightning.fabric.utilities.seed import seed_everything

    check_number("", "poison_ratio", poison_ratio, above=0.0, maximum=1.0)
    check_number("", "checkpoint_interval", checkpoint_interval, minimum=0.0)
    compute_device = _resolve_device(device)
    output_dir = Path(output_dir)
    state_path = output_dir / STATE_FILE
    if (output_dir / POISON_FILE).exists() and not overwrite:
        raise StoreExistsError(
            f"{output_dir / POISON_FILE} exists; pass --overwrite to replace it or choose "
            "another --output_dir"
        )
    recorded = data_config(data)  # fails before the work if ``data`` cannot be recorded

    seed_everything(seed, verbose=False)
    info = data.info()
    images, labels = load_images(data)
    n = len(labels)
    if poison_ratio < 1.0:
        count = round(poison_ratio * n)
        if count == 0:
            raise ConfigError(
                f"poison_ratio {poison_ratio} of the {n} training samples poisons 0 "
                f"of them; at least 1 is needed (poison_ratio >= {1 / n:.3g})"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        indices = order[:count].sort().values
    else:
        indices = torch.arange(n)
    samples = PoisonData(images[indices], labels[indices], indices, info)

    params = method.params()
    budget = method.budget(info.image_shape)
    class_path = f"{type(method).__module__}.{type(method).__qualname__}"
    context = PoisonContext(compute_device, seed, state_path, progress, checkpoint_interval)
    key = {
        "class_path": class_path,
        "params": params,
        "seed": seed,
        "poison_ratio": poison_ratio,
        "fingerprint": info.fingerprint,
    }
    context.state_key = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    # a state of these settings resumes, --overwrite or not; any other is refused or discarded
    resumed = context.check_state(discard=overwrite)
    created = _missing_directories(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)  # the resumable state goes there
    with _removed_if_failed(created):  # a failed run leaves no directory it made (bar state)
        started = time.perf_counter()
        result = method.generate(samples, context)
        seconds = time.perf_counter() - started
        expected_shape = (len(indices), *info.image_shape)
        if tuple(result.delta.shape) != expected_shape:
            raise RuntimeError(
                f"{type(method).__name__}.generate returned delta of shape "
                f"{tuple(result.delta.shape)}, expected {expected_shape}"
            )
        meta = {
            "method": type(method).__name__,
            "class_path": class_path,
            "params": params,
            "norm": method.norm,
            "eps": budget,
            "dataset": info.name,
            "split": info.split,
            "num_samples": info.num_samples,
            "image_shape": list(info.image_shape),
            "num_classes": info.num_classes,
            "fingerprint": info.fingerprint,
            "train_subset": info.train_subset,
            "seed": seed,
            "poison_ratio": poison_ratio,
            "num_poisoned": len(indices),
            "classwise": result.class_patterns is not None,
            "generation_seconds": round(seconds, 3),
            "resumed": resumed,
            "device": str(context.device),
            "torch_version": torch.__version__,
            "unlearn_version": unlearn.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            # the data module's class and arguments, so that ``export`` can rebuild it
            "data": recorded,
            "info": result.info,
        }
        path = save_poison(output_dir, result.delta, indices, meta, result.class_patterns)
    if config_text is not None:
        write_text_atomic(output_dir / CONFIG_FILE, config_text)
    if state_path.exists():
        state_path.unlink()
    return path


def main(args: Sequence[str] | None = None) -> None:
    """Entry point: ``python -m unlearn poison [export] ...``."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["export"]:
        from unlearn.poisons.export import main as export_main

        export_main(argv[1:])
        return
    parser = build_parser()
    cfg = parser.parse_args(argv)
    init = instantiate_config(parser, cfg)
    started = time.perf_counter()
    path = generate_poison(
        init.data,
        init.method,
        cfg.output_dir,
        seed=cfg.seed,
        poison_ratio=cfg.poison_ratio,
        device=cfg.device,
        overwrite=cfg.overwrite,
        progress=cfg.progress,
        checkpoint_interval=cfg.checkpoint_interval,
        config_text=parser.dump(cfg),
    )
    meta = json.loads((path.parent / "meta.json").read_text())
    print(
        f"wrote {path} ({meta['method']}, {meta['norm']} eps {meta['eps']:.6g}, "
        f"{meta['num_poisoned']} of {meta['num_samples']} samples, "
        f"{meta['generation_seconds']:.1f} s generation, "
        f"{time.perf_counter() - started:.1f} s total)"
    )
