"""Faults inside cells, injected into one real grid (Ray on loopback, MLflow SQLite): an
exception, a non-finite loss, running out of memory in training and in the latency sweep.
Each faulty cell ends FAILED with a message that says what and where; the grid goes on;
every cell has exactly one run, and one line (a trained cell a second when measured)."""


from gridtools import children, write_spec

from harness.cli import main
from harness.results import CellResult


def test_each_cell_fault_is_recorded_and_the_grid_goes_on(ray_cluster, tmp_path, capsys):
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    path = write_spec(
        tmp_path, "faults", backbones=["resnet10t"], classifiers=["softmax", "query", "protoseg", "ssa"],
        resources={"cpus": 1, "memory_gb": 3},  # a cap per task: an oversized cell fails alone, cleanly
        classifier_overrides={
            # latency sweep at a batch that cannot fit in 3 GB (its logits alone are 2.9 GB; batch 64 was
            # too close to the cap to fail every time): measured at a smaller batch instead
            "softmax": {"measure": {"image_size": 512, "batch_sizes": [256, 1], "iters": 2, "warmup": 1}},
            "query": {"train": {"lr": 1.0e+30}},  # the loss becomes inf/NaN
            "protoseg": {"model": {"backbone_kwargs": {"checkpoint": str(tmp_path / "missing.pt")}}},  # raises
            "ssa": {"data": {"batch_size": 256, "image_size": 256}},  # a training step past the cap
        })
    assert main(["grid", str(path), "--tracking-uri", uri, "--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert "3 of 4 cells FAILED" in err
    by = {r.tags["classifier"]: r for r in map(CellResult.from_json, results.read_text().splitlines())}
    assert len(by) == 4 and len(results.read_text().splitlines()) == 5  # softmax: trained, then measured

    softmax = by["softmax"]
    assert softmax.status == "FINISHED"
    measured = softmax.metrics["oom/bs256/measured_batch"]
    assert 1 <= measured < 256 and f"latency/bs{int(measured)}/p50_ms" in softmax.metrics
    assert "latency/bs1/p50_ms" in softmax.metrics and "latency/bs256/p50_ms" not in softmax.metrics
    assert softmax.measurement["measured_batch_sizes"] == [int(measured), 1]

    nan = by["query"]
    assert nan.status == "FAILED" and nan.error.startswith("NonFiniteLossError: non-finite loss at iteration")
    assert nan.failed_at_iteration is not None and f"iteration {nan.failed_at_iteration}" in nan.error
    assert not (tmp_path / "checkpoints" / nan.config_hash).exists()  # run again, it starts over
    assert (tmp_path / "checkpoints" / by["softmax"].config_hash / "checkpoint_00000020" / "result.json").is_file()

    raised = by["protoseg"]
    assert raised.status == "FAILED" and f"backbone checkpoint {tmp_path / 'missing.pt'} not found" in raised.error

    oom = by["ssa"]
    assert oom.status == "FAILED" and "out of memory at iteration 0 (batch [256, 3, 256, 256]" in oom.error
    assert "lower data.batch_size" in oom.error and oom.failed_at_iteration == 0
    assert ": out of memory: training (pid " in oom.error and " GB of 3 GB resident" in oom.error  # the watchdog's

    runs, parents = children(uri, "faults")
    assert sorted((r.data.tags["classifier"], r.info.status) for r in runs) == [
        ("protoseg", "FAILED"), ("query", "FAILED"), ("softmax", "FINISHED"), ("ssa", "FAILED")]
    assert len(parents) == 1 and parents[0].data.metrics["cells_failed"] == 3
    assert {r.data.tags["classifier"]: r.data.tags.get("error") for r in runs}["ssa"] == oom.error
