"""Security defaults: YAML is safe-loaded (a spec cannot run code), checkpoints load with
``weights_only=True`` (a pickle cannot run code), nothing reaches a shell, local Ray and
the MLflow UI stay on 127.0.0.1. Checked on real files and, for every call site, in the source."""

import ast
import ipaddress
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from harness.check import load_reference
from harness.cli import main
from harness.config import RunConfig, apply_overrides
from harness.errors import InputError
from harness.grid import load_grid
from harness.modeling import build_segmentor

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
    with pytest.raises(InputError, match=r"backbone.pt: not a state dict torch can read \(UnpicklingError\)"):
        build_segmentor(cfg, 3, 255)  # read with weights_only: the pickle's code never runs
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


def test_telemetry_is_off_unless_the_caller_turns_it_on():
    plain = {k: v for k, v in os.environ.items()
             if k not in ("RAY_USAGE_STATS_ENABLED", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    show = "import harness, os; print([os.environ[k] for k in ('RAY_USAGE_STATS_ENABLED', 'MLFLOW_DISABLE_TELEMETRY', 'DO_NOT_TRACK')])"
    out = subprocess.run([sys.executable, "-c", show], env=plain, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['0', 'true', 'true']"
    chosen = subprocess.run([sys.executable, "-c", show], env={**plain, "RAY_USAGE_STATS_ENABLED": "1"},
                            capture_output=True, text=True, check=True).stdout
    assert chosen.strip() == "['1', 'true', 'true']"


def test_local_ray_and_the_mlflow_ui_bind_to_loopback():
    local = [node for _, node in _calls("ray.init") if _keyword(node, "address") == "local"]
    assert local and all(_keyword(n, "_node_ip_address") == "127.0.0.1" and _keyword(n, "include_dashboard") is False
                         for n in local)
    from harness.cli.parser import build_parser as _parser

    ui = _parser().parse_args(["ui"])
    assert ui.host == "127.0.0.1"


_LISTENERS = """
import ipaddress, json, os, re, subprocess, time
from harness.engine.launch import init_ray

def tree(pid):
    pids = {pid}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if parent == pid:
            pids |= tree(int(entry))
    return pids

init_ray(None)
import ray
ray.get(ray.remote(lambda: 1).remote())  # a worker is up
time.sleep(2)  # the dashboard agent and runtime-env agent bind after the raylet
pids = tree(os.getpid())
listening = []
for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines():
    if {int(p) for p in re.findall(r"pid=(\\d+)", line)} & pids:
        listening.append(line.split()[3].rsplit(":", 1)[0].strip("[]"))
ray.shutdown()
print(json.dumps({"listening": listening, "auth": os.environ.get("RAY_AUTH_MODE")}))
"""


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # "*": every interface
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_local_ray_listens_only_on_loopback_when_the_caller_exported_nothing():
    """The grid's local Ray in a process whose environment lacks RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:
    every listening socket of every Ray process (GCS, raylet, workers, agents) is on loopback;
    token authentication is on, chosen explicitly, so Ray does not warn about it on every run."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE")}
    done = subprocess.run([sys.executable, "-c", _LISTENERS], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=180, check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["auth"] == "token" and "Token authentication is enabled" not in done.stderr
    hosts = found["listening"]
    assert len(hosts) >= 3  # GCS, raylet, a worker at least: the listing did find Ray's sockets
    assert [h for h in hosts if not _is_loopback(h)] == []
    assert not _is_loopback("*") and not _is_loopback("0.0.0.0") and _is_loopback("::ffff:127.0.0.1")
