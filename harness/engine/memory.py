"""A cap on a process's resident memory, enforced by a watchdog thread.

``memory_cap(gigabytes, process)`` samples the process's resident set size (``/proc/self/statm``)
every ``POLL_SECONDS``; when it passes the cap, the thread that entered the cap gets a
``ResidentMemoryExceeded`` (a ``MemoryError``: "out of memory: <process> reached N GB of M")
at its next Python instruction, as a CPU allocator's out-of-memory error would reach it, so the
trainer names the iteration and the latency sweep halves its batch. Resident memory is what the
kernel's OOM killer and Ray's scheduler count; an address-space limit (``RLIMIT_DATA``/``AS``)
counts reserved but untouched pages too and fails cells far below their real use. One operation
that allocates past the node's memory within a single call still meets the kernel first.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from pathlib import Path

from harness.logs import logger

POLL_SECONDS = 0.02
_STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_GIB = 2**30


class ResidentMemoryExceeded(MemoryError):
    """The resident memory of a capped process passed its cap; the message says which process,
    how far, and the cap. Raised asynchronously in the capped thread, so each instance's message
    comes from the subclass ``memory_cap`` makes for it (an asynchronous exception carries no
    arguments)."""

    message = "out of memory"

    def __init__(self, *args) -> None:
        super().__init__(*(args or (self.message,)))


def resident_bytes() -> int:
    """This process's resident set size in bytes (Linux ``/proc/self/statm``)."""
    return int(_STATM.read_text().split()[1]) * _PAGE


def _set_async_exception(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Make thread ``thread_id`` raise ``exc_type`` at its next Python instruction; None: take back
    one that is still pending."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               None if exc_type is None else ctypes.py_object(exc_type))


class _Watchdog(threading.Thread):
    """Samples resident memory; over ``cap`` bytes, raises once in ``target`` and re-arms when the
    memory is back under the cap (the error frees the step's tensors)."""

    def __init__(self, cap: int, process: str, target: int) -> None:
        super().__init__(name=f"segheads-memory-cap-{process}", daemon=True)
        self.cap, self.process, self.target = cap, process, target
        self.stopped = threading.Event()

    def run(self) -> None:
        armed = True
        while not self.stopped.wait(POLL_SECONDS):
            used = resident_bytes()
            if armed and used > self.cap:
                message = (f"out of memory: {self.process} (pid {os.getpid()}) reached {used / _GIB:.2f} GB "
                           f"of {self.cap / _GIB:g} GB resident (resources.memory_gb)")
                _set_async_exception(self.target, type("ResidentMemoryExceeded", (ResidentMemoryExceeded,), {"message": message}))
                armed = False
            elif not armed and used <= self.cap:
                armed = True


@contextlib.contextmanager
def memory_cap(gigabytes: float, process: str = "cell"):
    """While inside, the calling thread gets ``ResidentMemoryExceeded`` once this process's
    resident memory passes ``gigabytes`` (0: no cap), ``process`` naming it in the message.
    Without ``/proc`` (not Linux) the cap is only Ray's reservation, and a warning says so."""
    if not gigabytes:
        yield
        return
    if not _STATM.is_file():
        logger.warning("memory_gb=%g is reserved in Ray's scheduler but not enforced: resident memory is read "
                       "from /proc, which this system lacks", gigabytes)
        yield
        return
    watchdog = _Watchdog(int(gigabytes * _GIB), process, threading.get_ident())
    watchdog.start()
    try:
        yield
    finally:
        watchdog.stopped.set()
        watchdog.join()
        # one raised as the block ended may still be pending: it must not reach the caller's code
        _set_async_exception(watchdog.target, None)
