"""``memory_cap`` enforces resident memory, not address space: the capped thread gets one
``ResidentMemoryExceeded`` naming the process, how far it went and the cap; reserved but untouched
memory does not count; nothing is left pending after the block."""

import subprocess
import sys
import time

import numpy as np
import pytest

from harness.engine import ResidentMemoryExceeded, memory_cap
from harness.engine.memory import POLL_SECONDS, resident_bytes
from harness.errors import is_out_of_memory

GIB = 2**30


def _cap_above_now(extra_gb: float) -> float:
    return resident_bytes() / GIB + extra_gb


def test_touching_memory_past_the_cap_raises_in_the_capped_thread():
    cap = _cap_above_now(0.25)
    held = []
    with pytest.raises(ResidentMemoryExceeded) as raised:
        with memory_cap(cap, "test worker"):
            for _ in range(40):  # up to 2 GB, 50 MB at a time, each page touched
                held.append(np.ones(50 * 2**20 // 8))
                time.sleep(POLL_SECONDS)
    message = str(raised.value)
    assert message.startswith("out of memory: test worker (pid ") and f"of {cap:g} GB resident" in message
    reached = float(message.split(" reached ")[1].split(" GB")[0])
    assert cap - 0.005 <= reached < cap + 0.5  # the message rounds to 0.01 GB
    assert is_out_of_memory(raised.value) and len(held) < 40
    held.clear()


def test_reserved_but_untouched_memory_is_not_counted():
    cap = _cap_above_now(1.0)
    with memory_cap(cap, "test worker"):
        reserved = np.empty(8 * GIB, dtype=np.uint8)  # address space only: RLIMIT_DATA would refuse it
        time.sleep(10 * POLL_SECONDS)
        reserved[:2**20] = 1  # one touched MiB
        time.sleep(10 * POLL_SECONDS)
    assert reserved.nbytes == 8 * GIB


_REARMS = """
import sys, time
import numpy as np
from harness.engine import ResidentMemoryExceeded, memory_cap
from harness.engine.memory import POLL_SECONDS, resident_bytes

cap = resident_bytes() / 2**30 + 0.25
errors = 0
with memory_cap(cap, "test worker"):
    for _ in range(2):
        held = []
        try:
            for _ in range(40):
                held.append(np.ones(50 * 2**20 // 8))
                time.sleep(POLL_SECONDS)
        except ResidentMemoryExceeded:
            errors += 1
        held = None
        deadline = time.time() + 30
        while resident_bytes() > cap * 2**30:  # the watchdog re-arms below the cap
            if time.time() > deadline:
                sys.exit(f"resident memory stayed at {resident_bytes() / 2**30:.2f} GB, over the cap {cap:.2f}")
            time.sleep(POLL_SECONDS)
        time.sleep(5 * POLL_SECONDS)
time.sleep(5 * POLL_SECONDS)  # outside the block: no late exception arrives
print(errors)
"""


def test_the_cap_rearms_after_memory_is_freed_and_nothing_is_left_pending():
    """In a process of its own, whose resident memory falls back once the arrays are freed
    (a long test session's threads keep allocating)."""
    done = subprocess.run([sys.executable, "-c", _REARMS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2"]


def test_no_cap_when_zero():
    with memory_cap(0):
        block = np.ones(64 * 2**20 // 8)
    assert block.sum() == block.size
