"""S-SAM speed and memory suite: every compared configuration measured side by side in one run.

    python bench/run_suite.py                # ViT-B at 256, 2 threads: about 20-30 min on 2 cores
    python bench/run_suite.py --quick        # tiny SAM at 64: a smoke run of every path

Measures (CPU, float32, ``torch.set_num_threads(--threads)``):
* training step time and images/s per method and for plain official SAM fully fine-tuned
  (``sam_full``), interleaved in one process, medians;
* inference time per image of S-SAM adapted (eval, W' cached), merged, and plain SAM;
* achieved GFLOP/s of the image encoder forward against a plain matmul timed in the same rounds;
* peak RSS of each configuration and batch, each in a fresh process;
* seconds from checkpoint file to ready model: S-SAM with the SVD computed, from the SVD cache,
  and official modules from a merged checkpoint, each in a fresh process;
* adapter file size and trainable parameters per method.

Prints one table and writes it as JSON (``--out``, default ``bench/results/``). Random weights in
the official key layout: speed does not depend on values.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import workloads as wl
from measure import (
    IsolatedRunner,
    count_flops,
    describe_machine,
    measure_matmul_gflops,
    summarise,
    time_interleaved,
)
from summary import check_known, default_output, evaluate_targets, format_report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variant", default="vit_b")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (all runs)")
    p.add_argument("--train-batches", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--infer-batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--configs", nargs="+", default=list(wl.TRAIN_CONFIGS), help="training configs")
    p.add_argument("--rounds", type=int, default=5, help="timed training rounds per batch size")
    p.add_argument("--infer-rounds", type=int, default=7, help="timed inference rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--load-repeats", type=int, default=2, help="fresh-process load measurements")
    p.add_argument("--rss-steps", type=int, default=2, help="training steps per peak-RSS process")
    p.add_argument("--skip-isolated", action="store_true", help="no fresh-process measurements")
    p.add_argument("--quick", action="store_true", help="tiny SAM at 64, few rounds: a smoke run")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: bench/results/)")
    args = p.parse_args(argv)
    if args.quick:
        args.variant, args.image_size = "tiny", 64
        args.train_batches, args.infer_batches = [1, 2], [1, 2]
        args.rounds, args.infer_rounds, args.warmup = 2, 2, 1
        args.load_repeats, args.rss_steps = 1, 1
    check_known(p, args.configs, wl.TRAIN_CONFIGS, "configs")
    args.out = default_output(args, "suite")
    return args


def measure_load(runner: IsolatedRunner, setup: wl.BenchSetup, repeats: int) -> list[dict]:
    """Checkpoint -> ready model, fresh process each: SVD computed, SVD cached, merged."""
    rows: dict[str, list[float]] = {"svd_first": [], "svd_cached": [], "merged": []}
    for r in range(repeats):
        # Empty each time, so the SVD is computed; the first fills the cache later runs use.
        cache = setup.cache_dir if r == 0 else str(Path(setup.work_dir) / f"cache_load_{r}")
        for kind in rows:
            rows[kind].append(runner.run(wl.load_child, setup, kind, cache)["seconds"])
    return [{"kind": kind, "samples_s": s, **summarise(s)} for kind, s in rows.items()]


def measure_memory(runner: IsolatedRunner, setup: wl.BenchSetup, args) -> list[dict]:
    """Peak RSS of every training and inference configuration, each in a fresh process."""
    rows = []
    for batch in args.train_batches:
        for name in args.configs:
            result = runner.run(wl.train_child, setup, name, batch, args.rss_steps)
            rows.append({"mode": "train", "config": name, "batch": batch, **result})
    for batch in args.infer_batches:
        for name in wl.INFER_CONFIGS:
            result = runner.run(wl.infer_child, setup, name, batch, 2)
            rows.append({"mode": "infer", "config": name, "batch": batch, **result})
    return rows


def _rows(times: dict[str, list[float]], batch: int, baseline: str) -> list[dict]:
    """Per configuration: median time, images/s, ratio of medians to ``baseline``, and the
    paired ratio: the median over rounds of (time / baseline's time in the same round)."""
    base = times.get(baseline)
    rows = []
    for name, samples in times.items():
        stats = summarise(samples)
        paired = [t / b for t, b in zip(samples, base, strict=True)] if base else None
        rows.append(
            {
                "config": name,
                "batch": batch,
                **stats,
                "images_per_s": batch / stats["median_s"],
                "ratio": stats["median_s"] / statistics.median(base) if base else None,
                "paired_ratio": statistics.median(paired) if paired else None,
                "samples_s": samples,
            }
        )
    return rows


def measure_training(setup: wl.BenchSetup, args) -> tuple[list[dict], dict, dict]:
    """Interleaved training steps of all configurations; trainable counts; adapter sizes."""
    models = {name: wl.build_training_model(setup, name) for name in args.configs}
    optimizers = {name: wl.make_optimizer(m) for name, m in models.items()}
    params = {
        n: sum(p.numel() for p in m.parameters() if p.requires_grad) for n, m in models.items()
    }
    sizes = {
        n: wl.adapter_size_bytes(m, setup.work_dir) for n, m in models.items() if n in wl.METHODS
    }
    rows = []
    for batch in args.train_batches:
        steps = {n: wl.make_train_step(m, optimizers[n], batch) for n, m in models.items()}
        times = time_interleaved(steps, args.rounds, args.warmup)
        rows += _rows(times, batch, wl.PLAIN_TRAIN)
        print(f"  training, batch {batch}: done", flush=True)
    del models, optimizers, steps
    gc.collect()
    return rows, params, sizes


def measure_inference(setup: wl.BenchSetup, args) -> tuple[list[dict], list[dict]]:
    """Interleaved inference of adapted, merged and plain; encoder GFLOP/s against a matmul."""
    models = {name: wl.build_inference_model(setup, name) for name in wl.INFER_CONFIGS}
    infer_rows, flops_rows = [], []
    for batch in args.infer_batches:
        steps = {n: wl.make_infer_step(m, batch) for n, m in models.items()}
        times = time_interleaved(steps, args.infer_rounds, args.warmup)
        infer_rows += _rows(times, batch, "sam_plain")
        encoders = {
            f"encoder:{n}": wl.make_encoder_step(models[n], batch)
            for n in ("sam_plain", "ssam_adapted")
        }
        flops = count_flops(encoders["encoder:sam_plain"])
        tokens = batch * (setup.image_size // 16) ** 2
        width = models["sam_plain"].image_encoder.patch_embed.proj.out_channels
        matmul = (tokens, width, 4 * width)  # the shape of the MLP's first layer
        a, b = torch.randn(matmul[:2]), torch.randn(matmul[1:])
        encoders["matmul"] = lambda a=a, b=b: torch.mm(a, b)
        times = time_interleaved(encoders, args.infer_rounds, args.warmup)
        matmul_flops = 2 * matmul[0] * matmul[1] * matmul[2]
        for name, samples in times.items():
            work = matmul_flops if name == "matmul" else flops
            median = statistics.median(samples)
            flops_rows.append(
                {
                    "config": name,
                    "batch": batch,
                    "gflop": work / 1e9,
                    "median_s": median,
                    "gflops_per_s": work / median / 1e9,
                    "shape": list(matmul) if name == "matmul" else None,
                }  # fmt: skip
            )
        print(f"  inference, batch {batch}: done", flush=True)
    big = measure_matmul_gflops(1024, 1024, 1024, args.infer_rounds)
    flops_rows.append(
        {"config": "matmul 1024^3", "batch": None, "gflops_per_s": statistics.median(big)}
    )
    return infer_rows, flops_rows


def _save_partial(results: dict, out: Path) -> None:
    """What is measured so far, next to ``out``: a killed run still leaves its numbers."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".partial.json").write_text(json.dumps(results, indent=1) + "\n")


def run_suite(args: argparse.Namespace, work_dir: Path) -> dict:
    torch.set_num_threads(args.threads)
    machine = describe_machine(args.threads)
    cache = work_dir / "cache"
    os.environ["SSAM_CACHE"] = str(cache)  # never the user's cache: random weights only
    checkpoint = wl.write_random_checkpoint(args.variant, work_dir)
    setup = wl.BenchSetup(
        args.variant, args.image_size, str(checkpoint), str(cache), args.threads, str(work_dir)
    )
    results: dict = {
        "command": "python bench/run_suite.py " + shlex.join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine,
    }
    if not args.skip_isolated:
        with IsolatedRunner(preload=["workloads"]) as runner:
            print("load times (fresh processes) ...", flush=True)
            results["load"] = measure_load(runner, setup, args.load_repeats)
            print("peak RSS (fresh processes) ...", flush=True)
            results["memory"] = measure_memory(runner, setup, args)
        _save_partial(results, args.out)
    print("training steps (interleaved) ...", flush=True)
    results["training"], results["trainable"], results["adapter_bytes"] = measure_training(
        setup, args
    )
    _save_partial(results, args.out)
    print("inference (interleaved) ...", flush=True)
    results["inference"], results["encoder_flops"] = measure_inference(setup, args)
    results["load_average_after"] = describe_machine(args.threads)["load_average"]
    results["targets"] = evaluate_targets(results)
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ssam-bench-") as tmp:
        results = run_suite(args, Path(tmp))
    print(format_report(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    args.out.with_suffix(".partial.json").unlink(missing_ok=True)
    print(f"\nwritten {args.out}\ncommand: {results['command']}")
    return results


if __name__ == "__main__":
    main()
