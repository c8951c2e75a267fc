"""What a grid's results keep true across re-runs: a torn ``results.jsonl`` line, new measure
settings (re-measured, never retrained), cells logged before ``config_hash`` left measurement
out, and a changed setting (a new configuration, never a seed). Real Ray (``ray_cluster``),
real MLflow SQLite stores, real processes."""

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from gridtools import assert_finished_once, children, write_spec
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.config import config_hash, flatten, to_dict
from harness.grid import expand, load_grid, run_grid
from harness.results import read_results
from harness.tracking import read_artifact


def _reference(path, select, expect):
    path.write_text(yaml.safe_dump({"name": "t", "source": "test", "cases": [{"select": select, "expect": expect}]}))
    return path


_WRITER = """
import sys
from harness.grid.store import GridStore
from harness.results import CellResult
store = GridStore("torn", None, sys.argv[1], tracking=False)
line = CellResult("FINISHED", {}, "0" * 16, {}, per_image=["x" * 1000] * 250_000)
print("writing", flush=True)
store._append(line)
"""


def _kill_mid_line(path) -> int:
    """Start a real writer appending a ~250 MB line to ``path`` and SIGKILL it once the line has
    started to land; returns how many bytes of it did (retries if the writer was too quick)."""
    for _ in range(3):
        before = path.stat().st_size
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "writing"
        deadline = time.time() + 120
        while path.stat().st_size <= before and writer.poll() is None and time.time() < deadline:
            time.sleep(0.001)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        if not path.read_bytes().endswith(b"\n"):
            return path.stat().st_size - before
        lines = path.read_text().splitlines()  # it finished first: take its line out and try again
        path.write_text("".join(line + "\n" for line in lines[:-1]))
    pytest.fail("the writer always finished its line before it could be killed")


def test_a_line_torn_by_a_killed_writer_is_set_aside_and_the_file_stays_readable(ray_cluster, tmp_path, capsys):
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    path = write_spec(tmp_path, "torn", classifiers=["softmax"])
    assert main(["grid", str(path), "--tracking-uri", uri, "--results", str(results)]) == 0
    torn = _kill_mid_line(results)
    assert torn > 0 and len(results.read_bytes().splitlines()) == 3  # trained, measured, the torn fragment
    grown = write_spec(tmp_path, "torn", classifiers=["softmax", "query"])
    assert main(["grid", str(grown), "--tracking-uri", uri, "--results", str(results)]) == 0
    assert "ended in a torn line" in capsys.readouterr().err
    assert (tmp_path / "results.jsonl.torn").stat().st_size == torn + 1  # nothing lost: the fragment and a newline
    assert [json.loads(line)["status"] for line in results.read_text().splitlines()] == ["FINISHED"] * 4
    assert main(["grid", str(grown), "--tracking-uri", uri, "--results", str(results)]) == 0  # nothing to run
    reference = _reference(tmp_path / "ref.yaml", {"classifier": "query"}, [["mIoU", ">=", 0], ["mIoU - softmax", ">=", -100]])
    assert main(["check", str(reference), "--results", str(results)]) == 0
    assert "2 of 2 expectations hold" in capsys.readouterr().out


def test_new_measure_settings_re_measure_finished_cells_from_their_weights_without_retraining(ray_cluster, tmp_path):
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    first = run_grid(load_grid(write_spec(tmp_path, "again", classifiers=["softmax", "protoseg"])), uri,
                     results_path=results)
    before = {r.data.tags["config_hash"]: r for r in children(uri, "again")[0]}
    measure = {"image_size": 32, "iters": 2, "warmup": 1, "batch_sizes": [1, 2]}
    spec = load_grid(write_spec(tmp_path, "again", classifiers=["softmax", "protoseg"], measure=measure))
    assert [config_hash(c) for c in expand(spec)] == first.ran_hashes  # measurement is not the cell's identity
    outcome = run_grid(spec, uri, results_path=results)
    assert outcome.ran == 0  # cells retrained: none
    assert_finished_once(uri, "again", expand(spec))  # results.jsonl: a newer line per cell, checked below
    after = {r.data.tags["config_hash"]: r for r in children(uri, "again")[0]}
    lines = read_results(results)
    for digest, run in after.items():
        assert run.info.run_id == before[digest].info.run_id  # the same run, updated
        assert run.data.metrics["latency/bs2/p50_ms"] > 0 and run.data.metrics["mIoU"] == before[digest].data.metrics["mIoU"]
        measured = json.loads(read_artifact(run.info.run_id, "measurement.json", uri))
        assert measured["settings"]["batch_sizes"] == [1, 2]
        assert yaml.safe_load(read_artifact(run.info.run_id, "config.yaml", uri))["measure"]["batch_sizes"] == [1, 2]
        assert not any(key.startswith("measure.") for key in run.data.params)  # params never go stale
        line = lines[digest]
        assert line.measurement["settings"]["batch_sizes"] == [1, 2] and "latency/bs2/p50_ms" in line.metrics
        assert line.metrics["train/seconds"] == before[digest].data.metrics["train/seconds"]
    assert run_grid(spec, uri, results_path=results).ran == 0
    assert len(results.read_text().splitlines()) == 6  # two trained, measured, measured again; nothing more


