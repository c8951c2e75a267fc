"""Plugins (``harness.plugins``): a real package outside the tree (tests/plugin_package, its own
pyproject.toml and entry point) installed with pip into a scratch folder; its head trains in a grid
on Ray beside the five built-ins, is logged and reported; the kit names each seeded failure of its
broken head; a failing or clashing plugin is one line and exit 2."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from gridtools import TINY
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.config import RunConfig, config_hash
from harness.errors import InputError
from harness.plugins import AUTOLOAD_OFF, activate, load_plugins

PACKAGE = Path(__file__).parent / "plugin_package"
SCRIPT = Path(sys.executable).parent / "segheads"
BUILTINS = ["softmax", "query", "protoseg", "ece", "ssa"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """tests/plugin_package installed by pip into a scratch folder (built from a copy, so the build
    leaves nothing in the tree); the folder goes on PYTHONPATH, as a site-packages would be."""
    scratch = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PACKAGE, scratch / "source")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(scratch / "site"), str(source)], check=True, capture_output=True, timeout=300)
    return scratch / "site"


def _environment(site, **env):
    """This process's environment with ``site`` first on ``PYTHONPATH``, and ``env``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), **env}


def _segheads(args, site, cwd, **env):
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, env=_environment(site, **env),
                          timeout=600)


def _python(code, site, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_environment(site, **env),
                          timeout=120)


_STAMP = "from harness.plugins import load_plugins; print(load_plugins(['segheads_example_head.heads'])[0].stamp)"


@pytest.fixture(scope="module")
def stamp(installed):
    """The installed plugin's stamp (``Plugin.stamp``), as a fresh process gives it."""
    return _python(_STAMP, installed).stdout.strip()


