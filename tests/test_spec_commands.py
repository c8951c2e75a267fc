"""The commands written in the grid specs' and reference files' headers parse as segheads' own CLI
parses them, name files that exist and datasets ``prepare-data`` knows, and a paper grid's command
gives the cluster its shared ``--storage`` (README, "Run on a cluster")."""

import re
import shlex
from pathlib import Path

import pytest

from harness.cli.parser import build_parser
from harness.data.prepare import PREPARERS

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "jobs").rglob("*.yaml"))


def _header_commands(path: Path) -> list[str]:
    """Each ``segheads ...`` command of the file's comment lines, ``&&`` chains split, once with
    its optional ``[...]`` parts and once without."""
    commands = []
    for line in path.read_text().splitlines():
        match = re.match(r"#\s{2,}(segheads\s.*)$", line)  # an indented command, not prose
        if match:
            for command in match.group(1).split("&&"):
                command = command.strip()
                commands += [re.sub(r"\[|\]", "", command), re.sub(r"\s*\[[^\]]*\]", "", command)]
    return list(dict.fromkeys(commands))


def _parsed(command: str):
    words = shlex.split(command)
    assert words[0] == "segheads", command
    try:
        return build_parser().parse_args(words[1:])
    except SystemExit:
        pytest.fail(f"does not parse: {command}")


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT / "jobs")))
def test_header_commands_parse_and_name_what_exists(path):
    for command in _header_commands(path):
        args = _parsed(command)
        for name in ("spec", "reference"):
            if getattr(args, name, None) is not None:
                assert (ROOT / getattr(args, name)).is_file(), command
        if args.command == "prepare-data":
            assert args.name in PREPARERS, command
        if args.command == "grid" and "papers" in path.parts:
            assert args.address == "auto" and args.storage == "/shared/checkpoints", command


def test_every_paper_spec_says_how_to_run_and_check_it():
    for path in sorted((ROOT / "jobs" / "papers").glob("*.yaml")):
        commands = [_parsed(c).command for c in _header_commands(path)]
        assert {"grid", "check", "prepare-data"} <= set(commands), path.name


def test_a_command_that_does_not_parse_is_caught():
    with pytest.raises(pytest.fail.Exception):
        _parsed("segheads grid jobs/quickstart.yaml --adress auto")
