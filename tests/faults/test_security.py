"""Security defaults: YAML is safe-loaded (a spec cannot run code), checkpoints load with
``weights_only=True`` (a pickle cannot run code), nothing reaches a shell, local Ray and
the MLflow UI stay on 127.0.0.1. Checked on real files and, for every call site, in the source."""

import ast
import pickle
from pathlib import Path

import pytest

from harness.cli import main
from harness.config import RunConfig, apply_overrides
from harness.errors import InputError
from harness.grid import load_grid
from harness.reference import load_reference
from harness.run import build_segmentor

ROOT = Path(__file__).resolve().parents[2]
_SOURCES = sorted(p for package in ("harness", "classifiers", "backbones") for p in (ROOT / package).rglob("*.py"))


class _Payload:
    """Unpickling this would create ``target``: the proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_yaml_python_tags_are_refused_and_never_run(tmp_path, capsys):
    target = tmp_path / "pwned"
    payload = f'!!python/object/apply:os.system ["touch {target}"]'
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: {payload}\nbackbones: [resnet10t]\nclassifiers: [softmax]\n")
    with pytest.raises(InputError, match="spec.yaml: not valid YAML"):
        load_grid(spec)
    reference = tmp_path / "ref.yaml"
    reference.write_text(f"name: x\nsource: {payload}\ncases: []\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_reference(reference)
    assert main(["run", "--set", f"train.lr={payload}"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert not target.exists()


def test_a_malicious_checkpoint_is_refused_and_never_run(tmp_path):
    target = tmp_path / "pwned"
    checkpoint = tmp_path / "backbone.pt"
    with open(checkpoint, "wb") as out:
        pickle.dump({"conv.weight": _Payload(target)}, out, protocol=2)
    cfg = apply_overrides(RunConfig(), ["model.backbone=resnet10t", f"model.backbone_kwargs.checkpoint={checkpoint}"])
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        build_segmentor(cfg, 3, 255)
    assert not target.exists()


def test_shell_metacharacters_in_a_spec_are_just_unknown_names(tmp_path):
    target = tmp_path / "pwned"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: shell\nbackbones: ['resnet10t; touch {target}']\nclassifiers: ['$(touch {target})']\n")
    with pytest.raises(InputError, match=r"backbones\[0\]: unknown backbone"):
        load_grid(spec)
    assert not target.exists()


def _calls(name: str):
    """(file, call node) for every call written ``name(...)`` in the package sources."""
    for path in _SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                yield path.relative_to(ROOT), node


def _keyword(node: ast.Call, name: str):
    """The keyword argument's literal value, its source text if not a literal, None if absent."""
    found = [k.value for k in node.keywords if k.arg == name]
    if not found:
        return None
    try:
        return ast.literal_eval(found[0])
    except ValueError:
        return ast.unparse(found[0])


def test_source_has_no_unsafe_loading_or_shell():
    assert _SOURCES
    for unsafe in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "pickle.load", "pickle.loads", "eval", "exec",
                   "os.system", "os.popen"):
        assert not list(_calls(unsafe)), unsafe
    loads = list(_calls("torch.load"))
    assert loads and all(_keyword(node, "weights_only") is True for _, node in loads)
    for runner in ("subprocess.run", "subprocess.call", "subprocess.Popen", "subprocess.check_output"):
        assert all(_keyword(node, "shell") in (None, False) for _, node in _calls(runner))


def test_local_ray_and_the_mlflow_ui_bind_to_loopback():
    local = [node for _, node in _calls("ray.init") if _keyword(node, "address") == "local"]
    assert local and all(_keyword(n, "_node_ip_address") == "127.0.0.1" and _keyword(n, "include_dashboard") is False
                         for n in local)
    from harness.cli import _parser

    ui = _parser().parse_args(["ui"])
    assert ui.host == "127.0.0.1"
