"""Errors caused by what the user gave (names, files, settings), as opposed to bugs.

The CLI prints an ``InputError`` as one line and exits with status 2; every
other exception is a bug or a runtime fault and keeps its traceback.
"""


class InputError(ValueError):
    """Bad user input; the message names the file, key or value and what was expected."""

    def __init__(self, message: str) -> None:
        # torch's DataLoader re-raises a worker's error as type(exc)(caught-in-worker text +
        # traceback); keep only the original one-line message.
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def unknown_name_error(kind: str, name: str, known: list[str]) -> InputError:
    """The error for a name that is not registered, listing the registered ones."""
    listed = ", ".join(sorted(known)) or "(none registered)"
    return InputError(f"unknown {kind} {name!r}; known {kind}s: {listed}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's ``torch.OutOfMemoryError``, Python's ``MemoryError`` or the CPU allocator's
    "can't allocate memory" ``RuntimeError``."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc).lower() for text in _OOM_MESSAGES)


def one_line(exc: BaseException) -> str:
    """``Type: first line`` of ``exc``; an out-of-memory error says so first."""
    text = f"{type(exc).__name__}: {str(exc).strip()}".splitlines()[0]
    if is_out_of_memory(exc) and "out of memory" not in text:
        text = f"out of memory ({text})"
    return text
