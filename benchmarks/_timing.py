"""Timing shared by the benchmarks: interleaved runs in one process, medians."""
from __future__ import annotations

import statistics
import time


def interleaved_medians(fns, warmup: int, runs: int, cpu: list | None = None) -> list[float]:
    """Median seconds of each zero-argument function. Runs alternate between the functions,
    so load from other processes on the machine falls on all of them alike.

    ``cpu``: a list to receive each function's median process CPU seconds (all threads) of the
    same runs, which leaves out the time spent waiting for a core on a busy machine."""
    times = [[] for _ in fns]
    cpu_times = [[] for _ in fns]
    for _ in range(warmup):
        for fn in fns:
            fn()
    for _ in range(runs):
        for fn, ts, cs in zip(fns, times, cpu_times):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            ts.append(time.perf_counter() - start)
            cs.append(time.process_time() - start_cpu)
    if cpu is not None:
        cpu[:] = [statistics.median(cs) for cs in cpu_times]
    return [statistics.median(ts) for ts in times]
