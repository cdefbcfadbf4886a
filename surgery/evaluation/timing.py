"""Timing several models side by side: the ratio of two medians taken in turns survives a noisy machine.

Used by the recipe search (every candidate beside the original) and the benchmarks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def time_side_by_side(
    runs: dict[str, Callable[[], Any]], repeats: int = 7, warmup: int = 2, min_seconds: float = 0.02
) -> dict[str, float]:
    """Median seconds per call of each function. Each repeat runs every function in turn (so they share
    the machine's noise), each as a loop long enough (``min_seconds``) for the clock to resolve it."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    loops = {}
    for name, run in runs.items():
        start = time.perf_counter()
        run()
        once = max(time.perf_counter() - start, 1e-6)
        loops[name] = max(1, int(min_seconds / once))
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(loops[name]):
                run()
            samples[name].append((time.perf_counter() - start) / loops[name])
    return {name: statistics.median(values) for name, values in samples.items()}
