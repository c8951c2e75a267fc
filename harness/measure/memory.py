"""Peak memory of what runs inside a block: the CUDA allocator's peak on GPU, the resident set's
high-water mark on CPU."""

from __future__ import annotations

import contextlib
import ctypes
import gc

import torch

_PROC_STATUS = "/proc/self/status"


def _status_kib(field: str) -> int | None:
    with contextlib.suppress(OSError):
        with open(_PROC_STATUS) as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    return None


def _reset_peak_rss() -> bool:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``, so that memory the
    model frees and re-uses between forwards is counted again), then reset this process's
    peak resident size (VmHWM) to its current size; False where the kernel does not allow
    it (then CPU peak memory is not reported)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda_allocator"
    return "rss_high_water_mark" if _reset_peak_rss() else "unavailable"


class PeakMemory:
    """Peak memory (MB) used by what runs inside ``with`` beyond what was in use before it
    (NaN where ``memory_method`` is ``unavailable``)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb = device, float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        else:
            self._before = _status_kib("VmRSS") if _reset_peak_rss() else None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._before) / 2**20
        elif self._before is not None:
            self.peak_mb = max(0, _status_kib("VmHWM") - self._before) / 1024


def release_memory(device: torch.device) -> None:
    """Give back what a failed (out-of-memory) attempt left allocated."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
