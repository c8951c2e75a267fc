"""One definition of a configuration and of its baseline, shared by the report, check and the
grid's table, on real trained cells (``logged_cells``) placed as ECENet's Table 1 places them:
ece on the backbone's stages, softmax on DeepLabV3+."""

import copy

import pytest
import yaml

from harness.check import check, load_reference
from harness.grid import comparison_table
from harness.report import Cell, baseline, configurations, summarise


def _placed(result: dict, classifier: str, neck: str) -> dict:
    """``result`` as if its cell had run ``classifier`` on ``neck`` (tags and config agree)."""
    moved = copy.deepcopy(result)
    moved.tags.update(classifier=classifier, neck=neck)
    moved.config["model"].update(classifier=classifier, neck=neck)
    return moved


@pytest.fixture
def table1(logged_cells):
    """softmax on deeplabv3plus (seeds 0 and 1) and ece on stages (seed 0), as CellResults."""
    results = logged_cells[3]
    return [_placed(results[0], "softmax", "deeplabv3plus"), _placed(results[1], "softmax", "deeplabv3plus"),
            _placed(results[2], "ece", "stages")]


def test_ece_on_stages_is_compared_with_softmax_on_the_neck_the_grid_has(table1, tmp_path):
    cells = [Cell.from_result(r, order) for order, r in enumerate(table1)]
    configs = configurations(cells)
    ece = next(c for c in configs if c.classifier == "ece")
    assert baseline(ece, configs).neck == "deeplabv3plus"
    gap = table1[2].metrics["mIoU"] - table1[0].metrics["mIoU"]  # seed 0 against seed 0

    rows = {r["classifier"]: r for r in summarise(cells)}
    assert rows["ece"]["baseline"] == "softmax on deeplabv3plus" and rows["ece"]["paired_seeds"] == 1
    assert rows["ece"]["delta_vs_softmax"] == pytest.approx(gap)
    assert rows["ece"]["delta_ci_low"] <= gap <= rows["ece"]["delta_ci_high"]

    table = comparison_table(table1).splitlines()
    (ece_line,) = [line for line in table if " ece " in line]
    assert f"{gap:+.2f}" in ece_line and ece_line.endswith("softmax on deeplabv3plus")

    reference = tmp_path / "ref.yaml"
    reference.write_text(yaml.safe_dump({"name": "t", "source": "test", "cases": [
        {"select": {"classifier": "ece"}, "expect": [["mIoU - softmax", gap, 1e-9]]}]}))
    (row,) = check(load_reference(reference), cells)
    assert row.failure is None and row.measured == pytest.approx(gap)


def test_a_same_neck_softmax_wins_and_otherwise_the_closest_configuration(table1):
    same_neck = _placed(table1[0], "softmax", "stages")
    same_neck.config["train"]["lr"] = 0.5  # one setting apart from ece's cell, on ece's neck
    other = copy.deepcopy(table1[1])
    other.config["train"]["iters"] = 7  # another softmax configuration on deeplabv3plus, further off
    cells = [Cell.from_result(r, order) for order, r in enumerate([*table1, same_neck, other])]
    configs = configurations(cells)
    ece = next(c for c in configs if c.classifier == "ece")
    assert baseline(ece, configs).neck == "stages"
    without = [c for c in configs if c.neck != "stages" or c.classifier == "ece"]
    chosen = baseline(ece, without)
    assert chosen.neck == "deeplabv3plus" and chosen.settings["train.iters"] != "7"
    labels = sorted(c.label for c in configs if c.neck == "deeplabv3plus")
    assert labels == ["softmax [train.iters=10]", "softmax [train.iters=7]"]
