"""The base data module and the facts about a data set that a poison is checked against."""

from __future__ import annotations

import inspect
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightning import LightningDataModule

from unlearn.errors import UnlearnError, check_number


class DataNotFoundError(UnlearnError, FileNotFoundError):
    """A data set's files are missing; the message says which file and how to get it."""


class DataFileError(UnlearnError, ValueError):
    """A data set's file that is not what it should be (format, shape); the message names it."""


def require_files(dataset: str, root: Path, files: list[str], how_to_get: str) -> None:
    """Raise :class:`DataNotFoundError` naming the first missing file.

    Args:
        dataset: the data set's name, for the message.
        root: the data module's ``root``.
        files: paths relative to ``root`` that must exist.
        how_to_get: one sentence telling the user how to obtain the files.
    """
    for name in files:
        path = root / name
        if not path.is_file():
            raise DataNotFoundError(
                f"{dataset}: expected file '{path}' was not found (root: '{root}'). {how_to_get}"
            )


@dataclass(frozen=True)
class DatasetInfo:
    """What identifies the clean training data a poison was made for.

    Attributes:
        name: data set name, e.g. ``"cifar10"``.
        split: ``"train"``.
        num_samples: length of the split.
        image_shape: ``(C, H, W)``.
        num_classes: number of classes.
        fingerprint: hash of the clean data (see the sources' ``fingerprint``).
        train_subset: size of the class-balanced subset of the training split that the data
            module serves as its training split (``train_subset``), or ``None`` for the full
            split.
    """

    name: str
    split: str
    num_samples: int
    image_shape: tuple[int, int, int]
    num_classes: int
    fingerprint: str
    train_subset: int | None = None

    def to_dict(self) -> dict:
        """Plain-value form for ``meta.json``."""
        out = asdict(self)
        out["image_shape"] = list(self.image_shape)
        return out


#: a value JSON and ``torch.load(weights_only=True)`` take as it is
_PLAIN = (str, int, float, bool, type(None))


def plain_value(value: Any) -> Any:
    """``value`` as JSON-ready plain data: paths become strings, tuples lists (recursively).

    Raises:
        TypeError: for anything else (an object, a tensor, a function).
    """
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: plain_value(v) for k, v in value.items()}
    raise TypeError(f"a {type(value).__name__} is not a plain value")


def _constructor_arguments(obj: object, frame: types.FrameType | None) -> dict[str, Any]:
    """The arguments the outermost ``__init__`` of ``obj`` on the call stack was called with.

    Walks up from ``frame`` (the base's ``__init__``) through the ``__init__`` of each class of
    ``obj``'s MRO that is running on ``obj``; the outermost is the concrete class's (the one the
    user called), whose signature names every argument. Values are read as they were when the
    base's ``__init__`` ran (subclasses call it first).
    """
    functions = {}
    for klass in type(obj).__mro__:
        init = vars(klass).get("__init__")
        if isinstance(init, types.FunctionType):
            function = inspect.unwrap(init)
            functions[function.__code__] = function
    outermost = None
    while frame is not None:
        function = functions.get(frame.f_code)
        if function is not None and frame.f_locals.get(frame.f_code.co_varnames[0]) is obj:
            outermost = (function, frame.f_locals)
        frame = frame.f_back
    if outermost is None:
        return {}
    function, local = outermost
    arguments: dict[str, Any] = {}
    for name, parameter in list(inspect.signature(function).parameters.items())[1:]:
        if parameter.kind is parameter.VAR_KEYWORD:
            arguments.update(local.get(name, {}))
        elif parameter.kind is not parameter.VAR_POSITIONAL:
            arguments[name] = local[name]
    return arguments


class BaseDataModule(LightningDataModule):
    """Base of every data module that ``python -m unlearn fit`` accepts.

    The arguments the concrete data module was built with are recorded, as plain values, in
    ``hparams`` (what a poison's ``meta.json`` records and the exports rebuild the module
    from; see :func:`unlearn.data.config.data_config`). They are kept out of the logger's
    hyperparameters: the run's ``config.yaml`` holds them already.

    Args:
        batch_size: samples per training batch (evaluation uses the same).
        num_workers: data loader worker processes.
        seed: seed of every random choice the data module makes (splits, subsets).
    """

    def __init__(self, batch_size: int = 128, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        recorded: dict[str, Any] = {}
        #: arguments whose value is not a plain value (not in ``hparams``)
        self.unrecorded_arguments: list[str] = []
        for name, value in _constructor_arguments(self, inspect.currentframe()).items():
            try:
                recorded[name] = plain_value(value)
            except TypeError:
                self.unrecorded_arguments.append(name)
        # an explicit dict: Lightning's own frame walk would also take the arguments of an
        # enclosing LightningModule/DataModule __init__ that builds this one
        self.save_hyperparameters(recorded, logger=False)
        owner = type(self).__name__
        check_number(owner, "batch_size", batch_size, minimum=1)
        check_number(owner, "num_workers", num_workers, minimum=0)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
