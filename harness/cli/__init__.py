"""The ``segheads`` command line (also ``python -m harness``): parsing only, each command calling the
packages' public functions.

- ``parser``: ``build_parser`` (every command's arguments) and the flags that stand for config keys.
- ``cell``: ``run``, ``measure``, ``predict`` (one cell, one model).
- ``grid``: ``grid``, ``import-results``.
- ``results``: ``report``, ``check``, ``ui``.
- ``data``: ``prepare-data``, ``validate-data``.
- ``listing``: ``list``.
- ``heads``: ``check-head``.

A command's module (and with it torch, Ray or MLflow) is imported only when that command runs.
Exit status: 0 success, 1 runtime failure, 2 bad input (one-line message on stderr). Every command
logs through the ``segheads`` logger to stderr (``harness.logs``; ``--quiet``, ``-v``); stdout
holds a command's own output.
"""

from __future__ import annotations

import importlib
import os
import sys

from harness.cli.parser import build_parser
from harness.errors import InputError
from harness.logs import configure as configure_logging
from harness.plugins import load_plugins

_COMMANDS = {  # command -> (module of harness.cli, function)
    "run": ("cell", "run"), "measure": ("cell", "measure"), "predict": ("cell", "predict"),
    "grid": ("grid", "grid"), "import-results": ("grid", "import_results"),
    "report": ("results", "report"), "check": ("results", "check"), "ui": ("results", "ui"),
    "prepare-data": ("data", "prepare_data"), "validate-data": ("data", "validate_data"),
    "list": ("listing", "list_names"), "check-head": ("heads", "check_head"),
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(-1 if args.quiet else args.verbose)  # the segheads logger to stderr (harness.logs)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per result, not bars
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout is segheads' own output
    module, function = _COMMANDS[args.command]
    try:
        load_plugins(args.imports)
        command = getattr(importlib.import_module(f"harness.cli.{module}"), function)
        return command(args)
    except InputError as exc:
        print(f"segheads: error: {exc}", file=sys.stderr)
        return 2
