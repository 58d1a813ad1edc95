"""A data module as a config (``{"class_path", "init_args"}``) and back.

:func:`data_config` reads the arguments a data module recorded when it was built (see
:class:`~unlearn.data.base.BaseDataModule`); :func:`data_module_from_config` builds the module
again with jsonargparse, as ``python -m unlearn`` does from a YAML config.
"""

from __future__ import annotations

import json
from argparse import ArgumentError
from typing import Any, TypeVar

from jsonargparse import ArgumentParser

from unlearn.data.base import BaseDataModule
from unlearn.errors import UnlearnError

T = TypeVar("T", bound=BaseDataModule)


def instantiate_config(parser: ArgumentParser, cfg: Any) -> Any:
    """``parser.instantiate`` (jsonargparse >= 4.49) or its older name."""
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(cfg)


def data_config(data: BaseDataModule) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` that rebuilds ``data``: its class and every argument.

    ``init_args`` holds every argument of the class's ``__init__`` (defaults included) as the
    module was given it, as plain values (paths as strings, tuples as lists).

    Raises:
        UnlearnError: an argument's value is not a plain value (it cannot be recorded).
    """
    klass = type(data)
    class_path = f"{klass.__module__}.{klass.__qualname__}"
    unrecorded = getattr(data, "unrecorded_arguments", [])
    if unrecorded:
        raise UnlearnError(
            f"{klass.__name__}: argument(s) {unrecorded} are not plain values (str, number, "
            "bool, None, path, or lists/dicts of them), so the data module cannot be recorded "
            "as a config; pass plain values"
        )
    init_args = dict(data.hparams)
    json.dumps(init_args)  # plain by construction; fail here rather than in a writer
    return {"class_path": class_path, "init_args": init_args}


def data_module_from_config(config: dict[str, Any] | None, base: type[T], what: str) -> T:
    """Build the data module that ``config`` (``{"class_path", "init_args"}``) describes.

    Args:
        config: as :func:`data_config` writes it (or a YAML config's ``data:`` section).
        base: the class the module must be (a subclass of).
        what: where ``config`` comes from, for messages (e.g. the ``meta.json`` path).

    Raises:
        UnlearnError: ``config`` is missing or does not describe a ``base``.
    """
    if not config:
        raise UnlearnError(
            f"{what} records no data module (a 'data' entry with class_path and init_args); "
            "pass the data module"
        )
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, "data", required=True)
    try:
        cfg = parser.parse_object({"data": config})
    except ArgumentError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise UnlearnError(
            f"{what}: 'data' is not a valid {base.__name__} config: {detail}"
        ) from None
    return instantiate_config(parser, cfg).data
