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


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None where it is absent."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    values = [float(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    return sum(values) - idle, sum(values)


def measure_busy_cpus(seconds: float = _SAMPLE_S) -> float | None:
    """How many CPUs other work keeps busy, averaged over ``seconds`` (None: unknown)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(seconds)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (os.cpu_count() or 1)


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


def apply_threads(requested: int | str | None) -> tuple[int, str]:
    """Set torch's intra-op thread count as ``choose_threads`` says; returns the count and a
    line saying why, e.g. ``torch threads: 1 (auto: 2 CPUs, 1.0 busy at start)``."""
    import torch

    if requested in (None, AUTO):
        busy = measure_busy_cpus()
        count = choose_threads(AUTO, busy)
        seen = f"{busy:.1f} busy" if busy is not None else "load unknown"
        why = f"auto: {available_cpus()} CPUs, {seen} at start"
    else:
        count, why = choose_threads(requested), "as asked"
    torch.set_num_threads(count)
    return count, f"torch threads: {count} ({why})"