def _hash_before_issue_22(cfg) -> str:
    """``harness.config.config_hash`` as main computed it up to 9d92034 (measurement settings included)."""
    skipped = {"device", "output_dir", "tracking_uri", "experiment", "data.num_workers", "train.threads",
               "train.log_period", "train.checkpoint_period"}
    semantic = {k: v for k, v in flatten(to_dict(cfg)).items()
                if k not in skipped and not (k == "model.neck_kwargs" and v == {})}
    return hashlib.sha256(json.dumps(semantic, sort_keys=True).encode()).hexdigest()[:16]


def _as_main_wrote_it(uri: str, name: str, results, cells) -> dict[str, str]:
    """Rewrite a grid's store as main up to 9d92034 wrote it: each run's ``config_hash`` tag, its
    ``cell_result.json`` and its ``results.jsonl`` line carry that main's hash, no
    ``hash_version`` tag. Returns today's hash -> main's."""
    client, legacy = MlflowClient(uri), {config_hash(c): _hash_before_issue_22(c) for c in cells}
    for run in children(uri, name)[0]:
        old = legacy[run.data.tags["config_hash"]]
        result = json.loads(read_artifact(run.info.run_id, "cell_result.json", uri))
        result["config_hash"] = result["tags"]["config_hash"] = old
        client.log_text(run.info.run_id, json.dumps(result), "cell_result.json")
        client.set_tag(run.info.run_id, "config_hash", old)
        client.delete_tag(run.info.run_id, "hash_version")
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    for line in lines:
        line["config_hash"] = line["tags"]["config_hash"] = legacy.get(line["config_hash"], line["config_hash"])
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return legacy


def test_cells_logged_with_the_old_hash_are_recognised_after_the_upgrade(ray_cluster, tmp_path):
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    spec = load_grid(write_spec(tmp_path, "upgrade", classifiers=["softmax", "query"]))
    cells = expand(spec)
    run_grid(spec, uri, results_path=results)
    legacy = _as_main_wrote_it(uri, "upgrade", results, cells)
    assert all(old != new for new, old in legacy.items())
    assert run_grid(spec, uri, results_path=results).ran == 0  # no cell re-runs after the upgrade
    assert_finished_once(uri, "upgrade", cells)
    assert sorted(read_results(results)) == sorted(legacy)  # main's lines, read under today's hash
    for run in children(uri, "upgrade")[0]:
        assert run.data.tags["config_hash_v1"] == legacy[run.data.tags["config_hash"]]
    _as_main_wrote_it(uri, "upgrade", results, cells)
    results.unlink()  # lines rebuilt from the runs' cell_result.json, written with main's hash
    assert run_grid(spec, uri, results_path=results).ran == 0
    assert sorted(read_results(results)) == sorted(legacy)


def test_a_changed_setting_is_a_new_configuration_never_a_seed(ray_cluster, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for lr in (0.01, 0.02):
        spec = load_grid(write_spec(tmp_path, "lr", classifiers=["softmax", "query"], train={"iters": 20, "lr": lr}))
        run_grid(spec, uri, results_path=tmp_path / "results.jsonl")
    runs = {(r.data.tags["classifier"], r.data.params["train.lr"]): r.data.metrics["mIoU"] for r in children(uri, "lr")[0]}
    assert main(["report", "--experiment", "lr", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    rows = {r["configuration"]: r for r in csv.DictReader(open(tmp_path / "r" / "results.csv"))}
    assert sorted(rows) == ["query [train.lr=0.01]", "query [train.lr=0.02]", "softmax [train.lr=0.01]",
                            "softmax [train.lr=0.02]"]
    for lr in ("0.01", "0.02"):
        row = rows[f"query [train.lr={lr}]"]
        assert row["seeds"] == "1" and row["baseline"] == f"softmax [train.lr={lr}]"
        assert float(row["delta_vs_softmax"]) == pytest.approx(runs[("query", lr)] - runs[("softmax", lr)])
        assert float(row["delta_ci_low"]) <= float(row["delta_vs_softmax"]) <= float(row["delta_ci_high"])
    capsys.readouterr()
    reference = _reference(tmp_path / "ref.yaml", {"classifier": "softmax", "backbone": "test_convnext"},
                           [["mIoU", runs[("softmax", "0.02")], 1e-6]])
    assert main(["check", str(reference), "--experiment", "lr", "--tracking-uri", uri]) == 1
    out = capsys.readouterr().out
    assert "matches cells of 2 configurations (softmax [train.lr=0.01]@test_convnext/mlp" in out
    assert main(["check", str(reference), "--experiment", "lr", "--tracking-uri", uri, "--latest"]) == 0
    assert main(["report", "--experiment", "lr", "--tracking-uri", uri, "--out", str(tmp_path / "l"), "--latest"]) == 0
    latest = {r["configuration"] for r in csv.DictReader(open(tmp_path / "l" / "results.csv"))}
    assert latest == {"softmax [train.lr=0.02] (newest of 2)", "query [train.lr=0.02] (newest of 2)"}
