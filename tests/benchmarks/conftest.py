"""Every benchmark runs with torch's CPU thread count pinned, so timings compare."""

import pytest
import torch

THREADS = 2


@pytest.fixture(autouse=True)
def _pinned_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)
