"""Run a cell's engine on Ray Train workers (detectron2's ``launch``: the same function, in
each worker, through ``TorchTrainer``; one process calls it directly instead).

``launch(fn, cfg, ...)`` fits a ``TorchTrainer`` named by the cell's ``config_hash`` under
``storage``: Ray Train starts the workers (``ScalingConfig``, gloo on CPU, nccl on CUDA), its
``FailureConfig(max_failures=retries)`` restarts them from the latest reported checkpoint after a
lost worker, and a later launch of the same cell under the same storage resumes the run there.
``fn(cfg, context)`` is the worker function (``harness.engine.cell.train_cell``); rank 0's CellResult
travels in the run's final checkpoint with the trained weights (``read_cell``). ``harness.engine.run``
decides when a cell is a Ray Train run.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import traceback
from pathlib import Path

import torch
from torch import nn

from harness.config import RunConfig, config_hash, from_dict, to_dict
from harness.engine import checkpoint
from harness.engine.context import TRUNK_FEATURES, WorkerContext, staging_folder
from harness.engine.memory import memory_cap
from harness.engine.trainer import NonFiniteLossError
from harness.errors import InputError, one_line
from harness.results import CellResult

RESULT_FILE = "result.json"
ERROR_FILE = "error.json"  # in a cell's last checkpoint folder, ``failed_<iteration>``, when it failed
_FAILED_PREFIX = "failed_"
# Errors every worker raises at the same point (a bad setting, a non-finite loss, which the
# metrics hook checks over all workers): the cell fails without the retries a lost worker gets.
CELL_ERRORS = (InputError, NonFiniteLossError)


class CellFailed(RuntimeError):
    """A cell's worker function raised one of ``CELL_ERRORS``: ``error`` is its one line,
    ``remote_traceback`` its traceback, ``iteration`` where it happened (if known)."""

    def __init__(self, error: str, remote_traceback: str, iteration: int | None) -> None:
        super().__init__(error)
        self.error, self.remote_traceback, self.iteration = error, remote_traceback, iteration


def resolve_storage(storage: str | Path) -> str:
    """``storage`` as every worker sees it: a URI as given, a path made absolute."""
    storage = str(storage)
    return storage if "://" in storage else str(Path(storage).resolve())


def needs_ray_train(workers: int, storage: str | Path | None) -> bool:
    """Whether a cell trains as a Ray Train run: with several workers, or when its checkpoints go
    to a URI (Ray Train persists to any storage it accepts); one worker on a path trains in the
    calling process (a Ray Train run costs ~15-20 s more to start, docs/architecture.md)."""
    return workers > 1 or "://" in str(storage)


def init_ray(address: str | None) -> bool:
    """Connect to ``address`` or start Ray locally on loopback; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:  # a user's dataset registrations reach the cluster's workers (local workers inherit them)
        datasets = os.environ.get("SEGHEADS_DATASETS")
        ray.init(address=address, log_to_driver=False,
                 runtime_env={"env_vars": {"SEGHEADS_DATASETS": datasets}} if datasets else None)
    else:  # loopback: harness/__init__.py set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray was imported
        # Ray turns token authentication on for a cluster it starts and warns that it did, on every run.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    return True


@contextlib.contextmanager
def ray_session(address: str | None):
    """Ray connected (``init_ray``) while inside, and shut down after when this call started it."""
    started = init_ray(address)
    try:
        yield started
    finally:
        if started:
            import ray

            ray.shutdown()


