"""Errors caused by the user's input; the CLI prints their message without a traceback.

Every command exits 2 with one line ``unlearn SUB: error: MESSAGE`` on stderr for an
:class:`UnlearnError` (:func:`unlearn.cli.main`). An input check raises one (or a subclass)
whose message names the field or file, what was expected and what was found; a check that
code may also catch as ``ValueError`` raises :class:`ConfigError`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import NoReturn

#: exit status of a command refused for its input
EXIT_USAGE = 2

#: characters of a parser's reason kept in a one-line message
_REASON_CHARS = 240
#: lines of a jsonargparse error that only say where the real reason is
_STRUCTURE = ("Does not validate", "Subtypes:", "Errors:", "Given value", "Problem with given")


class UnlearnError(Exception):
    """Bad input (a file, a field, a value): the message names it, what was expected and found."""


class ConfigError(UnlearnError, ValueError):
    """A setting (a config field, an option, an argument) outside what it may be."""


def check_number(
    owner: str,
    name: str,
    value: float | None,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> None:
    """Refuse ``value`` outside the given bounds (``None`` passes, ``nan`` fails any bound).

    Args:
        owner: who has the setting, for the message (a class name); ``""``: nobody named.
        name: the setting's name.
        value: its value.
        minimum: ``value >= minimum`` is required.
        maximum: ``value <= maximum`` is required.
        above: ``value > above`` is required (instead of ``minimum``).
        below: ``value < below`` is required (instead of ``maximum``).

    Raises:
        ConfigError: ``"OWNER: NAME must be in (0, 1], got 2"`` (or ``>= 1``, ``> 0``, ...).
    """
    if value is None:
        return
    inside = (
        (minimum is None or value >= minimum)
        and (above is None or value > above)
        and (maximum is None or value <= maximum)
        and (below is None or value < below)
    )
    if inside:
        return
    # (bound, bracket, comparison) of each side
    low = (above, "(", ">") if above is not None else (minimum, "[", ">=")
    high = (below, ")", "<") if below is not None else (maximum, "]", "<=")
    if low[0] is not None and high[0] is not None:
        expected = f"in {low[1]}{_bound(low[0])}, {_bound(high[0])}{high[1]}"
    else:
        bound, _, comparison = low if low[0] is not None else high
        expected = f"{comparison} {_bound(bound)}"
    raise ConfigError(f"{owner}: " * bool(owner) + f"{name} must be {expected}, got {value}")


def require_positive(owner: str, **values: float | None) -> None:
    """Refuse any of ``values`` (name=value) that is not > 0 (:func:`check_number`)."""
    for name, value in values.items():
        check_number(owner, name, value, above=0)


def require_at_least(owner: str, minimum: float, **values: float | None) -> None:
    """Refuse any of ``values`` (name=value) below ``minimum`` (:func:`check_number`)."""
    for name, value in values.items():
        check_number(owner, name, value, minimum=minimum)


def check_choice(owner: str, name: str, value: object, choices: Iterable[object]) -> None:
    """Refuse ``value`` not among ``choices``: ``"OWNER: NAME must be one of [...], got X"``."""
    options = sorted(choices, key=str)
    if value not in options:
        raise ConfigError(f"{owner}: {name} must be one of {options}, got {value!r}")


def _bound(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def one_line(message: str | BaseException) -> str:
    """One line from a message: ``field 'a.init_args.b': reason`` from a jsonargparse error.

    jsonargparse nests its reasons over several lines (``Parser key "data":``, the Union's
    subtypes, ...): the keys are joined into the field's dotted name and the first reason is
    kept (at most 240 characters). Any other message has its lines joined.
    """
    text = str(message).strip()
    lines = [line.strip().removeprefix("- ").strip() for line in text.splitlines()]
    if not any(line.startswith(("Parser key", *_STRUCTURE)) for line in lines):
        return " ".join(line for line in lines if line)
    keys: list[str] = []
    nested = False
    reason = ""
    for line in lines:
        match = re.match(r'Parser key "([^"]+)":\s*(.*)', line)
        if match:
            keys += ["init_args", match.group(1)] if nested and keys else [match.group(1)]
            nested = False
            if match.group(2):
                reason = match.group(2)
                break
            continue
        if line.startswith("Problem with given class_path"):
            nested = True
            continue
        if line and not line.startswith(_STRUCTURE):
            reason = line
            break
    reason = reason or lines[0]
    unknown = re.match(r"Expected a dot import path string: (\S+)$", reason)
    if unknown:  # how jsonargparse says that no class has that name
        reason = f"unknown class '{unknown.group(1)}' (neither a known name nor an import path)"
    if len(reason) > _REASON_CHARS:
        reason = reason[: _REASON_CHARS - 3] + "..."
    return f"field '{'.'.join(keys)}': {reason}" if keys else reason


def input_error_in(error: BaseException) -> UnlearnError | None:
    """The :class:`UnlearnError` that ``error`` was raised from (its ``__cause__`` chain).

    jsonargparse wraps what a class's ``__init__`` raises while it builds it (``raise
    ValueError(...) from err``); the input check is the first cause that is an UnlearnError.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UnlearnError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def exit_usage(command: str, message: str | BaseException) -> NoReturn:
    """Print ``unlearn COMMAND: error: MESSAGE`` (one line) to stderr and exit 2."""
    print(f"unlearn {command}: error: {one_line(message)}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