def test_the_plugin_head_trains_in_a_grid_beside_the_builtins_and_is_logged_and_reported(installed, stamp, tmp_path):
    listed = _segheads(["list", "classifiers"], installed, tmp_path)
    assert stamp.startswith("segheads-example-head 0.1.0 ") and len(stamp.split()[-1]) == 16
    source = {line.split(maxsplit=1)[0]: line.split(maxsplit=1)[1] for line in listed.stdout.splitlines()}
    assert source["mlp_softmax"] == f"plugin segheads_example_head.heads ({stamp}; entry point 'example_head')"
    assert all(source[name] == "segheads" for name in BUILTINS)

    # Entry points off: each trial process (a fresh one, or one that ran a built-in cell before) has
    # the head only because the cell's plugins are imported where it starts.
    spec = tmp_path / "plugin_grid.yaml"
    spec.write_text(yaml.safe_dump({"name": "plugin_grid", **TINY, "classifiers": [*BUILTINS, "mlp_softmax"],
                                    "train": {"iters": 3}, "measure": {"enabled": False},
                                    "imports": ["segheads_example_head.heads"]}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = _segheads(["grid", str(spec), "--tracking-uri", uri], installed, tmp_path, **{AUTOLOAD_OFF: "1"})
    assert grid.returncode == 0, grid.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("plugin_grid").experiment_id])
    cells = {r.data.params["model.classifier"]: r for r in runs if "config_hash" in r.data.tags}
    assert sorted(cells) == sorted([*BUILTINS, "mlp_softmax"])
    assert all(r.info.status == "FINISHED" and "mIoU" in r.data.metrics for r in cells.values())
    assert cells["mlp_softmax"].data.params["plugins.segheads_example_head.heads"] == stamp
    assert all(not any(k.startswith("plugins.") for k in cells[name].data.params) for name in BUILTINS)

    report = _segheads(["report", "--experiment", "plugin_grid", "--tracking-uri", uri, "--out", "report"],
                       installed, tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    table = (tmp_path / "report" / "results.csv").read_text()
    assert "mlp_softmax" in table and "mlp_softmax" in (tmp_path / "report" / "report.md").read_text()


def test_the_kit_names_each_seeded_failure_of_the_broken_head_and_passes_the_sound_one(installed, tmp_path):
    broken = _segheads(["check-head", "segheads_example_head.broken:BrokenHead"], installed, tmp_path)
    assert broken.returncode == 1
    failed = sorted(line.split()[1] for line in broken.stdout.splitlines() if line.strip().startswith("FAILED"))
    assert failed == sorted(["logits_shape_and_dtype", "gradients_reach_learnable", "ignored_pixels_change_nothing",
                             "no_training_work_at_inference", "state_dict_round_trip"])
    assert "learnable parameters no loss reaches: unused" in broken.stdout
    sound = _segheads(["check-head", "mlp_softmax"], installed, tmp_path)
    assert sound.returncode == 0 and sound.stdout.startswith("mlp_softmax: 12 of 12 checks hold"), sound.stdout


def test_a_worker_imports_the_planned_plugin_and_refuses_another_copy(installed, stamp, tmp_path):
    """A Ray worker on a node without the entry points loaded (autoload off) builds the plugin
    head from the cell's ``plugins``; a copy that differs from the planned one is refused."""
    code = ("from harness.config import RunConfig; from harness.plugins import activate; "
            "from classifiers import list_classifiers; "
            f"cfg = RunConfig(plugins={{'segheads_example_head.heads': {stamp!r}}}); "
            "before = 'mlp_softmax' in list_classifiers(); activate(cfg); "
            "print(before, 'mlp_softmax' in list_classifiers())")
    worker = _python(code, installed, **{AUTOLOAD_OFF: "1"})
    assert worker.stdout.split() == ["False", "True"], worker.stderr[-2000:]

    edited = tmp_path / "edited"
    shutil.copytree(installed, edited)
    heads = edited / "segheads_example_head" / "heads.py"
    heads.write_text(heads.read_text().replace("hidden: int = 64", "hidden: int = 32"))
    refused = _python(code, edited, **{AUTOLOAD_OFF: "1"})  # this node's copy was edited after the plan
    assert refused.returncode == 1 and (f"the cell was planned with {stamp}: install the same version on every "
                                        "node") in refused.stderr.splitlines()[-1]
    planned = RunConfig(plugins={"json": "unpackaged 0000000000000000"})
    with pytest.raises(InputError, match=r"plugin json on .* is unpackaged [0-9a-f]{16}; the cell was planned with "
                                         r"unpackaged 0000000000000000: install the same version on every node"):
        activate(planned)


def test_the_plugin_digest_is_part_of_the_cell_identity():
    plain = RunConfig()
    first = RunConfig(plugins={"my_heads.heads": "my-heads 0.1.0 0123456789abcdef"})
    edited = RunConfig(plugins={"my_heads.heads": "my-heads 0.1.0 fedcba9876543210"})
    assert len({config_hash(plain), config_hash(first), config_hash(edited)}) == 3
    assert config_hash(plain) == config_hash(RunConfig(plugins={}))


def test_spec_imports_and_the_import_flag_register_heads_and_necks_before_the_axes_are_checked(tmp_path):
    (tmp_path / "spec_parts.py").write_text(
        "from backbones.necks import MLPNeck, register_neck\n"
        "from classifiers import register_classifier\nfrom classifiers.softmax import SoftmaxClassifier\n\n"
        "@register_classifier('spec_softmax')\nclass SpecSoftmax(SoftmaxClassifier):\n    pass\n\n"
        "@register_neck('spec_mlp')\nclass SpecMLP(MLPNeck):\n    pass\n")
    spec = tmp_path / "imports.yaml"
    spec.write_text(yaml.safe_dump({"name": "imports", **TINY, "classifiers": ["softmax", "spec_softmax"],
                                    "imports": ["spec_parts"]}))
    dry = _segheads(["grid", str(spec), "--dry-run"], tmp_path, tmp_path, **{AUTOLOAD_OFF: "1"})
    assert dry.returncode == 0 and "spec_softmax@test_convnext/mlp" in dry.stdout, dry.stderr[-2000:]
    cells = re.split(r"\n  (?=[0-9a-f]{16}  )", dry.stdout)  # a block per cell: only the plugin head's has it
    stamped = [cell.split()[1] for cell in cells if "      plugin: spec_parts (unpackaged " in cell]
    assert stamped == ["spec_softmax@test_convnext/mlp"]
    spec.write_text(yaml.safe_dump({"name": "imports", **TINY, "classifiers": ["softmax"], "necks": ["spec_mlp"]}))
    flag = _segheads(["grid", str(spec), "--dry-run", "--import", "spec_parts"], tmp_path, tmp_path)
    assert flag.returncode == 0 and "softmax@test_convnext/spec_mlp" in flag.stdout, flag.stderr[-2000:]
    assert "      plugin: spec_parts (unpackaged " in flag.stdout  # a plugin neck stamps its cells too


def test_a_head_a_script_imported_itself_is_stamped_so_its_workers_import_it_too(tmp_path):
    """Through the Python API a script may import its head's module itself, not as a plugin: the
    cell still records that module (``engine.run`` stamps it), so every worker imports it."""
    (tmp_path / "direct_head.py").write_text(
        "from classifiers import register_classifier\nfrom classifiers.softmax import SoftmaxClassifier\n\n"
        "@register_classifier('direct_softmax')\nclass DirectSoftmax(SoftmaxClassifier):\n    pass\n")
    code = ("import direct_head; from harness.config import ModelConfig, RunConfig; "
            "from harness.plugins import source, with_plugins; "
            "print(with_plugins(RunConfig(model=ModelConfig(classifier='direct_softmax'))).plugins); "
            "print(with_plugins(RunConfig()).plugins); print(source('classifier', 'direct_softmax'))")
    lines = _python(code, tmp_path, **{AUTOLOAD_OFF: "1"}).stdout.splitlines()
    assert re.fullmatch(r"\{'direct_head': 'unpackaged [0-9a-f]{16}'\}", lines[0]) and lines[1] == "{}"
    assert lines[2] == "module direct_head (registered outside a plugin)"


def test_a_plugin_that_fails_to_import_or_takes_a_name_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    (tmp_path / "clashing_head.py").write_text(
        "from classifiers import register_classifier\nfrom classifiers.softmax import SoftmaxClassifier\n\n"
        "@register_classifier('softmax')\nclass Again(SoftmaxClassifier):\n    pass\n")
    (tmp_path / "failing_head.py").write_text("import torch\nraise RuntimeError('needs a GPU to import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for module, says in [
        ("clashing_head", "plugin clashing_head (--import): ValueError: classifier 'softmax' is already registered "
                          "by classifiers.softmax; expected a new name"),
        ("failing_head", "plugin failing_head (--import): RuntimeError: needs a GPU to import"),
        ("not_installed_head", "plugin not_installed_head (--import): ModuleNotFoundError: No module named "
                               "'not_installed_head'"),
        ("bad name", "plugin 'bad name' (--import): expected a module name such as my_package.heads"),
    ]:
        assert main(["list", "classifiers", "--import", module]) == 2
        assert capsys.readouterr().err.splitlines() == [f"segheads: error: {says}"]
    spec = tmp_path / "broken.yaml"
    spec.write_text(yaml.safe_dump({"name": "broken", **TINY, "classifiers": ["softmax"], "imports": ["failing_head"]}))
    assert main(["grid", str(spec), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == (f"segheads: error: {spec}: plugin failing_head (imports): "
                                               "RuntimeError: needs a GPU to import")
    with pytest.raises(InputError, match="plugin failing_head"):
        load_plugins(["failing_head"])
