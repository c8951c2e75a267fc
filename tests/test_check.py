"""``segheads check`` on real cells: trained, written to results.jsonl and logged to MLflow."""

import statistics
from pathlib import Path

import yaml

from harness.check import load_reference
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


def test_check_compares_only_cells_that_ran_the_reference_s_recipe(logged_cells, capsys, tmp_path):
    folder, jsonl, _, results, _ = logged_cells
    expect = [["mIoU", ">=", 0]]
    ran = _reference(folder, expect)
    ran.write_text(yaml.safe_dump({**yaml.safe_load(ran.read_text()), "recipe": {"train.iters": 10}}))
    assert main(["check", str(ran), "--results", str(jsonl)]) == 0
    assert "1 of 1 expectations hold" in capsys.readouterr().out
    other = _reference(folder, expect)
    other.write_text(yaml.safe_dump({**yaml.safe_load(other.read_text()), "recipe": {"train.iters": 160000}}))
    assert main(["check", str(other), "--results", str(jsonl)]) == 1
    out = capsys.readouterr().out
    assert "0 of 1 expectations hold, 1 MISSING" in out and out.splitlines()[1].split()[0] == "MISSING"
    assert ("no cell ran this recipe (train.iters=160000); 2 cell(s) match the select, the newest with "
            "train.iters=10 (recipe 160000)") in out
    assert main(["check", str(other), "--results", str(jsonl), "--allow-missing"]) == 0
    # a spec as the recipe: exactly the cells it expands to
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({"name": "checked", "backbones": ["test_convnext"], "classifiers": ["softmax", "query"],
                                    "seeds": [0, 1], "model": {"embed_dim": 16}, "data": {"image_size": 32},
                                    "train": {"iters": 10}}))
    pinned = _reference(folder, expect)
    pinned.write_text(yaml.safe_dump({**yaml.safe_load(pinned.read_text()), "recipe": {"spec": str(spec)}}))
    assert main(["check", str(pinned), "--results", str(jsonl)]) == 0
    spec.write_text(spec.read_text().replace("iters: 10", "iters: 4"))  # the shrunken grid a reference is not about
    assert main(["check", str(pinned), "--results", str(jsonl)]) == 1
    assert "train.iters=10 (recipe 4)" in capsys.readouterr().out


def test_every_shipped_reference_of_trained_cells_pins_its_recipe():
    """A reference whose cases select trained cells (by dataset) names the spec its numbers hold for,
    and that spec's cells answer every case."""
    root = Path(__file__).resolve().parents[1]
    checked = 0
    for path in sorted((root / "jobs" / "reference").rglob("*.yaml")):
        reference = load_reference(path)
        if not all("dataset" in case.select for case in reference.cases):
            continue  # a model's numbers (parameters, FLOPs), checked by the tests that build it
        checked += 1
        for case in reference.cases:
            assert case.recipe.spec and case.recipe.spec_cells, (path.name, case.select)
            assert any(all(tags.get(k) == str(v) for k, v in case.select.items())
                       for tags, _ in case.recipe.spec_cells.values()), (path.name, case.select)
    assert checked == 5  # the quickstart and the four paper tables
