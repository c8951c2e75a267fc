"""``segheads check`` on real cells: trained, written to results.jsonl and logged to MLflow."""

import statistics

import yaml

from harness.cli import main


def _reference(folder, expect, select=None):
    path = folder / "ref.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "source": "test", "cases": [
        {"select": select or {"classifier": "softmax", "backbone": "test_convnext"}, "expect": expect}]}))
    return path


def test_check_passes_within_tolerance_and_averages_seeds(logged_cells, capsys):
    folder, jsonl, uri, results, _ = logged_cells
    mean = statistics.fmean(r.metrics["mIoU"] for r in results[:2])
    # the partner of {query, seed 0} is {softmax, seed 0}: the same select, classifier replaced
    ratio = results[2].metrics["latency/bs1/p50_ms"] / results[0].metrics["latency/bs1/p50_ms"]
    ref = _reference(folder, [["mIoU", mean, 0.001], ["params/head", results[0].metrics["params/head"], 0]])
    assert main(["check", str(ref), "--results", str(jsonl)]) == 0
    assert main(["check", str(ref), "--experiment", "checked", "--tracking-uri", uri]) == 0
    assert "2 of 2 expectations hold" in capsys.readouterr().out
    ratio_ref = _reference(folder, [["latency/bs1/p50_ms / softmax", ratio, "0.1%"]],
                           {"classifier": "query", "seed": 0})
    assert main(["check", str(ratio_ref), "--results", str(jsonl)]) == 0
    gap = results[2].metrics["mIoU"] - results[0].metrics["mIoU"]
    for bound, code in ((gap - 0.01, 0), (gap + 0.01, 1)):
        gap_ref = _reference(folder, [["mIoU - softmax", ">=", bound]], {"classifier": "query", "seed": 0})
        assert main(["check", str(gap_ref), "--results", str(jsonl)]) == code


def test_check_fails_with_exit_1_when_a_reference_is_tightened_past_the_measured_value(logged_cells, capsys):
    folder, jsonl, uri, results, _ = logged_cells
    mean = statistics.fmean(r.metrics["mIoU"] for r in results[:2])
    ref = _reference(folder, [["mIoU", ">=", mean + 0.01], ["params/head", 1, 0]])
    assert main(["check", str(ref), "--experiment", "checked", "--tracking-uri", uri]) == 1
    out = capsys.readouterr().out
    assert "0 of 2 expectations hold, 2 FAIL" in out
    assert any(line.split()[0] == "FAIL" and "classifier=softmax" in line and " mIoU " in line for line in out.splitlines())
    assert f"expected >= {mean + 0.01:g}" in out


def test_check_reports_cells_that_are_missing(logged_cells, capsys):
    folder, jsonl, _, _, _ = logged_cells
    ref = _reference(folder, [["mIoU", ">=", 0]], {"classifier": "ece"})
    assert main(["check", str(ref), "--results", str(jsonl)]) == 1
    assert "no FINISHED cell matches {'classifier': 'ece'}" in capsys.readouterr().out
    assert main(["check", str(ref), "--experiment", "nope"]) == 2
    assert main(["check", str(ref), "--results", str(folder / "missing.jsonl")]) == 2
