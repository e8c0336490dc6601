"""Timing helper shared by the benchmark scripts (run them as `python benchmarks/<name>.py`)."""
import statistics
import time


def median_time(fn, repeats: int) -> float:
    """Median wall time in seconds of `repeats` calls of fn() (fn must block until its result is ready)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
