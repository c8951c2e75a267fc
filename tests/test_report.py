"""``segheads report`` from real cells logged to a real MLflow store."""

import csv
import statistics

import pytest

from harness.cli import main
from harness.report import _pareto

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("source", ["experiment", "parent"])
def test_report_tables_deltas_and_plots(logged_cells, tmp_path, source, capsys):
    _, _, uri, results, parent = logged_cells
    chosen = ["--experiment", "checked"] if source == "experiment" else ["--parent", parent]
    out = tmp_path / "report"
    assert main(["report", *chosen, "--tracking-uri", uri, "--out", str(out)]) == 0
    rows = {r["classifier"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert sorted(rows) == ["query", "softmax"]  # one row per backbone x classifier
    softmax = [r["metrics"]["mIoU"] for r in results[:2]]
    assert float(rows["softmax"]["mIoU"]) == pytest.approx(statistics.fmean(softmax))
    assert float(rows["softmax"]["mIoU_std"]) == pytest.approx(statistics.stdev(softmax))
    assert rows["softmax"]["seeds"] == "2" and rows["softmax"]["delta_vs_softmax"] == ""
    expected_delta = results[2]["metrics"]["mIoU"] - statistics.fmean(softmax)
    assert float(rows["query"]["delta_vs_softmax"]) == pytest.approx(expected_delta)
    assert float(rows["query"]["latency_p50_ms"]) == pytest.approx(results[2]["metrics"]["latency/bs1/p50_ms"])
    for name in ("miou_vs_latency.png", "miou_vs_gflops.png", "head_params.png", "per_class_iou.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 2000
    page = (out / "report.html").read_text()
    assert page.count("<tr>") == 1 + 2 and page.count("data:image/png;base64,") == 4
    markdown = (out / "report.md").read_text()
    assert f"{expected_delta:+.2f}" in markdown and " ± " in markdown


def test_pareto_front_keeps_only_unbeaten_points():
    points = [(10, 50), (20, 60), (15, 40), (30, 55), (5, 30)]
    assert _pareto(points) == [(5, 30), (10, 50), (20, 60)]


def test_report_of_an_unknown_experiment_exits_2(logged_cells, tmp_path, capsys):
    _, _, uri, _, _ = logged_cells
    assert main(["report", "--experiment", "nope", "--tracking-uri", uri, "--out", str(tmp_path)]) == 2
    assert "--experiment 'nope': no such experiment" in capsys.readouterr().err
