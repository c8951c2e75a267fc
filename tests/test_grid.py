"""Grids on a real Ray cluster (``ray_cluster`` in conftest) on loopback (logical GPUs) with a real MLflow SQLite store."""

import csv
import json
import re
from pathlib import Path

import pytest
from gridtools import TINY, assert_finished_once, children, write_spec
from mlflow.tracking import MlflowClient

from classifiers.protoseg import ProtoSegClassifier
from harness.cli import main
from harness.config import config_hash, flatten, to_dict
from harness.errors import InputError
from harness.grid import expand, load_grid, run_grid
from harness.grid.spec import start_order
from harness.results import CellResult


def test_spec_expands_with_overrides_in_order(tmp_path):
    path = write_spec(tmp_path, "expand", classifiers=["softmax", "protoseg"], seeds=[0, 1],
                 train={"iters": 20, "lr": 0.01}, backbone_overrides={"test_convnext": {"train": {"lr": 0.02}}},
                 classifier_overrides={"protoseg": {"model": {"classifier_kwargs": {"num_prototypes": 3}}}},
                 resources={"cpus": 2})
    cells = expand(load_grid(path))
    assert [(c.model.classifier, c.train.seed) for c in cells] == [
        ("softmax", 0), ("softmax", 1), ("protoseg", 0), ("protoseg", 1)]
    assert all(c.train.lr == 0.02 and c.train.threads == 2 and c.experiment == "expand" for c in cells)
    resolved = {"preset": "code", **ProtoSegClassifier.PRESETS["code"], "num_prototypes": 3}
    assert cells[2].model.classifier_kwargs == resolved and cells[0].model.classifier_kwargs == {}
    assert len({config_hash(c) for c in cells}) == 4
    assert [config_hash(c) for c in cells] == [config_hash(c) for c in expand(load_grid(path))]


def test_set_overrides_every_cell_last_and_names_a_bad_key(tmp_path, capsys):
    path = write_spec(tmp_path, "tweaked", classifiers=["softmax", "protoseg"], overrides=["data.batch_size=2"],
                      classifier_overrides={"protoseg": {"train": {"iters": 7, "lr": 0.5}}})
    cells = expand(load_grid(path, ["train.iters=4", "train.warmup_iters=1"]))
    assert [(c.train.iters, c.train.warmup_iters, c.data.batch_size) for c in cells] == [(4, 1, 2), (4, 1, 2)]
    assert cells[1].train.lr == 0.5  # what --set leaves alone stays the classifier's own
    assert config_hash(cells[0]) != config_hash(expand(load_grid(path))[0])
    with pytest.raises(InputError, match=r"tweaked.yaml: override 'train.nope=1'.*unknown key 'train.nope'"):
        load_grid(path, ["train.nope=1"])
    with pytest.raises(InputError, match="override 'model.backbone=resnet18': model.backbone is a grid axis"):
        load_grid(path, ["model.backbone=resnet18"])
    assert main(["grid", str(path), "--dry-run", "--set", "train.iters=3"]) == 0
    assert "iters=3" in capsys.readouterr().out
    # a warm-up the spec sets that outlasts the schedule: refused, naming the cell
    warm = write_spec(tmp_path, "warm", classifiers=["softmax"], backbone_overrides={"test_convnext": {"train": {
        "warmup_iters": 1500}}})
    with pytest.raises(InputError, match=r"cell softmax@test_convnext/mlp digits_sem_seg s0: train.warmup_iters=1500 "
                                         r"is longer than train.iters=20"):
        expand(load_grid(warm))
    assert [c.train.warmup_iters for c in expand(load_grid(warm, ["train.iters=4", "train.warmup_iters=0"]))] == [0]


def test_a_missing_weights_file_is_named_with_segheads_weights_before_any_cell_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEGHEADS_WEIGHTS", str(tmp_path / "weights"))
    path = write_spec(tmp_path, "unweighted", classifiers=["softmax"],
                      backbone_overrides={"test_convnext": {"model": {"backbone_kwargs": {"checkpoint": "weights:w.pth"}}}})
    assert main(["grid", str(path), "--dry-run"]) == 0
    assert "weights: weights:w.pth (not on this machine)" in capsys.readouterr().out
    message = (f"model.backbone_kwargs.checkpoint weights:w.pth: {tmp_path / 'weights' / 'w.pth'} not found "
               f"($SEGHEADS_WEIGHTS={tmp_path / 'weights'}); put the file there")
    with pytest.raises(InputError, match=re.escape(message)):
        run_grid(load_grid(path), f"sqlite:///{tmp_path / 'mlflow.db'}", results_path=tmp_path / "results.jsonl")
    assert not (tmp_path / "checkpoints").exists()  # no cell started
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.pth").write_bytes(b"")
    assert main(["grid", str(path), "--dry-run"]) == 0
    assert "weights: weights:w.pth\n" in capsys.readouterr().out


