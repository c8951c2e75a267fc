"""``segheads report`` from real cells logged to a real MLflow store."""

import contextlib
import csv
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness.cli import main
from harness.report import bootstrap_delta
from harness.report.figures import _pareto

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("source", ["experiment", "parent"])
def test_report_tables_deltas_and_plots(logged_cells, tmp_path, source, capsys):
    _, _, uri, results, parent = logged_cells
    chosen = ["--experiment", "checked"] if source == "experiment" else ["--parent", parent]
    out = tmp_path / "report"
    assert main(["report", *chosen, "--tracking-uri", uri, "--out", str(out)]) == 0
    rows = {r["classifier"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert sorted(rows) == ["query", "softmax"]  # one row per backbone x classifier
    softmax = [r.metrics["mIoU"] for r in results[:2]]
    assert float(rows["softmax"]["mIoU"]) == pytest.approx(statistics.fmean(softmax))
    assert float(rows["softmax"]["mIoU_std"]) == pytest.approx(statistics.stdev(softmax))
    assert rows["softmax"]["seeds"] == "2" and rows["softmax"]["delta_vs_softmax"] == ""
    # query ran seed 0 only: compared with softmax's seed 0, not with the mean of softmax's two seeds
    expected_delta = results[2].metrics["mIoU"] - results[0].metrics["mIoU"]
    assert float(rows["query"]["delta_vs_softmax"]) == pytest.approx(expected_delta)
    assert rows["query"]["baseline"] == "softmax" and rows["query"]["paired_seeds"] == "1"
    assert rows["softmax"]["configuration"] == "softmax" and rows["softmax"]["baseline"] == ""
    assert float(rows["query"]["latency_p50_ms"]) == pytest.approx(results[2].metrics["latency/bs1/p50_ms"])
    for name in ("miou_vs_latency.png", "miou_vs_gflops.png", "head_params.png", "per_class_iou.png", "reliability.png",
                 "predictions.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 2000
    page = (out / "report.html").read_text()
    assert page.count("<tr>") == 1 + 2 and page.count("data:image/png;base64,") == 6
    markdown = (out / "report.md").read_text()
    assert "![predictions.png](predictions.png)" in markdown
    assert f"{expected_delta:+.2f}" in markdown and " ± " in markdown
    low, high = float(rows["query"]["delta_ci_low"]), float(rows["query"]["delta_ci_high"])
    assert low <= high and rows["query"]["significant"] == str(low > 0 or high < 0)


def test_pareto_front_keeps_only_unbeaten_points():
    points = [(10, 50), (20, 60), (15, 40), (30, 55), (5, 30)]
    assert _pareto(points) == [(5, 30), (10, 50), (20, 60)]


def test_report_of_an_unknown_experiment_exits_2(logged_cells, tmp_path, capsys):
    _, _, uri, _, _ = logged_cells
    assert main(["report", "--experiment", "nope", "--tracking-uri", uri, "--out", str(tmp_path)]) == 2
    assert "--experiment 'nope': no such experiment" in capsys.readouterr().err


def _descendants(pid: int) -> set[int]:
    """Every living process below ``pid``, from /proc's parent links."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()
            and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}


def test_ui_serves_the_store_on_loopback_only_and_stops_its_server_on_sigterm(logged_cells, tmp_path):
    _, _, uri, _, _ = logged_cells
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "harness", "ui", "--tracking-uri", uri, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, status = time.time() + 90, None
        while time.time() < deadline and status != 200:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status
            except OSError:
                time.sleep(0.5)
        assert status == 200
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert listening and all("127.0.0.1:" in line for line in listening.splitlines())
        started = _descendants(server.pid)
        assert started  # the MLflow server (and its web server) segheads started
        server.send_signal(signal.SIGTERM)  # segheads alone, as a service manager or `kill PID` would
        assert server.wait(timeout=30) == 0
        deadline = time.time() + 15
        while time.time() < deadline and _alive(started):
            time.sleep(0.2)
        assert _alive(started) == set()
        assert subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout == ""
    finally:
        for pid in [server.pid, *_alive(_descendants(server.pid))]:  # the MLflow server has a group of its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.wait(timeout=30)


def _per_image(rng, images, classes, correct_rate):
    """Synthetic per-image counts: each image has 3 classes of 100 pixels, of which a fraction is right."""
    out = []
    for _ in range(images):
        rows = []
        for c in rng.choice(classes, 3, replace=False):
            right = int(rng.binomial(100, correct_rate))
            rows.append([int(c), right, 100 + (100 - right), 100])  # wrong pixels go to another class
        out.append(sorted(rows))
    return out


def test_bootstrap_interval_of_identical_predictions_is_exactly_zero():
    import numpy as np

    counts = _per_image(np.random.default_rng(0), 50, 6, 0.6)
    assert bootstrap_delta([counts], [counts]) == (0.0, 0.0)
    assert bootstrap_delta([counts, counts], [counts, counts]) == (0.0, 0.0)


def test_bootstrap_interval_of_a_clearly_better_head_excludes_zero():
    import numpy as np

    rng = np.random.default_rng(1)
    images = [sorted({int(c) for c in rng.choice(6, 3, replace=False)}) for _ in range(60)]
    better = [[[c, 90, 110, 100] for c in cls] for cls in images]
    worse = [[[c, 60, 140, 100] for c in cls] for cls in images]
    low, high = bootstrap_delta([better], [worse])
    assert 0 < low <= high
    mixed_low, mixed_high = bootstrap_delta([_per_image(rng, 60, 6, 0.6)], [_per_image(rng, 60, 6, 0.6)])
    assert mixed_low < 0 < mixed_high  # two heads of the same quality: the interval straddles zero


def test_vocabulary_scaling_costs_grow_with_classes_and_protoseg_has_no_class_weights(tmp_path, capsys):
    out = tmp_path / "scaling"
    assert main(["report", "--scaling", "--backbone", "test_convnext", "--classes", "10,40", "--image-size", "32",
                 "--out", str(out), "--set", "model.embed_dim=16", "train.threads=1"]) == 0
    rows = list(csv.DictReader(open(out / "scaling.csv")))
    by = {(r["classifier"], int(r["classes"])): r for r in rows}
    assert {c for c, _ in by} >= {"softmax", "query", "protoseg", "ece", "ssa"}  # every registered head
    assert int(by["softmax", 40]["head_params"]) - int(by["softmax", 10]["head_params"]) == 30 * (16 + 1)  # D*C + C
    # protoseg (preset code): projection 2 x (D^2 + D), LayerNorm(D), LayerNorm(C); no D x C class weights
    assert int(by["protoseg", 40]["head_params"]) == 2 * (16 * 16 + 16) + 2 * 16 + 2 * 40
    assert int(by["protoseg", 40]["head_nonlearnable"]) == 40 * 10 * 16  # C x K x D prototypes
    for classifier in ("softmax", "protoseg", "ece"):
        assert float(by[classifier, 40]["head_gflops"]) > float(by[classifier, 10]["head_gflops"])
    assert (out / "scaling.png").read_bytes().startswith(PNG_SIGNATURE)


def test_per_image_iou_counts_the_classes_in_truth_or_prediction_and_skips_ignored_pixels():
    import numpy as np

    from harness.evaluation import image_iou

    truth = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    prediction = np.array([[0, 1, 1, 1], [2, 3, 0, 3]])
    # class 0: 1/2, class 1: 2/3, class 2: 1/2, class 3: 0/1 (the ignored pixels count for nothing)
    assert image_iou(prediction, truth, 4, 255) == pytest.approx(100 * (1 / 2 + 2 / 3 + 1 / 2 + 0) / 4)


def test_predictions_panel_shows_each_cells_kept_predictions_which_equal_its_weights(logged_cells, caplog):
    import io
    import logging

    from PIL import Image

    from harness.data import DatasetCatalog, dataset_splits
    from harness.evaluation import SAMPLE_IMAGES, sample_indices
    from harness.report import configurations, prediction_panels, read_cells

    _, jsonl, uri, results, _ = logged_cells
    picks = sample_indices(len(DatasetCatalog.get(dataset_splits("digits_sem_seg")["val"])))
    assert len(picks) == SAMPLE_IMAGES and all(sorted(r.predictions) == sorted(map(str, picks)) for r in results)
    _, cells = read_cells(experiment="checked", tracking_uri=uri)
    with caplog.at_level(logging.INFO, logger="segheads"):
        kept, notes = prediction_panels(configurations(cells), uri)
    assert list(kept) == ["predictions.png"] and notes == []
    assert caplog.text.count("kept by its evaluation") == 2 and "from its logged weights" not in caplog.text
    assert Image.open(io.BytesIO(kept["predictions.png"])).size[1] > 200
    _, from_file = read_cells(jsonl)  # a results.jsonl holds them too
    assert prediction_panels(configurations(from_file), None) == (kept, [])

    for cell in cells:  # kept none (logged before cells kept them): predicted from the logged weights, the same picture
        cell.predictions = {}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="segheads"):
        assert prediction_panels(configurations(cells), uri) == (kept, [])
    assert caplog.text.count("predicted from its logged weights") == 2
    for cell in cells:  # and runs that hold no weights either: named, not drawn
        cell.run_id = "0" * 32
    panels, notes = prediction_panels(configurations(cells), uri)
    assert panels == {} and any("no predictions" in n and "softmax" in n for n in notes)


def test_heat_maps_at_150_classes_show_the_named_classes_that_stand_out():
    import io

    import numpy as np
    from PIL import Image

    from harness.report import Cell, Configuration, diagnostic_figures
    from harness.report.diagnostics import HEATMAP_ROWS, top_rows

    rng = np.random.default_rng(0)
    usage = rng.dirichlet(np.ones(10), size=150)
    usage[[7, 42]] = np.eye(10)[0] * 0.9 + 0.01  # the two classes closest to collapse
    usage[3] = np.nan  # a class without pixels
    order = top_rows(usage)
    assert len(order) == HEATMAP_ROWS and set(order[:2]) == {7, 42} and 3 not in order
    cosine = rng.uniform(-0.2, 0.2, (150, 150))
    cosine = (cosine + cosine.T) / 2
    np.fill_diagonal(cosine, 1.0)  # the diagonal never counts
    cosine[5, 99] = cosine[99, 5] = 0.95
    assert set(top_rows(cosine)[:2]) == {5, 99}

    cell = Cell({"classifier": "protoseg", "seed": "0"}, {}, {}, diagnostics={
        "prototype_usage": usage.tolist(), "class_embedding_cosine": cosine.tolist()})
    config = Configuration("ade20k_sem_seg", "r101", "fcn", "protoseg", {}, {0: cell}, "protoseg")
    images, _ = diagnostic_figures([config])
    for name in ("diagnostics_prototype_usage.png", "diagnostics_class_embedding_cosine.png"):
        width, height = Image.open(io.BytesIO(images[name])).size
        assert height < 900 and width < 1200  # 30 named rows, not 150 unreadable ones


@pytest.mark.parametrize("num_classes", [11, 150])
def test_the_predictions_legend_sits_below_every_panel_and_its_caption(num_classes):
    import numpy as np
    import torch

    from harness.evaluation import class_colors
    from harness.figures import pyplot
    from harness.report.predictions import prediction_figure

    rng = np.random.default_rng(0)
    samples = [{"image": torch.rand(3, 48, 64), "sem_seg": torch.from_numpy(rng.integers(0, num_classes, (48, 64)))}
               for _ in range(6)]
    columns = [(head, [rng.integers(0, num_classes, (48, 64)) for _ in samples]) for head in ("softmax", "protoseg")]
    classes = [f"class {c}, a synonym" for c in range(num_classes)]
    figure = prediction_figure(samples, columns, class_colors(num_classes), classes, 255, "a title")
    renderer = figure.canvas.get_renderer()
    legend = next(ax.get_legend() for ax in figure.axes if ax.get_legend() is not None)
    top = legend.get_window_extent(renderer).y1
    panels = [ax for ax in figure.axes if ax.get_legend() is None and ax.axison]
    assert len(panels) == 6 * 4 and len(legend.get_texts()) == num_classes
    lowest = min(ax.get_tightbbox(renderer).y0 for ax in panels)  # the axes with their captions (IoU labels)
    assert top < lowest
    pyplot().close(figure)
