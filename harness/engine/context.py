"""Where a trainer runs: ``WorkerContext`` says which worker it is, on which device, how it
reports metrics and checkpoints and where it resumes from. ``LocalContext`` is one process
writing its own checkpoint folders; ``harness.engine.launch`` has the Ray Train worker's."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from harness.engine import checkpoint

TRUNK_FEATURES = "trunk-features"  # the folder beside a grid's run folders that holds frozen trunks' features


class WorkerContext:
    """One data-parallel worker. ``report`` is a barrier every worker calls the same number of
    times; a checkpoint folder given to it is this worker's part (rank 0 holds the state)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    keeps_checkpoints: bool = True  # False: checkpoints have nowhere to go and are not written
    cache_folder: Path | None = None  # where cells share a frozen trunk's features (None: each cell keeps its own)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to run forwards through (DDP over the workers when there are several)."""
        return model

    def resume_folder(self) -> Path | None:
        """The checkpoint folder to resume from, or None to start at iteration 0."""
        return None

    def report(self, metrics: dict, folder: Path | None = None, name: str | None = None) -> None:
        """Hand on ``metrics`` (rank 0's count) and, with ``folder``, this worker's part of checkpoint ``name``."""

    def all_mean(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` averaged over the workers (a collective every worker calls)."""
        if self.world_size > 1 and dist.is_initialized():
            dist.all_reduce(values)
            values = values / self.world_size
        return values


class LocalContext(WorkerContext):
    """One process on ``device``. Checkpoints go to ``run_dir`` (None: none are written); with
    ``resume`` the newest complete one there is resumed; reported metrics are kept in ``reported``.
    Frozen trunks' features are cached beside the run folder, in ``trunk-features``."""

    def __init__(self, device: torch.device, run_dir: Path | None = None, resume: bool = False) -> None:
        self.device, self.run_dir, self.resume = device, run_dir, resume
        self.keeps_checkpoints = run_dir is not None
        self.cache_folder = run_dir.parent / TRUNK_FEATURES if run_dir is not None else None
        self.reported: list[dict] = []

    def resume_folder(self) -> Path | None:
        return checkpoint.latest(self.run_dir) if self.resume and self.run_dir is not None else None

    def report(self, metrics: dict, folder: Path | None = None, name: str | None = None) -> None:
        self.reported.append(metrics)
        if folder is not None:
            checkpoint.commit(folder, self.run_dir, name)


def staging_folder() -> Path:
    """A fresh local folder to write a checkpoint part into before it is reported."""
    return Path(tempfile.mkdtemp(prefix="segheads-checkpoint-"))
