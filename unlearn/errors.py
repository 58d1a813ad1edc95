"""Errors caused by the user's input; the CLI prints their message without a traceback."""


class UnlearnError(Exception):
    """Bad input (a file, a field, a value): the message names it, what was expected and found."""
