"""Training checkpoints: one folder per checkpoint, the layout Ray Train writes under storage.

``<storage>/<run name>/checkpoint_<iteration>/`` holds ``state.pt`` (rank 0: model, optimiser,
scheduler, gradient scaler, iteration, history) and ``rng-rank<r>.pt`` (every worker's CPU and
CUDA generators, Python's and NumPy's). A one-process run writes the same folders itself (staged,
then renamed, so a folder that exists is complete), so ``segheads run`` and Ray Train workers
resume each other's checkpoints. The sampler position is the iteration (``StepSampler``).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "state.pt"
PREFIX = "checkpoint_"
KEEP = 2  # newest checkpoints kept per run


def folder_name(iteration: int) -> str:
    return f"{PREFIX}{iteration:08d}"


def _rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def rng_state() -> dict:
    """This process's generators, as tensors and plain numbers (``torch.load(weights_only=True)`` reads them)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, words, python_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                      "has_gauss": has_gauss, "gauss": gauss},
            "python": {"version": version, "words": list(words), "gauss": python_gauss}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())  # saved on the CPU; torch rejects a CUDA copy
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]][: torch.cuda.device_count()])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["words"]), p["gauss"]))


def write(folder: Path, state: dict | None, rank: int) -> None:
    """Write rank ``rank``'s part of a checkpoint into ``folder``: ``state`` (rank 0) and its RNG states."""
    folder.mkdir(parents=True, exist_ok=True)
    if state is not None:
        torch.save(state, folder / STATE_FILE)
    torch.save(rng_state(), folder / _rng_file(rank))


def read(folder: Path, rank: int) -> dict:
    """The training state in ``folder``, on the CPU (``load_state_dict`` moves it to the model's
    device), and restore rank ``rank``'s generators from it when it holds them."""
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    rng = folder / _rng_file(rank)
    if rng.is_file():
        set_rng_state(torch.load(rng, map_location="cpu", weights_only=True))
    return state


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    if not run_dir.is_dir():
        return None
    done = sorted(p for p in run_dir.glob(f"{PREFIX}*") if p.is_dir() and (p / STATE_FILE).is_file())
    return done[-1] if done else None


def commit(staged: Path, run_dir: Path, name: str) -> Path:
    """Move a staged checkpoint folder to ``run_dir/name`` (replacing one of that name) and keep
    the ``KEEP`` newest; returns its final path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(staged, final)
    for old in sorted(p for p in run_dir.glob(f"{PREFIX}*") if p.is_dir())[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final
