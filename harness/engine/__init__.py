"""The training engine: one trainer with hooks, the same in one process and in each Ray Train worker.

- ``run.py``: ``run`` (the one way to run a cell: in this process or as a Ray Train run, what a
  failure means, starting over; ``segheads run`` and a grid's trial call it) with
  ``CellResources``, ``Reporter`` and its ``TrainedCell``; ``trained_cell`` (a cell's final
  checkpoint under a storage), ``measure_cell``, ``failed_result``.
- ``cell.py``: ``train_cell`` (one cell on one worker: build, resume, train, evaluate on rank 0,
  assemble the ``CellResult``, final checkpoint with it), ``cell_tags``, ``resolve_device``.
- ``Trainer`` (``trainer.py``): the loop (forward, backward, optimiser step over ``train.accumulate``
  micro-batches under ``Precision``, ``harness.solver``'s optimiser and schedule) and ``HookBase``.
- ``hooks.py``: ``MetricsHook`` (every ``train.log_period``), ``CheckpointHook``
  (``train.checkpoint_period``), ``EvalHook`` (``train.eval_period``).
- ``checkpoint.py``: checkpoint folders (state, every worker's RNG states; the sampler position
  is the iteration), in Ray Train's layout.
- ``trunk.py``: a frozen (or fine-tuned) trunk from trained weights (``read_trunk``, ``attach_trunk``);
  ``features.py``: its features computed once per training image, cached for every head on it
  (``trunk_features``, ``feature_batches``).
- ``context.py``: ``WorkerContext`` (rank, device, DDP, report, resume) and ``LocalContext``.
- ``launch.py``: ``launch`` (a cell as a Ray Train ``TorchTrainer`` run), ``RayTrainContext``,
  ``init_ray``, ``ray_session``, ``resolve_storage``, ``needs_ray_train``; the one module
  of the engine that imports Ray, when called.
- ``memory.py``: ``memory_cap``, a cap on a process's resident memory (``ResidentMemoryExceeded``).
"""

from harness.engine.cell import (
    cell_tags,
    default_storage,
    resolve_device,
    resolve_sync_bn,
    seed_everything,
    train_cell,
)
from harness.engine.context import LocalContext, WorkerContext
from harness.engine.features import TrunkFeatures, feature_batches, trunk_features
from harness.engine.hooks import CheckpointHook, EvalHook, MetricsHook
from harness.engine.launch import CellFailed, init_ray, launch, needs_ray_train, resolve_storage
from harness.engine.memory import ResidentMemoryExceeded, memory_cap
from harness.engine.precision import Precision
from harness.engine.run import (
    CellResources,
    Reporter,
    TrainedCell,
    failed_result,
    measure_cell,
    run,
    trained_cell,
)
from harness.engine.trainer import (
    HookBase,
    NonFiniteLossError,
    Trainer,
    TrainingOutOfMemoryError,
    TrainResult,
)
from harness.engine.trunk import attach_trunk, read_trunk, trunk_digest, trunk_file, trunk_state

__all__ = [
    "CellFailed",
    "CellResources",
    "CheckpointHook",
    "EvalHook",
    "HookBase",
    "LocalContext",
    "MetricsHook",
    "NonFiniteLossError",
    "Precision",
    "Reporter",
    "ResidentMemoryExceeded",
    "TrainResult",
    "TrainedCell",
    "Trainer",
    "TrainingOutOfMemoryError",
    "TrunkFeatures",
    "WorkerContext",
    "attach_trunk",
    "cell_tags",
    "default_storage",
    "failed_result",
    "feature_batches",
    "init_ray",
    "launch",
    "measure_cell",
    "memory_cap",
    "needs_ray_train",
    "read_trunk",
    "resolve_device",
    "resolve_storage",
    "resolve_sync_bn",
    "run",
    "seed_everything",
    "train_cell",
    "trained_cell",
    "trunk_digest",
    "trunk_features",
    "trunk_file",
    "trunk_state",
]
