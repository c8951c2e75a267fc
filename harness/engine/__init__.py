"""The training engine: one trainer with hooks, the same in one process and in each Ray Train worker.

- ``Trainer`` (``trainer.py``): the loop (forward, backward, optimiser step over ``train.accumulate``
  micro-batches under ``Precision``) and ``HookBase``; ``build_optimizer``, ``lr_factor``.
- ``hooks.py``: ``MetricsHook`` (every ``train.log_period``), ``CheckpointHook``
  (``train.checkpoint_period``), ``EvalHook`` (``train.eval_period``).
- ``checkpoint.py``: checkpoint folders (state, every worker's RNG states; the sampler position
  is the iteration), in Ray Train's layout.
- ``context.py``: ``WorkerContext`` (rank, device, DDP, report, resume) and ``LocalContext``.
- ``launch.py``: ``launch`` (a cell as a Ray Train ``TorchTrainer`` run), ``RayTrainContext``,
  ``init_ray``, ``memory_cap``; imports Ray only when called.
"""

from harness.engine.context import LocalContext, WorkerContext
from harness.engine.hooks import CheckpointHook, EvalHook, MetricsHook
from harness.engine.precision import Precision
from harness.engine.trainer import (
    HookBase,
    NonFiniteLossError,
    Trainer,
    TrainingOutOfMemoryError,
    TrainResult,
    build_optimizer,
    lr_factor,
)

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
    "WorkerContext",
    "build_optimizer",
    "lr_factor",
]
