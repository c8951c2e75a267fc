"""Same-process timing for benchmarks that compare heads as ratios."""

import statistics
import time
from collections.abc import Callable


def interleaved_medians(candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per candidate; candidates take turns each round, so machine drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(warmup + rounds):
        for name, fn in candidates.items():
            began = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - began)
    return {name: statistics.median(values) for name, values in times.items()}
