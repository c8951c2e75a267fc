"""The training engine: one trainer with hooks, the same in one process and in each Ray Train worker.

- ``cell.py``: ``train_cell`` (one cell on one worker: build, resume, train, evaluate on rank 0, final
  checkpoint with the ``CellResult``), ``run_cell`` (one process, or a Ray Train run for several
  workers), ``add_measurement``, ``cell_tags``, ``resolve_device``.
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
  ``init_ray``, ``ray_session``, ``memory_cap``; the one module of the engine that imports Ray, when called.
"""

from harness.engine.cell import (
    add_measurement,
    cell_tags,
    default_storage,
    resolve_device,
    resolve_sync_bn,
    run_cell,
    seed_everything,
    train_cell,
)
from harness.engine.context import LocalContext, WorkerContext
from harness.engine.features import TrunkFeatures, feature_batches, trunk_features
from harness.engine.hooks import CheckpointHook, EvalHook, MetricsHook
from harness.engine.precision import Precision
from harness.engine.trainer import (
    HookBase,
    NonFiniteLossError,
    Trainer,
    TrainingOutOfMemoryError,
    TrainResult,
)
from harness.engine.trunk import attach_trunk, read_trunk, trunk_digest, trunk_file, trunk_state

__all__ = [
    "CheckpointHook",
    "EvalHook",
    "HookBase",
    "LocalContext",
    "MetricsHook",
    "NonFiniteLossError",
    "Precision",
    "TrainResult",
    "Trainer",
    "TrainingOutOfMemoryError",
    "TrunkFeatures",
    "WorkerContext",
    "add_measurement",
    "attach_trunk",
    "cell_tags",
    "default_storage",
    "feature_batches",
    "read_trunk",
    "resolve_device",
    "resolve_sync_bn",
    "run_cell",
    "seed_everything",
    "train_cell",
    "trunk_digest",
    "trunk_features",
    "trunk_file",
    "trunk_state",
]
