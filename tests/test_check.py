"""``segheads check`` on real cells: trained, written to results.jsonl and logged to MLflow."""

import statistics

import pytest
import yaml

from harness.cli import main
from harness.config import RunConfig, apply_overrides
from harness.results import to_json
from harness.run import run_cell
from harness.tracking import log_cell

_TINY = ["model.backbone=test_convnext", "model.embed_dim=16", "data.num_workers=0", "data.image_size=32",
         "train.iters=10", "measure.image_size=32", "measure.iters=2", "measure.warmup=1"]


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """softmax (seeds 0 and 1) and query (seed 0): a results.jsonl and an MLflow experiment."""
    folder = tmp_path_factory.mktemp("check")
    results = []
    for classifier, seed in (("softmax", 0), ("softmax", 1), ("query", 0)):
        cfg = apply_overrides(RunConfig(), _TINY + [f"model.classifier={classifier}", f"train.seed={seed}",
                                                    f"output_dir={folder / 'outputs'}"])
        results.append(run_cell(cfg, log=lambda msg: None))
    jsonl = folder / "results.jsonl"
    jsonl.write_text("".join(to_json(r, indent=None) + "\n" for r in results))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    for result in results:
        log_cell(result, uri, "checked")
    return folder, jsonl, uri, results


def _reference(folder, expect, select=None):
    path = folder / "ref.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "source": "test", "cases": [
        {"select": select or {"classifier": "softmax", "backbone": "test_convnext"}, "expect": expect}]}))
    return path


def test_check_passes_within_tolerance_and_averages_seeds(cells, capsys):
    folder, jsonl, uri, results = cells
    mean = statistics.fmean(r["metrics"]["mIoU"] for r in results[:2])
    # the partner of {query, seed 0} is {softmax, seed 0}: the same select, classifier replaced
    ratio = results[2]["metrics"]["latency/bs1/p50_ms"] / results[0]["metrics"]["latency/bs1/p50_ms"]
    ref = _reference(folder, [["mIoU", mean, 0.001], ["params/head", results[0]["metrics"]["params/head"], 0]])
    assert main(["check", str(ref), "--results", str(jsonl)]) == 0
    assert main(["check", str(ref), "--experiment", "checked", "--tracking-uri", uri]) == 0
    assert "2 of 2 expectations hold" in capsys.readouterr().out
    ratio_ref = _reference(folder, [["latency/bs1/p50_ms / softmax", ratio, "0.1%"]],
                           {"classifier": "query", "seed": 0})
    assert main(["check", str(ratio_ref), "--results", str(jsonl)]) == 0


def test_check_fails_with_exit_1_when_a_reference_is_tightened_past_the_measured_value(cells, capsys):
    folder, jsonl, uri, results = cells
    mean = statistics.fmean(r["metrics"]["mIoU"] for r in results[:2])
    ref = _reference(folder, [["mIoU", ">=", mean + 0.01], ["params/head", 1, 0]])
    assert main(["check", str(ref), "--experiment", "checked", "--tracking-uri", uri]) == 1
    out = capsys.readouterr().out
    assert "0 of 2 expectations hold, 2 FAIL" in out
    assert any(line.split()[0] == "FAIL" and "classifier=softmax" in line and " mIoU " in line for line in out.splitlines())
    assert f"expected >= {mean + 0.01:g}" in out


def test_check_reports_cells_that_are_missing(cells, capsys):
    folder, jsonl, _, _ = cells
    ref = _reference(folder, [["mIoU", ">=", 0]], {"classifier": "ece"})
    assert main(["check", str(ref), "--results", str(jsonl)]) == 1
    assert "no FINISHED cell matches {'classifier': 'ece'}" in capsys.readouterr().out
    assert main(["check", str(ref), "--experiment", "nope"]) == 2
    assert main(["check", str(ref), "--results", str(folder / "missing.jsonl")]) == 2
