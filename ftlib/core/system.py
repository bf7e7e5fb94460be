"""What this machine offers a run: the CPUs this process may use."""

from __future__ import annotations

import os


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset / container CPU sets
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_num_workers(max_workers: int = 8) -> int:
    """DataLoader workers for image decoding: the CPUs this process may use, shared among the local
    processes of a distributed launch (LOCAL_WORLD_SIZE), minus one for the main process, capped."""
    local_procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(max_workers, available_cpus() // local_procs - 1))
