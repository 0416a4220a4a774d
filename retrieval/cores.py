"""How many CPU cores are free right now, so thread pools do not wait on a busy core.

An OpenMP-style pool splits each operation into one piece per thread and waits for the last
piece. When another process holds one of the cores, the thread on it is descheduled for a
whole time slice and every other thread waits: on a 2-core machine with one other busy
process, two torch threads embed photos at half the speed of one. The kernel's count of
runnable tasks (``procs_running`` in ``/proc/stat``), less this process's own running
threads, says how many cores other programs hold at this instant; a few samples a
millisecond apart smooth it. Reading it costs well under a millisecond, so a build asks
again before every batch.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

_SAMPLES, _GAP_S = 5, 0.001


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _procs_running() -> int | None:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"procs_running"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _own_running_threads() -> int:
    """Threads of this process the kernel counts as running (a pool's spinning threads are)."""
    running = 0
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return 1
    for task in tasks:
        try:
            stat = (task / "stat").read_bytes()
        except OSError:
            continue  # the thread ended meanwhile
        if stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] == b"R":
            running += 1
    return max(1, running)


def busy_elsewhere() -> int | None:
    """Cores other processes keep busy now (median of a few samples), or None where the system
    does not say (not Linux)."""
    counts = []
    for i in range(_SAMPLES):
        total = _procs_running()
        if total is None:
            return None
        counts.append(max(0, total - _own_running_threads()))
        if i + 1 < _SAMPLES:
            time.sleep(_GAP_S)
    return int(statistics.median(counts))


def free_cores(limit: int | None = None) -> int:
    """Cores no other process is using now (at least 1, at most ``limit`` or this process's CPUs).

    ``RETRIEVAL_THREADS=N`` fixes the answer (a benchmark's fixed thread counts, or a user who
    knows better); where the system cannot say, every usable core counts as free.
    """
    cap = min(usable_cpus(), limit) if limit else usable_cpus()
    fixed = os.environ.get("RETRIEVAL_THREADS", "").strip()
    if fixed.isdigit() and int(fixed) > 0:
        return int(fixed)
    busy = busy_elsewhere()
    if busy is None:
        return cap
    return max(1, min(cap, usable_cpus() - busy))


class TorchThreads:
    """Sets torch's intra-op threads to the free cores before each batch, and back when closed.

    The most it uses is torch's own count when it starts (``OMP_NUM_THREADS`` or the cores);
    ``RETRIEVAL_THREADS=N`` fixes it. Used by CPU builds, where a batch takes a fraction of a
    second and another process may start or stop at any time.
    """

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self.before = torch.get_num_threads()
        self.used: set[int] = set()

    def adjust(self) -> int:
        n = free_cores(self.before)
        if n != self._torch.get_num_threads():
            self._torch.set_num_threads(n)
        self.used.add(n)
        return n

    def close(self) -> None:
        if self._torch.get_num_threads() != self.before:
            self._torch.set_num_threads(self.before)
