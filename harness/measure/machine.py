"""The machine a number was measured on: its fingerprint, pinned threads, synchronised timing and its
own dense matmul throughput."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import statistics
import time
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[int]:
    """Run with torch's intra-op thread count set to ``threads`` (0: all cores), then restore it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def fingerprint(device: torch.device) -> dict:
    """What every number was measured on: device, its name, torch, threads, Python."""
    return {
        "device": str(device), "device_type": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__, "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": torch.get_num_threads(), "python": platform.python_version(),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.cache
def _matmul_gflops(device: str, dtype: torch.dtype, threads: int) -> float:
    device_ = torch.device(device)
    size = 4096 if device_.type == "cuda" else 1024
    a = torch.randn(size, size, device=device_).to(dtype)
    b = torch.randn(size, size, device=device_).to(dtype)
    seconds = time_calls(lambda: torch.mm(a, b), device_, warmup=3, iters=10)
    return 2 * size**3 / statistics.median(seconds) / 1e9


def machine_matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """This machine's measured dense matmul throughput (GFLOP/s, median of 10 square
    matmuls) on ``device`` in ``dtype`` with the current thread count; measured once per process."""
    return _matmul_gflops(str(device), dtype, torch.get_num_threads())


def time_calls(fn, device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds per call of ``fn``, each call synchronised."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / 1e3 for start, end in events]
    seconds = []
    for _ in range(iters):
        began = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - began)
    return seconds
