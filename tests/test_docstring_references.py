"""Docstrings name code that exists: every dotted ``harness.x.y`` (``classifiers.``, ``backbones.``)
name in a docstring of the project's packages imports, and every ``folder/file.py`` of this project it
names is a file; ``segheads --help`` names the defaults the config has."""

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "classifiers", "backbones")
_DOTTED = re.compile(r"(?<![\w.])((?:harness|classifiers|backbones)(?:\.[A-Za-z_]\w*)+)")
_PATH = re.compile(r"(?<![\w./])((?:[A-Za-z_]\w*/)+[A-Za-z_]\w*\.py)\b")


def _docstrings():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in [tree, *ast.walk(tree)]:
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    text = ast.get_docstring(node)
                    if text:
                        yield path, text


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


def test_dotted_names_in_docstrings_import():
    missing = sorted({f"{path.relative_to(ROOT)}: {name}" for path, text in _docstrings()
                      for name in _DOTTED.findall(text) if not _resolves(name.rstrip("."))})
    assert missing == []


def test_files_named_in_docstrings_exist():
    """A path whose first folder is one of this project's (``engine/launch.py``, ``jobs/x.yaml``) is
    a file here; paths into other code bases (``mmseg/models/...``) are theirs."""
    bases = [ROOT, *(ROOT / package for package in PACKAGES)]
    missing = set()
    for path, text in _docstrings():
        for name in _PATH.findall(text):
            here = [base for base in [*bases, path.parent] if (base / name.split("/")[0]).is_dir()]
            if here and not any((base / name).is_file() for base in here):
                missing.add(f"{path.relative_to(ROOT)}: {name}")
    assert sorted(missing) == []


@pytest.mark.parametrize("command", ["run", "measure"])
def test_cli_help_names_the_config_s_default_backbone(command, capsys):
    from harness.cli.parser import build_parser
    from harness.config import RunConfig

    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"--backbone BACKBONE timm model name or registered encoder (default {RunConfig().model.backbone})" in help_text


def test_top_level_help_is_a_sentence_and_prepare_data_help_lists_every_layout(capsys):
    from harness.cli.parser import DESCRIPTION, PREPARE_LAYOUTS, build_parser
    from harness.data.prepare import PREPARERS

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert DESCRIPTION.endswith(".") and " ".join(DESCRIPTION.split()) in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prepare-data", "--help"])
    shown = capsys.readouterr().out
    listed = re.findall(r"^  (\S+) +reads ", PREPARE_LAYOUTS, re.M)
    assert listed == list(PREPARERS) and all(name in shown for name in listed)
