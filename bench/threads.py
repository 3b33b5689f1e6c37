"""Threads: the image encoder at 1 and 2 torch threads, on a quiet machine and beside one
competing busy process, and what ``--threads auto`` (``ssam.threads``) picks in each case.

    python bench/threads.py [--quick] [--rounds 6] [--out FILE]

Default: ViT-B at 256, batch 1, seeded random weights in the official layout. The busy process
is a plain Python loop (one core, like another user's job). Within each load phase the thread
counts alternate (interleaved rounds); ratios of medians come from this one run. Prints a
table and writes ``bench/results/threads_<variant>_<size>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from measure import describe_machine, time_interleaved
from ssam.threads import choose_threads, measure_busy_cpus
from summary import RESULTS, command_line, format_table, write_results
from workloads import (
    BenchSetup,
    build_inference_model,
    make_encoder_step,
    write_random_checkpoint,
    write_random_clip,
)

BUSY_LOOP = "import time\nend = time.time() + 900\nwhile time.time() < end: pass\n"


def measure_phase(step, rounds: int) -> dict:
    """Median seconds per encoder call at 1 and 2 threads (interleaved), and auto's choice."""
    busy = measure_busy_cpus(1.0)
    auto = choose_threads("auto", busy)

    def at(threads: int):
        def run() -> None:
            torch.set_num_threads(threads)
            step()

        return run

    times = time_interleaved({"1": at(1), "2": at(2)}, rounds, warmup=1)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {
        "busy_cpus": busy,
        "auto_threads": auto,
        "median_s": medians,
        "auto_s": medians.get(str(auto)),
        "best": min(medians, key=medians.get),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny SAM at 64 (smoke run)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    variant, size = ("tiny", 64) if args.quick else ("vit_b", 256)
    with tempfile.TemporaryDirectory() as work:
        checkpoint = write_random_checkpoint(variant, Path(work))
        clip = write_random_clip(Path(work))
        setup = BenchSetup(variant, size, str(checkpoint), work, 2, work, str(clip))
        model = build_inference_model(setup, "ssam_adapted")
        step = make_encoder_step(model, 1)
        phases = {"quiet": measure_phase(step, args.rounds)}
        busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
        try:
            time.sleep(1.0)
            phases["one busy process"] = measure_phase(step, args.rounds)
        finally:
            busy.kill()
            busy.wait()
    rows = [
        [
            name,
            f"{p['busy_cpus']:.2f}" if p["busy_cpus"] is not None else "?",
            f"{p['median_s']['1']:.3f}",
            f"{p['median_s']['2']:.3f}",
            f"{p['median_s']['2'] / p['median_s']['1']:.2f}",
            p["auto_threads"],
            "yes" if str(p["auto_threads"]) == p["best"] else "no",
        ]
        for name, p in phases.items()
    ]
    headers = ["load", "busy CPUs", "1 thread s", "2 threads s", "2/1", "auto picks", "auto best"]
    print(f"image encoder, {variant} at {size}, batch 1 (medians of {args.rounds} rounds)")
    print(format_table(headers, rows))
    result = {
        "command": command_line("threads.py", argv),
        "machine": describe_machine(torch.get_num_threads()),
        "phases": phases,
    }
    out = args.out or RESULTS / f"threads_{variant}_{size}.json"
    write_results(result, out)
    print(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
