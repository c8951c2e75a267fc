"""Training and test loaders over a list of dataset dicts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from harness.errors import InputError

_SAMPLE_SEED_STRIDE = 0x9E3779B97F4A7C15  # spreads (seed, position) over 63-bit augmentation seeds


class _MapDataset(Dataset):
    """Maps ``records[index]``; an ``(index, seed)`` item maps it with its augmentation seeded by ``seed``."""

    def __init__(self, records: list[dict], mapper: Callable[..., dict]) -> None:
        self.records, self.mapper = records, mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        if isinstance(item, tuple):
            index, seed = item
            return self.mapper(self.records[index], seed)
        return self.mapper(self.records[item])


@dataclass(frozen=True)
class DataParallelLayout:
    """How one optimiser step's ``global_batch`` samples split: over ``world_size`` workers,
    each taking ``accumulate`` micro-batches of ``global_batch / (world_size * accumulate)``.
    Micro-batch ``j = rank * accumulate + a`` of a step is the same samples whatever the
    layout, so 2 workers x 1 and 1 worker x 2 micro-batches see the same data."""

    global_batch: int
    world_size: int = 1
    rank: int = 0
    accumulate: int = 1

    @property
    def micro_batch(self) -> int:
        return self.global_batch // (self.world_size * self.accumulate)

    def micro_index(self, a: int) -> int:
        """Global index of this worker's ``a``-th micro-batch within a step."""
        return self.rank * self.accumulate + a


def split_batch(global_batch: int, world_size: int, accumulate: int, key: str = "data.batch_size") -> int:
    """The micro-batch size of ``global_batch`` over ``world_size`` workers x ``accumulate``
    micro-batches; ``InputError`` naming ``key`` when it does not divide evenly."""
    parts = world_size * accumulate
    if global_batch % parts:
        raise InputError(f"{key}={global_batch} is the global batch; it must split evenly over "
                         f"{world_size} worker(s) x train.accumulate={accumulate} micro-batches ({parts} parts)")
    return global_batch // parts


class StepSampler(Sampler[list[tuple[int, int]]]):
    """Endless micro-batches of ``(index, augmentation seed)`` for one data-parallel worker.

    The sample stream is the dataset's permutations, one per epoch, each seeded by
    (``seed``, epoch); step ``t`` takes stream positions ``[t B, (t+1) B)`` (B the global
    batch) and this worker yields its ``accumulate`` micro-batches of it (``DataParallelLayout``),
    from ``start_step`` on. Every sample's augmentation seed is a function of (``seed``,
    its stream position), so the batches, crops and flips of a step do not depend on the
    layout, on the loader processes, or on whether the run was restarted at ``start_step``:
    the sampler position is the step.
    """

    def __init__(self, size: int, seed: int, layout: DataParallelLayout, start_step: int = 0) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.seed, self.layout, self.start_step = size, seed, layout, start_step
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _index(self, position: int) -> int:
        epoch = position // self.size
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.size, generator=generator)
        return int(self._order[position % self.size])

    def _sample_seed(self, position: int) -> int:
        return (self.seed * _SAMPLE_SEED_STRIDE + position) % (2**63 - 1)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        layout, step = self.layout, self.start_step
        size = layout.micro_batch
        while True:
            for a in range(layout.accumulate):
                first = step * layout.global_batch + layout.micro_index(a) * size
                yield [(self._index(p), self._sample_seed(p)) for p in range(first, first + size)]
            step += 1


def build_train_loader(
    records: list[dict], mapper: Callable[..., dict], batch_size: int, num_workers: int, seed: int,
    layout: DataParallelLayout | None = None, start_step: int = 0, pin_memory: bool = False,
) -> Iterator[dict]:
    """An endless iterator of micro-batches ``{"image": uint8 [b,3,S,S], "sem_seg": long [b,S,S],
    "image_size": long [b,2] (before padding), "file_name": [...]}``: ``layout``'s share of each step's ``batch_size`` samples (all of
    them when ``layout`` is None), from ``start_step`` on (``StepSampler``); loader processes
    persist across epochs."""
    layout = layout or DataParallelLayout(batch_size)
    loader = DataLoader(
        _MapDataset(records, mapper), batch_sampler=StepSampler(len(records), seed, layout, start_step),
        num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=pin_memory,
        worker_init_fn=_one_opencv_thread,
    )
    return iter(loader)


def _one_opencv_thread(worker_id: int) -> None:
    """A loader process decodes and resizes on its own thread only (MMEngine sets OpenCV's threads
    to 0 for the same reason): eight loader processes per GPU would each start a pool per core."""
    cv2.setNumThreads(0)


def build_test_loader(records: list[dict], mapper: Callable[[dict], dict], batch_size: int, num_workers: int) -> DataLoader:
    """Batches as lists of mapped dicts (images may differ in size), in dataset order."""
    return DataLoader(
        _MapDataset(records, mapper), batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=list,
        worker_init_fn=_one_opencv_thread,
    )
