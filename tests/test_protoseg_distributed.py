"""The prototype update under torch.distributed: two real gloo ranks on 127.0.0.1."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from classifiers.protoseg import momentum_update


def _data():
    gen = torch.Generator().manual_seed(0)
    prototypes = F.normalize(torch.randn(4, 3, 8, generator=gen, dtype=torch.float64), dim=-1)
    embeddings = F.normalize(torch.randn(200, 8, generator=gen, dtype=torch.float64), dim=-1)
    index = torch.randint(0, 12, (200,), generator=gen)
    index[index == 5] = 6  # prototype 5 gets no pixel on any rank
    return prototypes, embeddings, index


def _rank(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        prototypes, embeddings, index = _data()
        mine = slice(0, 120) if rank == 0 else slice(120, 200)  # unequal shares
        torch.save(momentum_update(prototypes, embeddings[mine].t(), index[mine], 0.9), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_apply_the_same_global_centres(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    prototypes, embeddings, index = _data()
    single = momentum_update(prototypes, embeddings.t(), index, 0.9)
    torch.testing.assert_close(rank0, rank1)
    torch.testing.assert_close(rank0, single)
    assert torch.equal(rank0.view(12, 8)[5], prototypes.view(12, 8)[5])
