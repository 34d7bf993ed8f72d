"""What the benchmarks measure with: wall time of a call, the machine's cores and load (printed
beside every figure, since a busy machine slows everything), the peak memory of a command's whole
process tree, and medians of repeated timings.

Run a benchmark as a script (`python benchmarks/NAME.py`): Python puts `benchmarks/` on the path,
so `from _measure import ...` needs nothing else.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable

import numpy as np

# Reading a process's PSS walks its page tables: about 0.1 CPU-s for a Ray job's ~20 processes,
# so sampling every 0.25 s took 40 % of a core from the job being measured; once a second does not.
PSS_SAMPLE_SECONDS = 1.0


def timed(call: Callable, *args, **kwargs) -> tuple[float, object]:
    """(wall seconds, result) of `call(*args, **kwargs)`."""
    started = time.perf_counter()
    result = call(*args, **kwargs)
    return time.perf_counter() - started, result


def wall_and_cpu_ms(call: Callable, *args, **kwargs) -> tuple[float, float]:
    """(wall, CPU time of this thread) of one call, in milliseconds. A thread's CPU time is steadier
    than wall time on a shared machine: other processes do not add to it."""
    started, started_cpu = time.perf_counter(), time.thread_time()
    call(*args, **kwargs)
    return (time.perf_counter() - started) * 1e3, (time.thread_time() - started_cpu) * 1e3


def medians(samples: list[tuple[float, ...]]) -> tuple[float, ...]:
    """Column-wise medians of repeated measurements (one tuple per repeat)."""
    return tuple(float(value) for value in np.median(np.asarray(samples, dtype=np.float64), axis=0))


def load_average() -> float:
    """The machine's 1-minute load average."""
    return os.getloadavg()[0]


def machine() -> str:
    """ "cores: N, load average L", printed with each benchmark's figures."""
    return f"cores: {os.cpu_count()}, load average {load_average():.1f}"


def peak_tree_pss(command: list[str], stderr=subprocess.DEVNULL) -> tuple[float, float]:
    """Run `command`; return (wall seconds, peak summed PSS of its process tree in MiB). PSS
    (proportional set size) splits shared pages between the processes sharing them, so the sum over
    a Ray job's processes counts each page once. `stderr`: where the command's error output goes (a
    file to keep it). A failing command ends the benchmark with its exit code."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(process.pid)
        while not done.is_set():
            total = 0
            try:
                for member in [root, *root.children(recursive=True)]:
                    try:
                        total += member.memory_full_info().pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            except psutil.NoSuchProcess:
                break
            peak = max(peak, total / 2**20)
            time.sleep(PSS_SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    process.wait()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}")
    return time.perf_counter() - started, peak
