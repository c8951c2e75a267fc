"""Errors caused by what the user gave (names, files, settings), as opposed to bugs.

The CLI prints an ``InputError`` as one line and exits with status 2; every
other exception is a bug or a runtime fault and keeps its traceback.
"""


class InputError(ValueError):
    """Bad user input; the message names the file, key or value and what was expected."""


def unknown_name_error(kind: str, name: str, known: list[str]) -> InputError:
    """The error for a name that is not registered, listing the registered ones."""
    listed = ", ".join(sorted(known)) or "(none registered)"
    return InputError(f"unknown {kind} {name!r}; known {kind}s: {listed}")
