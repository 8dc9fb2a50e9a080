"""Timing shared by the benchmarks: interleaved runs in one process, medians."""
from __future__ import annotations

import statistics
import time


def interleaved_medians(fns, warmup: int, runs: int) -> list[float]:
    """Median seconds of each zero-argument function. Runs alternate between the functions,
    so load from other processes on the machine falls on all of them alike."""
    times = [[] for _ in fns]
    for _ in range(warmup):
        for fn in fns:
            fn()
    for _ in range(runs):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]
