"""How many CPU threads torch uses: chosen at start from the cores that are actually free.

On a quiet 2-core machine two threads run the ViT-B/256 encoder about twice as fast as one;
with one other busy process, two threads run about twice as SLOW as one (torch's OpenMP
threads spin and wait for each other while one of them is descheduled). No fixed count wins
everywhere (``bench/threads.py`` measures both cases side by side), so ``auto`` takes the CPUs
this process may run on and subtracts those busy over a short sample of ``/proc/stat``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

AUTO = "auto"
_SAMPLE_S = 0.25


def allowed_cpus() -> set[int] | None:
    """Indices of the CPUs this process may run on (its affinity mask: taskset, cgroups'
    cpusets as SLURM and docker --cpuset-cpus set them), or None where unknown."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    allowed = allowed_cpus()
    return len(allowed) if allowed else os.cpu_count() or 1


def _read_stat() -> str:
    return Path("/proc/stat").read_text()


def _cpu_times(cpus: set[int] | None) -> tuple[float, float, int] | None:
    """(busy, total) jiffies summed over ``cpus`` (None: all) from /proc/stat's per-CPU lines,
    and how many CPUs were counted; None where /proc/stat is absent."""
    try:
        lines = _read_stat().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    counted = 0
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        values = [float(v) for v in fields]
        idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
        busy, total, counted = busy + sum(values) - idle, total + sum(values), counted + 1
    return (busy, total, counted) if counted else None


def measure_busy_cpus(seconds: float = _SAMPLE_S) -> float | None:
    """How many of this process's CPUs (``allowed_cpus``) other work keeps busy, averaged over
    ``seconds`` (None: unknown). CPUs outside its affinity mask do not count: on a node shared
    by a scheduler, other jobs' cores are not ours to lose."""
    cpus = allowed_cpus()
    first = _cpu_times(cpus)
    if first is None:
        return None
    time.sleep(seconds)
    second = _cpu_times(cpus)
    if second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * second[2]


def choose_threads(requested: int | str | None, busy: float | None = None) -> int:
    """The thread count for ``requested``: a positive number as given; ``auto`` or None: the
    available CPUs less the busy ones (rounded), at least 1. ``busy``: measured if None."""
    if requested not in (None, AUTO):
        count = int(requested)
        if count < 1:
            raise ValueError(f"threads must be at least 1 or 'auto', got {requested!r}")
        return count
    if busy is None:
        busy = measure_busy_cpus()
    free = available_cpus() - (round(busy) if busy is not None else 0)
    return max(1, min(available_cpus(), free))


def launched_locally() -> int:
    """Processes of one launch on this machine (torchrun's and accelerate's
    ``LOCAL_WORLD_SIZE``; 1 when run directly or when it is not a number)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def apply_threads(requested: int | str | None, processes: int | None = None) -> tuple[int, str]:
    """Set torch's intra-op thread count as ``choose_threads`` says; returns the count and a
    line saying why, e.g. ``torch threads: 1 (auto: 2 CPUs, 1.0 busy at start)``.

    ``processes``: how many processes of one launch share this machine (default:
    ``launched_locally``); with more than one, ``auto`` gives each its share of the available
    CPUs (the others' load is not measured: at start they are this launch's own processes).
    """
    import torch

    processes = launched_locally() if processes is None else processes
    if requested in (None, AUTO) and processes > 1:
        count = max(1, available_cpus() // processes)
        why = f"auto: {available_cpus()} CPUs shared by {processes} processes"
    elif requested in (None, AUTO):
        busy = measure_busy_cpus()
        count = choose_threads(AUTO, busy)
        seen = f"{busy:.1f} busy" if busy is not None else "load unknown"
        why = f"auto: {available_cpus()} CPUs, {seen} at start"
    else:
        count, why = choose_threads(requested), "as asked"
    torch.set_num_threads(count)
    return count, f"torch threads: {count} ({why})"
