"""segheads' messages go through Python's ``logging``: the ``segheads`` logger (``logger``) and its
child ``segheads.progress`` (a grid's progress lines, ``harness.grid.progress``). A library user
configures them as any logger (level, handlers, propagation); the command line calls
``configure``: INFO and above to stderr (``--quiet``: warnings only; ``-v``: debug too), stdout
keeping a command's own output.

On stderr a message reads ``[segheads] <message>``, a warning ``[segheads] warning: <message>``;
progress lines are written as they are (``[3/5] softmax@resnet10t/mlp ... FINISHED ...``).
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("segheads")
progress_logger = logging.getLogger("segheads.progress")


class _Format(logging.Formatter):
    """``[segheads] `` before a message, ``warning: `` (``error: ``) after it for those levels;
    progress lines as they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == progress_logger.name:
            return message
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        text = f"[segheads] {level}{message}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a message comes (a test's capture, a
    redirection made after ``configure``)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(verbosity: int = 0, stream=None) -> logging.Handler:
    """Send the ``segheads`` logger's messages to ``stream`` (stderr): INFO and above at
    ``verbosity`` 0, WARNING and above below 0 (``--quiet``), DEBUG above 0 (``-v``). Replaces
    the handler an earlier call installed; returns the one it installs."""
    for handler in [h for h in logger.handlers if getattr(h, "_segheads", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    handler._segheads = True
    handler.setFormatter(_Format())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    return handler