class RayTrainContext(WorkerContext):
    """A Ray Train worker: rank and device from Ray Train, DDP through ``prepare_model``
    (``broadcast_buffers=False``, as detectron2's ``create_ddp_model``; ``find_unused_parameters``,
    since a head may leave part of its neck unused, e.g. ECENet reads the mlp neck's pyramid,
    not its fused map), checkpoints and metrics through ``ray.train.report``, resumption from
    ``ray.train.get_checkpoint``."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self._resumed: str | None = None

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=False,
                                             parallel_strategy_kwargs={"broadcast_buffers": False,
                                                                       "find_unused_parameters": True})

    def resume_folder(self) -> Path | None:
        import ray.train

        found = ray.train.get_checkpoint()
        if found is None:
            return None
        self._resumed = found.to_directory()
        return Path(self._resumed)

    def report(self, metrics: dict, folder: Path | None = None, name: str | None = None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)) if folder else None,
                         checkpoint_dir_name=name if folder else None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        if self._resumed:
            shutil.rmtree(self._resumed, ignore_errors=True)


def _worker(config: dict) -> None:
    """Ray Train's per-worker function: ``config["fn"]`` on this worker's context, under the cell's
    memory cap. A ``CELL_ERRORS`` error (every worker reaches it at the same point) is reported
    as the run's last checkpoint, ``failed_<iteration>`` holding ``error.json``, instead of being
    raised, so that Ray Train does not retry it (a run's result carries its last checkpoint's
    metrics only); anything else is a worker failure Ray Train retries."""
    cfg = from_dict(RunConfig, config["cell"])
    context = RayTrainContext()
    context.cache_folder = Path(config["cache_folder"]) if config["cache_folder"] else None
    try:
        with memory_cap(config["memory_gb"], f"training worker {context.rank}"):
            config["fn"](cfg, context)
    except CELL_ERRORS as exc:
        iteration = getattr(exc, "iteration", None)
        folder = staging_folder()
        if context.rank == 0:
            (folder / ERROR_FILE).write_text(json.dumps({
                "error": one_line(exc),
                "traceback": "".join(traceback.format_exception(exc)), "iteration": iteration}))
        context.report({"failed": True}, folder, f"{_FAILED_PREFIX}{iteration or 0:08d}")
    finally:
        context.close()


def _forget_failed_run(storage: str, name: str) -> None:
    """Delete run ``name`` under ``storage`` if its last checkpoint says it failed: a failed
    cell run again starts over (its error would come back from the same checkpoint)."""
    import pyarrow.fs

    if "://" in storage:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(storage)
    else:
        filesystem, root = pyarrow.fs.LocalFileSystem(), storage
    run = f"{root.rstrip('/')}/{name}"
    entries = filesystem.get_file_info(pyarrow.fs.FileSelector(run, allow_not_found=True))
    if any(entry.base_name.startswith(_FAILED_PREFIX) for entry in entries):
        filesystem.delete_dir(run)


def launch(fn, cfg: RunConfig, workers: int, storage: str | Path, cpus: float = 1, gpus: float = 0,
           memory_gb: float = 0, retries: int = 3, callbacks: tuple = ()):
    """Fit cell ``cfg`` as a Ray Train run of ``workers`` workers (each ``cpus`` CPUs, ``gpus`` GPUs,
    ``memory_gb`` reserved and capped) named ``config_hash(cfg)`` under ``storage`` (a path or
    any URI Ray Train accepts), with Ray Train ``callbacks`` (e.g. Tune's ``TuneReportCallback``):
    its final ``ray.train.Checkpoint``, ``checkpoint_<iters>`` (``read_cell`` reads it). Raises
    ``CellFailed`` for a ``CELL_ERRORS`` error (and deletes that run before a later launch of the
    cell, which starts over) and Ray Train's ``TrainingFailedError`` once ``retries`` restarts are spent."""
    import ray.train
    from ray.train.torch import TorchTrainer

    storage = resolve_storage(storage)
    _forget_failed_run(storage, config_hash(cfg))
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {}),
                 **({"memory": int(memory_gb * 2**30)} if memory_gb else {})}
    trainer = TorchTrainer(
        _worker, train_loop_config={"fn": fn, "cell": to_dict(cfg), "memory_gb": memory_gb,
                                    "cache_folder": None if "://" in storage else str(Path(storage) / TRUNK_FEATURES)},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=config_hash(cfg), storage_path=storage, callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=retries),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=checkpoint.KEEP)))
    final = trainer.fit().checkpoint
    if Path(final.path).name.startswith(_FAILED_PREFIX):
        with final.as_directory() as folder:
            error = json.loads((Path(folder) / ERROR_FILE).read_text())
        raise CellFailed(error["error"], error["traceback"], error["iteration"])
    return final


def final_checkpoint(storage: str | Path, cfg: RunConfig):
    """The ``ray.train.Checkpoint`` a cell's run ends with, ``<storage>/<config_hash>/checkpoint_<iters>``
    (one process and Ray Train write the same layout), on a path or a URI."""
    import ray.train

    return ray.train.Checkpoint(f"{resolve_storage(storage).rstrip('/')}/{config_hash(cfg)}/"
                                f"{checkpoint.folder_name(cfg.train.iters)}")


def read_cell(final) -> tuple[CellResult, bytes]:
    """(rank 0's CellResult, the trained weights as ``torch.save`` bytes) from a cell's final
    ``ray.train.Checkpoint``; ``InputError`` naming it when it holds no result."""
    with final.as_directory() as folder:
        folder = Path(folder)
        if not (folder / RESULT_FILE).is_file():
            raise InputError(f"{final.path}: no {RESULT_FILE}; expected a cell's final checkpoint")
        cell = CellResult.from_json((folder / RESULT_FILE).read_text(), str(folder / RESULT_FILE))
        state = torch.load(folder / checkpoint.STATE_FILE, map_location="cpu", weights_only=True)
    weights = io.BytesIO()
    torch.save(state["model"], weights)
    return cell, weights.getvalue()
