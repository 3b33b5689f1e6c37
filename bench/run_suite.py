"""S-SAM speed and memory suite: every compared configuration measured side by side in one run.

    python bench/run_suite.py                # ViT-B at 256, 2 threads: about 20-30 min on 2 cores
    python bench/run_suite.py --quick        # tiny SAM at 64: a smoke run of every path

Measures (CPU, float32, ``torch.set_num_threads(--threads)``):
* training step time and images/s per method and for official SAM fully fine-tuned, built
  two ways (``workloads``: ``sam_same_layout``, the S-SAM model's encoder layout, so the
  ratio is the SVD's own cost; ``sam_stock``, what ``segment_anything`` runs at S), interleaved
  in one process, medians;
* inference time per image of S-SAM adapted (eval, W' cached), merged, and both baselines;
* achieved GFLOP/s of the image encoder forward against two matmuls timed in the same run: the
  shape of the encoder's MLP layer and a large square one (2048^3);
* peak RSS of each configuration and batch, each in a fresh interpreter (imports included,
  real-size CLIP text tower);
* seconds from checkpoint file to ready model: S-SAM with the SVD computed, from the SVD cache,
  and official modules from a merged checkpoint, each in a fresh interpreter (imports done);
* seconds from starting ``ssam predict`` on one image to its label map written: first start
  (empty cache: checkpoint hashed, SVD computed) and cached start;
* adapter file size and trainable parameters per method.

Prints one table and writes it as JSON (``--out``, default ``bench/results/``). Random weights in
the official key layout: speed does not depend on values.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import workloads as wl
from measure import (
    count_flops,
    describe_machine,
    measure_matmul_gflops,
    run_fresh,
    summarise,
    time_interleaved,
)
from ssam.tuning.adapter import save_adapter
from summary import (
    check_known,
    command_line,
    default_output,
    evaluate_targets,
    format_report,
    save_partial,
    write_final,
)


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
    p.add_argument("--mask-repeats", type=int, default=2, help="`ssam predict` first-mask runs")
    p.add_argument("--rss-steps", type=int, default=2, help="training steps per peak-RSS process")
    p.add_argument("--rss-train-batch", type=int, default=2, help="peak RSS: training batch")
    p.add_argument("--rss-infer-batch", type=int, default=1, help="peak RSS: inference batch")
    p.add_argument("--skip-isolated", action="store_true", help="no fresh-process measurements")
    p.add_argument("--quick", action="store_true", help="tiny SAM at 64, few rounds: a smoke run")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: bench/results/)")
    args = p.parse_args(argv)
    if args.quick:
        args.variant, args.image_size = "tiny", 64
        args.train_batches, args.infer_batches = [1, 2], [1, 2]
        args.rounds, args.infer_rounds, args.warmup = 2, 2, 1
        args.load_repeats, args.rss_steps, args.mask_repeats = 1, 1, 1
    check_known(p, args.configs, wl.TRAIN_CONFIGS, "configs")
    args.out = default_output(args, "suite")
    return args


def measure_load(setup: wl.BenchSetup, repeats: int) -> list[dict]:
    """Checkpoint -> ready model, fresh interpreter each: SVD computed, SVD cached, merged."""
    rows: dict[str, list[float]] = {"svd_first": [], "svd_cached": [], "merged": []}
    for r in range(repeats):
        # Empty each time, so the SVD is computed; the first fills the cache later runs use.
        cache = setup.cache_dir if r == 0 else str(Path(setup.work_dir) / f"cache_load_{r}")
        for kind in rows:
            command = wl.child_command("load_child", setup, kind, cache)
            rows[kind].append(run_fresh(command)["seconds"])
    return [{"kind": kind, "samples_s": s, **summarise(s)} for kind, s in rows.items()]


def measure_memory(setup: wl.BenchSetup, args) -> list[dict]:
    """Peak RSS of every training and inference configuration at one batch size each (the
    targets'), each in a fresh interpreter."""
    rows = []
    batch = args.rss_train_batch
    for name in args.configs:
        result = run_fresh(wl.child_command("train_child", setup, name, batch, args.rss_steps))
        rows.append({"mode": "train", "config": name, "batch": batch, **result})
    batch = args.rss_infer_batch
    for name in wl.INFER_CONFIGS:
        result = run_fresh(wl.child_command("infer_child", setup, name, batch, 2))
        rows.append({"mode": "infer", "config": name, "batch": batch, **result})
    return rows


def measure_first_mask(setup: wl.BenchSetup, repeats: int) -> list[dict]:
    """Seconds from starting ``ssam predict`` on one image to its label map written, as a user
    waits: imports, reading (and on a first start hashing) the checkpoints, the SVD (or the
    cache), the real-size text tower, the first forward. ``first_start``: an empty cache each
    time; ``cached_start``: the same command again on the cache it filled."""
    folder = Path(setup.work_dir) / "first_mask"
    folder.mkdir()
    image = folder / "image.png"
    rng = np.random.default_rng(0)
    size = setup.image_size
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(image)
    model = wl.create_model(wl.model_config(setup, "ssam"))
    adapter = save_adapter(model, folder / "adapter.safetensors", labels=["polyp"])
    del model
    gc.collect()
    rows: dict[str, list[float]] = {"first_start": [], "cached_start": []}
    exits: dict[str, list[float]] = {"first_start": [], "cached_start": []}
    for r in range(repeats):
        env = dict(os.environ, SSAM_CACHE=str(folder / f"cache_{r}"))
        for kind in rows:
            out = folder / f"out_{r}_{kind}"
            command = [
                sys.executable, "-m", "ssam", "predict", str(image), "-o", str(out),
                "--adapter", str(adapter), "--sam-checkpoint", setup.checkpoint,
                "--clip-checkpoint", setup.clip_checkpoint, "--offline",
                "--threads", str(setup.threads), "--no-progress",
            ]  # fmt: skip
            start = time.time()
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            exited = time.time() - start
            if done.returncode != 0:
                raise RuntimeError(f"ssam predict failed: {done.stderr[-2000:]}")
            rows[kind].append((out / "image.png").stat().st_mtime - start)
            exits[kind].append(exited)
    return [
        {"kind": kind, "samples_s": s, "exit_samples_s": exits[kind], **summarise(s)}
        for kind, s in rows.items()
    ]


def _rows(times: dict[str, list[float]], batch: int) -> list[dict]:
    """Per configuration: median time, images/s, and against each baseline (``workloads.
    BASELINES``) the ratio of medians and the paired ratio: the median over rounds of (time /
    baseline's time in the same round). ``ratio``/``paired_ratio``: against the same layout."""
    rows = []
    for name, samples in times.items():
        stats = summarise(samples)
        row = {"config": name, "batch": batch, **stats,
               "images_per_s": batch / stats["median_s"], "samples_s": samples}  # fmt: skip
        for baseline, suffix in ((wl.SAME_LAYOUT, ""), (wl.STOCK, "_stock")):
            base = times.get(baseline)
            paired = [t / b for t, b in zip(samples, base, strict=True)] if base else None
            row["ratio" + suffix] = stats["median_s"] / statistics.median(base) if base else None
            row["paired_ratio" + suffix] = statistics.median(paired) if paired else None
        rows.append(row)
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
        rows += _rows(times, batch)
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
        infer_rows += _rows(times, batch)
        encoders = {
            f"encoder:{n}": wl.make_encoder_step(models[n], batch)
            for n in (*wl.BASELINES, "ssam_adapted")
        }
        work = {name: count_flops(step) for name, step in encoders.items()}
        tokens = batch * (setup.image_size // 16) ** 2
        width = models[wl.SAME_LAYOUT].image_encoder.patch_embed.proj.out_channels
        matmul = (tokens, width, 4 * width)  # the shape of the MLP's first layer
        a, b = torch.randn(matmul[:2]), torch.randn(matmul[1:])
        encoders["matmul"] = lambda a=a, b=b: torch.mm(a, b)
        times = time_interleaved(encoders, args.infer_rounds, args.warmup)
        work["matmul"] = 2 * matmul[0] * matmul[1] * matmul[2]
        for name, samples in times.items():
            median = statistics.median(samples)
            flops_rows.append(
                {
                    "config": name,
                    "batch": batch,
                    "gflop": work[name] / 1e9,
                    "median_s": median,
                    "gflops_per_s": work[name] / median / 1e9,
                    "shape": list(matmul) if name == "matmul" else None,
                }  # fmt: skip
            )
        print(f"  inference, batch {batch}: done", flush=True)
    big = measure_matmul_gflops(LARGE, LARGE, LARGE, args.infer_rounds)
    flops_rows.append(
        {"config": f"matmul {LARGE}^3", "batch": None, "gflops_per_s": statistics.median(big)}
    )
    return infer_rows, flops_rows


LARGE = 2048  # the large square matmul: this machine's float32 GEMM rate


def run_suite(args: argparse.Namespace, work_dir: Path, argv: list[str] | None = None) -> dict:
    torch.set_num_threads(args.threads)
    machine = describe_machine(args.threads)
    cache = work_dir / "cache"
    os.environ["SSAM_CACHE"] = str(cache)  # never the user's cache: random weights only
    checkpoint = wl.write_random_checkpoint(args.variant, work_dir)
    clip = wl.write_random_clip(work_dir)
    setup = wl.BenchSetup(
        args.variant, args.image_size, str(checkpoint), str(cache), args.threads, str(work_dir),
        str(clip),
    )  # fmt: skip
    results: dict = {
        "command": command_line("run_suite.py", argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine,
    }
    if not args.skip_isolated:
        print("load times (fresh processes) ...", flush=True)
        results["load"] = measure_load(setup, args.load_repeats)
        print("start to first mask (ssam predict) ...", flush=True)
        results["first_mask"] = measure_first_mask(setup, args.mask_repeats)
        print("peak RSS (fresh processes) ...", flush=True)
        results["memory"] = measure_memory(setup, args)
        save_partial(results, args.out)
    print("training steps (interleaved) ...", flush=True)
    results["training"], results["trainable"], results["adapter_bytes"] = measure_training(
        setup, args
    )
    save_partial(results, args.out)
    print("inference (interleaved) ...", flush=True)
    results["inference"], results["encoder_flops"] = measure_inference(setup, args)
    results["load_average_after"] = describe_machine(args.threads)["load_average"]
    results["targets"] = evaluate_targets(results)
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ssam-bench-") as tmp:
        results = run_suite(args, Path(tmp), argv)
    print(format_report(results))
    write_final(results, args.out)
    print(f"\nwritten {args.out}\ncommand: {results['command']}")
    return results


if __name__ == "__main__":
    main()
