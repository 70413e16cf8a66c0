"""Wall-clock timing for benchmarks (never for unit tests)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], warmup: int, calls: int) -> float:
    """Median wall time of `calls` calls of fn after `warmup` untimed ones."""
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got calls={calls}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
