"""Measuring tools for the benchmark suite: interleaved timing, medians, FLOPs, peak RSS, and
running one measurement in a fresh interpreter.

Timings on a small shared machine drift with other load. Compared configurations therefore run
interleaved (A B C, B C A, C A B, ...: each round rotates the order, so no configuration always
follows the same neighbour) and are summarised by their median, so that a ratio of two medians
compares runs made under the same conditions.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def time_call(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_interleaved(
    workloads: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each workload over ``rounds`` rounds, after ``warmup`` untimed ones.

    Round k runs the workloads in the order rotated by k (A B C, B C A, ...), so slow phases of
    the machine hit every workload alike. The cyclic garbage collector is off while timing (as
    in ``timeit``): a model step frees its tensors by reference counting.
    """
    names = list(workloads)
    for _ in range(warmup):
        for name in names:
            workloads[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    gc.disable()
    try:
        for k in range(rounds):
            order = names[k % len(names) :] + names[: k % len(names)]
            for name in order:
                times[name].append(time_call(workloads[name]))
    finally:
        gc.enable()
    return times


def summarise(samples: Sequence[float]) -> dict[str, float | int]:
    """Median, min, max and count of timing samples (seconds)."""
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "n": len(samples),
    }


def _conv_backward_flops(grad_out, x, w, bias, stride, padding, dilation, transposed,
                         output_padding, groups, output_mask, out_shape=None) -> int:  # fmt: skip
    """``torch.utils.flop_counter``'s convolution backward with the weight gradient of a
    grouped convolution divided by its groups: torch counts it as a dense one (a depthwise
    3x3 over 256 channels: 257x its forward instead of 2x)."""
    args = (grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups)
    inputs = conv_backward_flop(*args, [output_mask[0], False, False], out_val=out_shape)
    weight = conv_backward_flop(*args, [False, output_mask[1], False], out_val=out_shape)
    return inputs + weight // groups


def flop_counter() -> FlopCounterMode:
    """A ``FlopCounterMode`` (a multiply-add counts 2) that counts grouped convolutions'
    backward right (``_conv_backward_flops``)."""
    fixes = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    return FlopCounterMode(display=False, custom_mapping=fixes)


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``fn`` (a multiply-add counts 2), as counted
    by ``torch.utils.flop_counter`` (matmuls, convolutions, attention; ``flop_counter``)."""
    with flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


def measure_matmul_gflops(m: int, k: int, n: int, rounds: int) -> list[float]:
    """GFLOP/s of (m x k) @ (k x n) in float32, one value per round (each of several calls)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    calls = max(1, int(2e9 // (2 * m * k * n)))  # about 2 GFLOP per sample
    torch.mm(a, b)
    rates = []
    for _ in range(rounds):
        seconds = time_call(lambda: [torch.mm(a, b) for _ in range(calls)])
        rates.append(2 * m * k * n * calls / seconds / 1e9)
    return rates


def top_operators(fn: Callable[[], Any], top: int = 12) -> list[dict]:
    """The operators of one ``fn()`` call by self CPU time, grouped by input shape: each with
    its shapes, calls, self milliseconds and share of the total."""
    from torch.profiler import profile

    with profile(record_shapes=True) as prof:
        fn()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [
        {"op": e.key, "shapes": str(e.input_shapes)[:120], "calls": e.count,
         "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total}
        for e in rows
    ]  # fmt: skip


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Resident set size now, MiB (from /proc, Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_fresh(command: Sequence[str]) -> dict:
    """Run ``command`` (``workloads.child_command``: ``python -m workloads ...``) in a fresh
    interpreter with bench/ on its path, as a user's process starts: its imports and all
    count in its peak RSS. Returns its last stdout line, parsed as JSON."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [BENCH_DIR, env.get("PYTHONPATH")]))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=BENCH_DIR)
    if done.returncode != 0:
        raise RuntimeError(f"{command[:5]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe_machine(threads: int) -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "load_average": os.getloadavg(),
    }
