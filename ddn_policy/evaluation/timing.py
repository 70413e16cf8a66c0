"""Wall-clock timing for benchmarks (never for unit tests)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(
    fn: Callable[[], object], warmup: int, calls: int, synchronize: bool = False
) -> float:
    """Median wall time of `calls` calls of fn after `warmup` untimed ones. With
    `synchronize`, each call waits for queued CUDA work, so the time is the GPU's too."""
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got calls={calls}")

    def timed_call():
        fn()
        if synchronize:
            import torch

            torch.cuda.synchronize()

    for _ in range(warmup):
        timed_call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        timed_call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