def test_the_dry_run_names_the_dataset_folders_this_machine_lacks(tmp_path, capsys):
    from harness.data import DatasetCatalog, MetadataCatalog, register_sem_seg

    names = {split: f"drydata_{split}" for split in ("train", "val")}
    for split, name in names.items():
        register_sem_seg(name, tmp_path / "images" / split, tmp_path / "labels" / split, ["a", "b"])
    try:
        path = write_spec(tmp_path, "drydata", classifiers=["softmax"], datasets=["drydata"])
        assert main(["grid", str(path), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert ("dataset drydata not on this machine ($DETECTRON2_DATASETS=" in out
                and f"drydata_train ({tmp_path / 'images' / 'train'} not found), drydata_val (" in out)
        for split in names:
            (tmp_path / "images" / split).mkdir(parents=True)
            (tmp_path / "labels" / split).mkdir(parents=True)
        assert main(["grid", str(path), "--dry-run"]) == 0
        assert "not on this machine" not in capsys.readouterr().out
    finally:
        for name in names.values():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_a_classifier_s_neck_wins_over_its_backbone_s_and_both_over_the_axis(tmp_path):
    path = write_spec(tmp_path, "necks", backbones=["test_convnext", "test_resnet"], classifiers=["softmax", "ece"],
                      backbone_overrides={"test_resnet": {"model": {"neck": "fpn"}}},
                      classifier_overrides={"ece": {"model": {"neck": "stages"}}})
    necks = {(c.model.classifier, c.model.backbone): c.model.neck for c in expand(load_grid(path))}
    assert necks == {("softmax", "test_convnext"): "mlp", ("softmax", "test_resnet"): "fpn",
                     ("ece", "test_convnext"): "stages", ("ece", "test_resnet"): "stages"}


def test_a_cell_is_hashed_and_logged_by_the_settings_its_preset_resolves_to(tmp_path):
    def protoseg_cell(**kwargs):
        path = write_spec(tmp_path, "presets", classifiers=["protoseg"],
                          classifier_overrides={"protoseg": {"model": {"classifier_kwargs": kwargs}}})
        (cell,) = expand(load_grid(path))
        return cell

    default, paper = protoseg_cell(), protoseg_cell(preset="paper")
    assert default.model.classifier_kwargs["tau"] == 1.0 and paper.model.classifier_kwargs["tau"] == 0.1
    assert config_hash(default) == config_hash(protoseg_cell(preset="code")) != config_hash(paper)
    assert config_hash(paper) == config_hash(protoseg_cell(preset="paper", tau=0.1))  # the same settings, spelled out
    assert config_hash(paper) != config_hash(protoseg_cell(preset="paper", tau=0.2))
    assert flatten(to_dict(paper))["model.classifier_kwargs.assignment"] == "argmax"  # what MLflow's params hold


@pytest.mark.parametrize("fields, message", [
    ({"classifiers": []}, "classifiers: empty axis"),
    ({"classifiers": ["softmax"], "trian": {}}, "unknown key 'trian'; allowed keys here: name, backbones"),
    ({"classifiers": ["softmax"], "train": {"lr": "fast"}}, "train.lr: expected float, got 'fast'"),
    ({"classifiers": ["softmax"], "classifier_overrides": {"ece": {}}}, "classifier_overrides: ece not on the grid's axis"),
    ({"classifiers": ["softmax"], "resources": {"gpus": "half"}}, "resources.gpus: expected float"),
])
def test_bad_specs_name_the_key(tmp_path, fields, message):
    with pytest.raises(InputError, match=message):
        expand(load_grid(write_spec(tmp_path, "bad", **fields)))


def test_dry_run_lists_cells_and_resources_and_rejects_unknown_names(tmp_path, capsys):
    path = write_spec(tmp_path, "dry", classifiers=["softmax", "ssa"], resources={"gpus": 0.5, "measure_gpus": 1})
    assert main(["grid", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("2 cells; per cell 1 worker(s) x 1 CPU, 0.5 GPU (training), 1 CPU, 1 GPU (measurement, holding its "
            "whole node)") in out
    assert "softmax@test_convnext/mlp digits_sem_seg s0" in out and "ssa@test_convnext/mlp" in out
    # GPU-hours at the stated throughput, and the cells a results.jsonl already has FINISHED
    cells = expand(load_grid(path))
    (softmax_flops,) = [flops for cfg, flops in start_order(cells)[0] if cfg.model.classifier == "softmax"]
    results = tmp_path / "results.jsonl"
    results.write_text(CellResult("FINISHED", to_dict(cells[0]), config_hash(cells[0]), {}).to_json(indent=None) + "\n")
    assert main(["grid", str(path), "--dry-run", "--gpu-tflops", "20", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "GPU-hours at 20 TFLOP/s sustained per GPU (an assumption; --gpu-tflops sets it)" in out
    (line,) = [line for line in out.splitlines() if "softmax@test_convnext" in line]
    assert line.endswith(f"~{softmax_flops / 20e12 / 3600:.3g} GPU-h  FINISHED")
    assert "1 of 2 cells already FINISHED" in out
    assert main(["grid", str(write_spec(tmp_path, "dry2", classifiers=["softmaxx"])), "--dry-run"]) == 2
    assert "unknown classifier 'softmaxx'" in capsys.readouterr().err
    uneven = write_spec(tmp_path, "dry3", classifiers=["softmax"], resources={"workers": 3})  # batch 4 over 3
    assert main(["grid", str(uneven), "--dry-run"]) == 2
    assert ("cell softmax@test_convnext/mlp digits_sem_seg s0: data.batch_size=4 is the global batch; it must split "
            "evenly over 3 worker(s) x train.accumulate=1") in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_cells_start_costliest_first_and_in_the_spec_s_order_when_a_cost_cannot_be_estimated(tmp_path, capsys):
    path = write_spec(tmp_path, "order", classifiers=["softmax", "ssa", "ece", "query"])
    ordered, unordered = start_order(expand(load_grid(path)))
    assert unordered is None
    assert [cfg.model.classifier for cfg, _ in ordered] == ["ece", "ssa", "softmax", "query"]  # a tie keeps its order
    costs = [flops for _, flops in ordered]
    assert costs[0] > costs[1] > costs[2] == costs[3]
    assert main(["grid", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cells in the order they start: costliest first by estimated training FLOPs" in out
    assert out.index("ece@") < out.index("ssa@") < out.index("softmax@") < out.index("query@")
    assert f"train~{costs[0] / 1e9:.3g} GFLOP" in out
    # a model that cannot be built for the estimate: the spec's order, and why; the grid still runs
    broken = write_spec(tmp_path, "broken", classifiers=["softmax", "ssa"],
                        backbone_overrides={"test_convnext": {"model": {"backbone_kwargs": {"no_such_option": 1}}}})
    cells = expand(load_grid(broken))
    ordered, unordered = start_order(cells)
    assert [cfg for cfg, _ in ordered] == cells and all(flops is None for _, flops in ordered)
    assert unordered.startswith("no training cost estimate for softmax@test_convnext/mlp digits_sem_seg s0: TypeError")
    assert "no_such_option" in unordered


def test_half_gpu_cells_pack_two_per_gpu_and_a_failing_cell_does_not_stop_the_grid(ray_cluster, tmp_path,
                                                                                    monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_spec(tmp_path, "pack", classifiers=["softmax", "query", "protoseg", "ssa"],
                 train={"iters": 150}, resources={"cpus": 1, "gpus": 0.5},  # long enough to overlap
                 classifier_overrides={"protoseg": {"train": {"lr": 1.0e+30}}})
    elsewhere = tmp_path / "elsewhere"  # the grid is started from a folder of its own
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    outcome = run_grid(load_grid(path), uri, results_path=tmp_path / "results.jsonl")
    assert list(elsewhere.iterdir()) == []  # weights and artifacts beside mlflow.db, nothing where it started
    assert len(list((tmp_path / "mlartifacts" / "pack").glob("*/artifacts/weights.pt"))) == 3
    by_classifier = {r.tags["classifier"]: r for r in outcome.results}
    failed = by_classifier.pop("protoseg")
    assert failed.status == "FAILED" and "non-finite loss at iteration" in failed.error
    assert failed.failed_at_iteration >= 1 and "NonFiniteLossError" in failed.traceback
    assert all(r.status == "FINISHED" and "latency/bs1/p50_ms" in r.metrics for r in by_classifier.values())
    placements = [r.environment["ray"] for r in outcome.results]
    assert {tuple(p["gpu_ids"]) for p in placements} == {("0",)}  # every cell on the one GPU
    events = sorted([(p["started"], 1) for p in placements] + [(p["ended"], -1) for p in placements])
    running = [sum(step for _, step in events[: i + 1]) for i in range(len(events))]
    assert max(running) == 2  # two 0.5-GPU cells at once, never more
    first = sorted(outcome.results, key=lambda r: r.environment["ray"]["started"])[:2]
    assert sorted(r.tags["classifier"] for r in first) == ["protoseg", "ssa"]  # the costliest two, not the spec's first
    timed = {c: r.measurement["node"] for c, r in by_classifier.items()}
    busy = [(p["node_id"], p["started"], p["ended"], ("train", r.tags["classifier"]))
            for r, p in zip(outcome.results, placements)]
    busy += [(m["node_id"], m["started"], m["ended"], ("measure", c)) for c, m in timed.items()]
    for classifier, m in timed.items():  # each measurement held the whole node and nothing else ran there meanwhile
        assert m["exclusive"] and m["reserved"] == {"CPU": 2.0, "GPU": 1.0}
        overlapping = [what for node, start, end, what in busy
                       if node == m["node_id"] and what != ("measure", classifier) and start < m["ended"] and m["started"] < end]
        assert overlapping == []
    runs, _ = children(uri, "pack")
    statuses = sorted((r.data.tags["classifier"], r.info.status) for r in runs)
    assert statuses == [("protoseg", "FAILED"), ("query", "FINISHED"), ("softmax", "FINISHED"), ("ssa", "FINISHED")]
    assert "non-finite loss" in next(r for r in runs if r.info.status == "FAILED").data.tags["error"]
    lines = [CellResult.from_json(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    # a line when each cell trained (or failed), a second when a trained cell was measured
    assert sorted((r.status, r.measurement is not None) for r in lines) == [
        ("FAILED", False)] + [("FINISHED", False)] * 3 + [("FINISHED", True)] * 3


def test_rerun_skips_finished_cells_and_adds_new_ones(ray_cluster, tmp_path):
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    first = load_grid(write_spec(tmp_path, "grow", classifiers=["softmax"]))
    assert run_grid(first, uri, results_path=results).ran == 1
    grown = load_grid(write_spec(tmp_path, "grow", classifiers=["softmax", "query"]))
    outcome = run_grid(grown, uri, results_path=results)
    assert outcome.ran == 1 and [r.status for r in outcome.results] == ["FINISHED", "FINISHED"]
    assert_finished_once(uri, "grow", expand(grown), results)
    assert len(results.read_text().splitlines()) == 4  # each cell trained, then measured
    assert run_grid(grown, uri, results_path=results).ran == 0
    assert len(results.read_text().splitlines()) == 4
    # the report of this real grid: one row per cell, the delta over softmax, plots
    assert main(["report", "--parent", outcome.parent_run_id, "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    rows = {r["classifier"]: r for r in csv.DictReader(open(tmp_path / "r" / "results.csv"))}
    miou = {r.tags["classifier"]: r.metrics["mIoU"] for r in outcome.results}
    assert sorted(rows) == ["query", "softmax"]
    assert float(rows["query"]["delta_vs_softmax"]) == pytest.approx(miou["query"] - miou["softmax"])
    assert rows["query"]["delta_ci_low"] != "" and (tmp_path / "r" / "miou_vs_latency.png").stat().st_size > 2000


def test_a_finished_cell_keeps_its_weights_and_predict_and_measure_use_them(ray_cluster, tmp_path, capsys):
    import numpy as np
    import torch
    from PIL import Image

    from harness.data import DatasetCatalog, SemSegMapper
    from harness.evaluation import class_colors, colorize, predict_labels
    from harness.tracking import load_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_grid(write_spec(tmp_path, "kept", classifiers=["protoseg"]))
    outcome = run_grid(spec, uri, results_path=tmp_path / "results.jsonl")
    [run], _ = children(uri, "kept")
    folder = tmp_path / "artifacts"
    state = torch.load(MlflowClient(uri).download_artifacts(run.info.run_id, "weights.pt", str(folder)), weights_only=True)
    assert "classifier.prototypes" in state  # non-learnable state is kept too
    cfg, model = load_run(run.info.run_id, uri)
    assert cfg == expand(spec)[0] and torch.equal(model.classifier.prototypes, state["classifier.prototypes"])

    out = tmp_path / "predicted"
    assert main(["predict", "--run", run.info.run_id, "--dataset", "digits_sem_seg", "--limit", "3", "--out", str(out),
                 "--tracking-uri", uri]) == 0
    records = DatasetCatalog.get("digits_sem_seg_val")[:3]
    colors = class_colors(11)
    for record in records:
        image = SemSegMapper(11, 255)(record)["image"]
        written = np.asarray(Image.open(out / f"{Path(record['file_name']).stem}.png"))
        assert np.array_equal(written, colorize(predict_labels(model, image, cfg.eval), colors))
    assert (out / "legend.png").exists()
    assert main(["predict", "--run", run.info.run_id, "--images", str(tmp_path / "nothing"), "--out", str(out),
                 "--tracking-uri", uri]) == 2
    assert "--images" in capsys.readouterr().err

    assert main(["measure", "--run", run.info.run_id, "--tracking-uri", uri, "--json", str(tmp_path / "m.json")]) == 0
    alone = json.loads((tmp_path / "m.json").read_text())
    logged = outcome.results[0].metrics
    assert alone["metrics"]["params/total"] == logged["params/total"]
    assert alone["metrics"]["gflops/total"] == pytest.approx(logged["gflops/total"])
    assert alone["measurement"]["settings"] == outcome.results[0].measurement["settings"]


def test_a_head_grid_on_a_logged_trunk_trains_heads_only_on_shared_features(ray_cluster, tmp_path, capsys):
    import torch

    from harness.tracking import load_run

    uri, fixed = f"sqlite:///{tmp_path / 'mlflow.db'}", {"scale_range": [1, 1], "hflip_prob": 0, "color_jitter": 0}
    base = run_grid(load_grid(write_spec(tmp_path, "base", classifiers=["softmax"])), uri,
                    results_path=tmp_path / "base" / "results.jsonl")
    [base_run], _ = children(uri, "base")
    spec_path = write_spec(tmp_path, "heads", classifiers=["softmax", "protoseg"],
                           trunk={"run": "base/softmax@test_convnext-s0"},
                           data={**TINY["data"], **fixed})
    assert main(["grid", str(spec_path), "--dry-run", "--tracking-uri", uri]) == 0
    listed = capsys.readouterr().out
    outcome = run_grid(load_grid(spec_path), uri, results_path=tmp_path / "heads" / "results.jsonl")
    assert [r.status for r in outcome.results] == ["FINISHED", "FINISHED"]
    digest = outcome.results[0].tags["trunk"]
    assert {r.tags["trunk"] for r in outcome.results} == {digest} and digest in listed
    assert (tmp_path / "heads" / "checkpoints" / "trunks" / f"{digest}.pt").is_file()
    assert len(list((tmp_path / "heads" / "checkpoints" / "trunk-features").glob("*.pt"))) == 1
    trunk = torch.load(MlflowClient(uri).download_artifacts(base_run.info.run_id, "weights.pt", str(tmp_path / "w")),
                       weights_only=True)
    for run in children(uri, "heads")[0]:
        assert run.data.params["engine.trunk_features"] == "cached"
        _, model = load_run(run.info.run_id, uri)
        assert all(torch.equal(v, trunk[k]) for k, v in model.state_dict().items()
                   if k.startswith(("backbone.", "neck.")))
    assert base.results[0].metrics["mIoU"] != outcome.results[0].metrics["mIoU"]  # the head was trained anew
    assert run_grid(load_grid(spec_path), uri, results_path=tmp_path / "heads" / "results.jsonl").ran == 0  # the pinned digest is the cells' identity
    assert main(["report", "--experiment", "heads", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    report = (tmp_path / "r" / "report.md").read_text()
    assert f"Trunk {digest} (frozen): protoseg@test_convnext, softmax@test_convnext" in report
    assert "top_prototype_share" in report and (tmp_path / "r" / "diagnostics_prototype_usage.png").is_file()
