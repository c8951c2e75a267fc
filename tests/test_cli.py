import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from harness.cli import main
from harness.data import register_sem_seg

_FAST = ["--backbone", "test_convnext", "--image-size", "48", "--set", "model.embed_dim=32", "data.num_workers=0",
         "measure.image_size=64", "measure.batch_sizes=[1,2]", "measure.iters=3", "measure.warmup=1"]


def test_run_end_to_end_writes_the_mlflow_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--iters", "30", "--batch-size", "8", "--tracking-uri", uri,
         "--json", str(tmp_path / "cell.json"), "--experiment", "e2e", *_FAST],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "mIoU" in proc.stdout
    result = json.loads((tmp_path / "cell.json").read_text())
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    for key in ("mIoU", "fwIoU", "mACC", "pACC", "params/total", "params/head", "train/seconds", "gflops/head",
                "gmacs/total", "latency/bs1/p50_ms", "latency/bs2/p99_ms", "throughput/bs2/images_per_s",
                "memory/bs1/peak_mb", "efficiency/bs1/fraction_of_matmul"):
        assert key in metrics
    assert metrics["mIoU"] == pytest.approx(result["metrics"]["mIoU"])
    assert any(key.startswith("IoU-") for key in metrics)
    assert metrics["params/total"] == metrics["params/backbone"] + metrics["params/neck"] + metrics["params/head"]
    curve = client.get_metric_history(run.info.run_id, "curve/loss/total")
    assert [m.step for m in curve] == [20, 30]
    tags = run.data.tags
    assert (tags["backbone"], tags["classifier"], tags["dataset"], tags["seed"], tags["neck"]) == (
        "test_convnext", "softmax", "digits_sem_seg", "0", "mlp")
    assert tags["config_hash"] == result["config_hash"] and "git_commit" in tags
    assert run.data.params["model.embed_dim"] == "32" and run.data.params["train.iters"] == "30"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"per_class.csv", "config.yaml", "training_curve.json", "cell_result.json", "measurement.json"} <= artifacts
    assert result["measurement"]["settings"]["image_size"] == 64 and result["measurement"]["machine"]["threads"] >= 1
    # measurement settings live with the measurement (a re-measurement changes them; params cannot change)
    assert "measure.batch_sizes" not in run.data.params and tags["hash_version"] == "2"
    measured = json.loads(Path(client.download_artifacts(run.info.run_id, "measurement.json", str(tmp_path))).read_text())
    assert measured["settings"]["batch_sizes"] == [1, 2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backbone", "resnet181"], "unknown backbone 'resnet181'"),
        (["--classifier", "linear"], "unknown classifier 'linear'; known classifiers: "),
        (["--dataset", "ade"], "unknown dataset 'ade'.*known datasets: ade20k_sem_seg, cityscapes_fine_sem_seg, coco_stuff_10k_sem_seg, coco_stuff_164k_sem_seg, digits_sem_seg, pascal_context_59_sem_seg"),
        (["--set", "train.iters=abc"], "train.iters: expected int, got 'abc'"),
        (["--set", "measure.dtype=fp8"], "measure.dtype='fp8'; expected one of: float32, bfloat16, float16"),
    ],
)
def test_bad_names_and_settings_exit_2_with_one_line(args, message, capsys):
    assert main(["run", "--no-tracking", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("segheads: error: ")
    import re

    assert re.search(message, err)


def test_missing_dataset_folder_names_path_and_layout(tmp_path, capsys):
    for split in ("train", "val"):
        register_sem_seg(f"cli_missing_{split}", tmp_path / "img", tmp_path / "gt", ["a", "b"])
    assert main(["run", "--no-tracking", "--dataset", "cli_missing", *_FAST]) == 2
    err = capsys.readouterr().err
    assert f"image folder {tmp_path / 'img'} does not exist; expected layout" in err


def test_unreadable_image_exits_2_naming_the_file(folder_dataset, capsys):
    image_root, gt_root = folder_dataset
    (image_root / "img2.jpg").write_bytes(b"\x00" * 10)
    for split in ("train", "val"):
        register_sem_seg(f"cli_corrupt_{split}", image_root, gt_root, ["a", "b", "c"])
    assert main(["run", "--no-tracking", "--dataset", "cli_corrupt", *_FAST]) == 2
    assert f"cannot read image {image_root / 'img2.jpg'}" in capsys.readouterr().err


def test_bad_label_found_in_a_loader_worker_exits_2_with_one_line(folder_dataset, capsys):
    image_root, gt_root = folder_dataset
    label = np.zeros((40, 48), np.uint8)
    label[0, 0] = 17
    Image.fromarray(label).save(gt_root / "img1.png")
    for split in ("train", "val"):
        register_sem_seg(f"cli_badlabel_{split}", image_root, gt_root, ["a", "b", "c"])
    args = ["run", "--no-tracking", "--dataset", "cli_badlabel", *_FAST, "data.num_workers=1", "data.batch_size=4"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"segheads: error: label map {gt_root / 'img1.png'} has value 17; "
                   "expected class ids in [0, 3) or the ignore label 255")


def test_console_script_lists_and_rejects(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "segheads")
    listed = subprocess.run([script, "list", "classifiers"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and {"query", "softmax"} <= set(listed.stdout.split())
    bad = subprocess.run([script, "run", "--classifier", "nope"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and "unknown classifier 'nope'" in bad.stderr


def test_messages_go_through_the_segheads_logger_and_quiet_keeps_warnings_only(folder_dataset, capsys, caplog):
    image_root, gt_root = folder_dataset
    for split in ("train", "val"):
        register_sem_seg(f"cli_logged_{split}", image_root, gt_root, ["a", "b", "c"])
    assert main(["validate-data", "cli_logged"]) == 0
    captured = capsys.readouterr()
    said = f"{image_root} + {gt_root}: 4 pairs, 0 problem(s)"
    assert f"[segheads] {said}" in captured.err.splitlines() and captured.out == ""
    assert ("segheads", logging.INFO, said) in caplog.record_tuples
    assert main(["validate-data", "cli_logged", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    Image.fromarray(np.full((40, 48), 17, np.uint8)).save(gt_root / "img1.png")
    assert main(["validate-data", "cli_logged", "-q"]) == 2  # bad files: bad input
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"[segheads] warning: label map {gt_root / 'img1.png'} has value 17; expected class ids in [0, 3) or the ignore label 255"
