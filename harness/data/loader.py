"""Training and test loaders over a list of dataset dicts."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class _MapDataset(Dataset):
    def __init__(self, records: list[dict], mapper: Callable[[dict], dict]) -> None:
        self.records, self.mapper = records, mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return self.mapper(self.records[index])


class InfiniteSampler(Sampler[int]):
    """Endless indices, reshuffled every pass with a generator seeded by ``seed``."""

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.seed, self.shuffle = size, seed, shuffle

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            yield from (torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)).tolist()


def build_train_loader(
    records: list[dict], mapper: Callable[[dict], dict], batch_size: int, num_workers: int, seed: int
) -> Iterator[dict]:
    """An endless iterator of batches ``{"image": uint8 [B,3,S,S], "sem_seg": long [B,S,S], "file_name": [...]}``."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        _MapDataset(records, mapper), batch_size=batch_size, sampler=InfiniteSampler(len(records), seed),
        num_workers=num_workers, drop_last=True, generator=generator, persistent_workers=num_workers > 0,
    )
    return iter(loader)


def build_test_loader(records: list[dict], mapper: Callable[[dict], dict], batch_size: int, num_workers: int) -> DataLoader:
    """Batches as lists of mapped dicts (images may differ in size), in dataset order."""
    return DataLoader(
        _MapDataset(records, mapper), batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=list
    )
