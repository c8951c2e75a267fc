"""Cells on several Ray Train workers (gloo, CPU): the same training as one worker that
accumulates, a lost worker restarted from the latest checkpoint, a killed grid driver resumed."""

import functools
import os
import signal
import sys
import threading
import time

import ray
import torch
from gridtools import children, processes_titled, tiny_cell, write_spec

from harness import engine
from harness.config import RunConfig, apply_overrides, config_hash
from harness.engine import LocalContext, WorkerContext, seed_everything, train_cell
from harness.engine.launch import launch
from harness.grid import load_grid, run_grid
from harness.modeling import build_segmentor, resolve_classifier

_HEADS = ["softmax", "protoseg", "ssa", "ece"]
_CELL = tiny_cell() + ["data.batch_size=4", "train.threads=1", "train.optimizer=sgd", "train.lr=0.01",
                      "train.warmup_iters=2"]
_CPU = torch.device("cpu")

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers run this file's functions


class _Named(WorkerContext):
    """A worker's context whose checkpoints carry a prefix: several cells in one Ray Train run."""

    def __init__(self, inner: WorkerContext, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix
        self.rank, self.world_size, self.device = inner.rank, inner.world_size, inner.device

    def wrap(self, model):
        return self.inner.wrap(model)

    def report(self, metrics, folder=None, name=None):
        self.inner.report(metrics, folder, f"{self.prefix}_{name}" if name else None)


def _every_head(out_dir, cfg, context):
    for head in _HEADS:
        _, model = train_cell(apply_overrides(cfg, [f"model.classifier={head}"]), _Named(context, head))
        if context.rank == 0:
            torch.save(model.state_dict(), out_dir / f"{head}.pt")


def _learned(state: dict) -> dict:
    """Parameters (and ProtoSeg's prototypes), not BatchNorm statistics: each worker's BN
    normalises its own micro-batch in both layouts, but keeps its own running statistics."""
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_two_workers_train_as_one_worker_accumulating_two_micro_batches(ray_cluster, tmp_path):
    cfg = apply_overrides(RunConfig(), _CELL + ["train.iters=5", "train.log_period=5"])
    launch(functools.partial(_every_head, tmp_path), cfg, workers=2, storage=tmp_path / "storage", retries=0)
    for head in _HEADS:
        single = apply_overrides(cfg, [f"model.classifier={head}", "train.accumulate=2"])
        _, model = train_cell(single, LocalContext(_CPU))
        data_parallel = torch.load(tmp_path / f"{head}.pt", weights_only=True)
        for name, value in _learned(model.state_dict()).items():
            torch.testing.assert_close(data_parallel[name], value, rtol=0, atol=1e-5, msg=f"{head}: {name}")
        if head == "protoseg":
            assert not torch.equal(model.classifier.prototypes, _initial_prototypes(single))


def _initial_prototypes(cfg):
    seed_everything(cfg.train.seed)
    return build_segmentor(resolve_classifier(cfg), 11, 255).classifier.prototypes


def test_a_worker_killed_after_a_checkpoint_restarts_there_and_ends_with_the_uninterrupted_weights(ray_cluster,
                                                                                                  tmp_path):
    """``segheads run --workers 2`` (``engine.run``): a worker SIGKILLed after Ray Train registered
    the cell's first checkpoint is restarted from it, and the cell ends with the parameters of
    an uninterrupted run (here one worker accumulating the two micro-batches)."""
    cfg = resolve_classifier(apply_overrides(RunConfig(), _CELL + [
        "model.classifier=protoseg", "train.iters=40", "train.log_period=10", "train.checkpoint_period=10"]))
    storage, box = tmp_path / "storage", {}
    registered = storage / config_hash(cfg) / "checkpoint_manager_snapshot.json"  # Ray Train's own record
    cell = threading.Thread(target=lambda: box.update(out=engine.run(cfg, engine.CellResources(workers=2), storage)))
    cell.start()
    deadline, killed = time.time() + 180, None
    while time.time() < deadline and killed is None:
        workers = processes_titled("ray::RayTrainWorker")
        if registered.is_file() and "checkpoint_000000" in registered.read_text() and workers:
            killed = workers[-1]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    cell.join(timeout=600)
    assert killed is not None
    result, restarted = box["out"].result, box["out"].model()
    assert result.environment["engine"]["resumed_at"] in (10, 20, 30)
    _, uninterrupted = train_cell(apply_overrides(cfg, ["train.accumulate=2"]), LocalContext(_CPU))
    for name, value in _learned(uninterrupted.state_dict()).items():
        torch.testing.assert_close(restarted.state_dict()[name], value, rtol=0, atol=1e-5, msg=name)


def test_a_grid_of_two_worker_cells_records_each_run_and_a_non_finite_loss_once(ray_cluster, tmp_path):
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    spec = load_grid(write_spec(tmp_path, "parallel", classifiers=["softmax", "query"], resources={"workers": 2},
                                train={"iters": 20, "checkpoint_period": 10},
                                classifier_overrides={"query": {"train": {"lr": 1.0e+30}}}))  # inf/NaN loss
    outcome = run_grid(spec, uri, results_path=results)
    by = {r.tags["classifier"]: r for r in outcome.results}
    finished, failed = by["softmax"], by["query"]
    assert finished.status == "FINISHED" and "latency/bs1/p50_ms" in finished.metrics
    assert finished.environment["engine"] == {"workers": 2, "accumulate": 1, "micro_batch": 2, "precision": "fp32",
                                                 "sync_bn": False, "resumed_at": 0}
    run = tmp_path / "checkpoints" / finished.config_hash  # Ray Train's run, named by the cell
    assert sorted(p.name for p in run.glob("checkpoint_0*")) == ["checkpoint_00000010", "checkpoint_00000020"]
    assert sorted(p.name for p in (run / "checkpoint_00000010").iterdir()) == ["rng-rank0.pt", "rng-rank1.pt",
                                                                               "state.pt"]
    assert failed.status == "FAILED" and failed.error.startswith("NonFiniteLossError: non-finite loss at iteration")
    assert failed.failed_at_iteration is not None and "harness/engine/hooks.py" in failed.traceback
    # its run ends in a failed_<iteration> checkpoint, which makes a later launch of the cell start over
    (failed_folder,) = (tmp_path / "checkpoints" / failed.config_hash).glob("failed_*")
    assert failed_folder.name == f"failed_{failed.failed_at_iteration:08d}"
    runs, parents = children(uri, "parallel")
    assert sorted((r.data.tags["classifier"], r.info.status) for r in runs) == [("query", "FAILED"),
                                                                                ("softmax", "FINISHED")]
    assert len(parents) == 1 and len(results.read_text().splitlines()) == 3  # FAILED; FINISHED, then measured
    said = next(r for r in runs if r.info.status == "FINISHED").data.params  # how it trained, as params
    assert (said["engine.workers"], said["engine.micro_batch"], said["engine.sync_bn"]) == ("2", "2", "False")
