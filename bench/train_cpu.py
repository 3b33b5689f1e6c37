"""Training on a CPU, LiteMedSAM beside ViT-B: seconds per image of a batch-8 step, where the step
goes, how far it is from the machine's training floor, peak RSS, at each input size; and the
time from starting ``ssam predict`` to its first mask on the default base.

    python bench/train_cpu.py                  # LiteMedSAM 256/192/160/128, ViT-B 256: ~20 min
    python bench/train_cpu.py --quick          # tiny SAM at 64, batch 2: a smoke run (tests)
    python bench/train_cpu.py --report bench/results/train_cpu.json   # its table again
    python bench/train_cpu.py --compile --sizes 256 --out bench/results/train_cpu_compile.json

Every run (variant, size, method, activation checkpointing) is a fresh interpreter, as a user's
``ssam train`` starts: imports, the base (LiteMedSAM: the package's real weights; ViT-B: seeded
random weights in the official layout, speed does not depend on values), the real-size CLIP text
tower (random weights), then ``--warmup`` untimed and ``--steps`` timed optimiser steps of batch
``--batch``. A step is what ``ssam.train`` does: the batch in micro-batches of the size its
``micro_batch_size: auto`` picks on this machine (``loop.choose_micro_batch``), forward + focal/Dice
loss + backward per micro-batch, one AdamW step. Reported per image:

* ``forward``, ``backward``, ``optimizer``: the step's parts, medians over the timed steps;
  ``svd_weights``: the time to rebuild every S-SAM layer's W' = U diag(s') Vh once (part of
  ``forward``; S-SAM only);
* the training floor: forward + backward FLOPs per image of one micro-batch, counted by
  ``torch.utils.flop_counter`` (a multiply-add counts 2; ``measure.flop_counter``: grouped
  convolutions' weight gradients counted right), at the rate of a 2048^3 float32 matmul timed
  in the same process; ``floor_ratio`` = seconds per image / floor: no float32 implementation
  of the same computation goes below 1;
* peak RSS of the process (``ru_maxrss``), so the imports and the text tower count;
* with ``--profile``: the top operators of one micro-batch by self CPU time, with their shapes;
* with ``--compile``: LiteMedSAM S-SAM at the first size only, eager and with its image encoder
  compiled by TorchInductor (``torch.compile``: forward and backward graphs), and the seconds of
  the compiled run's warm-up steps (``warmup_s``: the compile, with what TorchInductor's on-disk
  cache held, and those steps).

Writes ``bench/results/train_cpu.json`` (or ``--out``) with the command and the machine; prints
one table.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import workloads as wl
from measure import (
    describe_machine,
    flop_counter,
    measure_matmul_gflops,
    peak_rss_mib,
    run_fresh,
    top_operators,
)
from summary import RESULTS, command_line, save_partial, write_final

LARGE = 2048  # the matmul whose rate is the floor


@dataclass(frozen=True)
class Run:
    """One fresh-process measurement."""

    variant: str
    size: int
    method: str
    checkpointing: bool
    batch: int
    steps: int
    warmup: int
    threads: int
    checkpoint: str | None  # None: the variant's own weights (LiteMedSAM's package file)
    clip_checkpoint: str
    profile: bool = False
    passes: int | None = None  # images per pass; None: as ``ssam train`` picks here
    compiled: bool = False  # the image encoder through torch.compile


def default_runs(args: argparse.Namespace, clip: str, vit_b: str | None) -> list[Run]:
    """LiteMedSAM S-SAM at each size, at 256 also checkpointed and fully fine-tuned; ViT-B S-SAM."""
    common = {"batch": args.batch, "steps": args.steps, "warmup": args.warmup,
              "threads": args.threads, "clip_checkpoint": clip, "passes": args.passes}  # fmt: skip
    if args.quick:
        base = wl.write_random_checkpoint("tiny", Path(clip).parent)
        return [
            Run("tiny", 64, "ssam", False, checkpoint=str(base), profile=True, **common),
            Run("tiny", 64, "full", False, checkpoint=str(base), **common),
        ]
    first = args.sizes[0]
    lite = {**common, "checkpoint": None}  # the package's real weights
    if args.compile:
        return [Run("litemedsam", first, "ssam", False, compiled=c, **lite) for c in (False, True)]
    runs = [Run("litemedsam", first, "ssam", False, profile=args.profile, **lite)]
    runs += [Run("litemedsam", first, "ssam", True, **lite)]
    runs += [Run("litemedsam", first, "full", False, **lite)]
    runs += [Run("litemedsam", s, "ssam", False, **lite) for s in args.sizes[1:]]
    if vit_b:
        runs.append(Run("vit_b", first, "ssam", False, checkpoint=vit_b, **common))
    return runs


# ---- the child: one run in a fresh interpreter ----


def build(run: Run):
    """The model as ``ssam train`` builds it, and the micro-batch size it would use here."""
    from ssam.config.train import TrainConfig
    from ssam.factory import create_model
    from ssam.train.loop import CHECKPOINTED_STAGES, choose_micro_batch

    model_config = wl.ModelConfig(
        variant=run.variant, image_size=run.size, method=run.method,
        sam_checkpoint=run.checkpoint, clip_checkpoint=run.clip_checkpoint,
        text_encoder=wl.TEXT_ENCODER, allow_download=False,
    )  # fmt: skip
    config = TrainConfig(
        model=model_config, batch_size=run.batch, activation_checkpointing=run.checkpointing,
        datasets=[{"path": "unused", "layout": "folder", "label": "x"}],
    )  # fmt: skip
    model = create_model(model_config)
    if run.checkpointing:
        model.image_encoder.checkpoint_stages(CHECKPOINTED_STAGES)
    micro, _ = choose_micro_batch(config, torch.device("cpu"))
    return model, min(run.batch, run.passes or micro)


def time_svd_weights(model) -> float:
    """Seconds to rebuild every S-SAM layer's W' once, with gradients (as a training forward)."""
    from ssam.tuning.svd import compute_adapted_weight, iter_svd_layers

    layers = [layer for _, layer in iter_svd_layers(model)]
    if not layers:
        return 0.0
    start = time.perf_counter()
    for layer in layers:
        compute_adapted_weight(layer.factors(), layer.svd_scale, layer.svd_shift)
    return time.perf_counter() - start


def child(run: Run) -> dict:
    from ssam.train.batches import chunk_rows
    from ssam.train.losses import segmentation_loss

    torch.set_num_threads(run.threads)
    model, micro = build(run)
    optimizer = wl.make_optimizer(model)
    images, features, target = wl.make_inputs(model, run.batch)
    chunks = chunk_rows(run.batch, micro)
    model.train()

    def step() -> dict:
        parts = {"forward": 0.0, "backward": 0.0}
        optimizer.zero_grad(set_to_none=True)
        for rows in chunks:
            start = time.perf_counter()
            loss = segmentation_loss(model(images[rows], features[rows]), target[rows])
            middle = time.perf_counter()
            (loss * (rows.stop - rows.start) / run.batch).backward()
            parts["forward"] += middle - start
            parts["backward"] += time.perf_counter() - middle
        start = time.perf_counter()
        optimizer.step()
        parts["optimizer"] = time.perf_counter() - start
        return parts

    encoder = model.image_encoder
    if run.compiled:
        model.image_encoder = torch.compile(encoder)
    start = time.perf_counter()
    for _ in range(run.warmup):
        step()
    first_steps_s = time.perf_counter() - start
    rates = measure_matmul_gflops(LARGE, LARGE, LARGE, 3)
    gc.collect()
    gc.disable()
    samples = [step() for _ in range(run.steps)]
    gc.enable()
    rates += measure_matmul_gflops(LARGE, LARGE, LARGE, 3)
    model.image_encoder = encoder  # FLOPs counted eagerly: the same operations
    first = chunks[0]
    n = first.stop - first.start
    with flop_counter() as counter:
        loss = segmentation_loss(model(images[first], features[first]), target[first])
    forward_flops = counter.get_total_flops() / n
    with flop_counter() as counter:
        loss.backward()
    backward_flops = counter.get_total_flops() / n
    optimizer.zero_grad(set_to_none=True)
    with torch.enable_grad():
        svd = statistics.median(time_svd_weights(model) for _ in range(3))
    per_image = {k: statistics.median(s[k] for s in samples) / run.batch for k in samples[0]}
    result = {
        **asdict(run),
        "micro_batch": micro,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "seconds_per_image": statistics.median(sum(s.values()) for s in samples) / run.batch,
        "parts_per_image": {**per_image, "svd_weights": svd / run.batch},
        "step_samples_s": [sum(s.values()) for s in samples],
        "forward_gflop_per_image": forward_flops / 1e9,
        "backward_gflop_per_image": backward_flops / 1e9,
        "matmul_gflops_per_s": statistics.median(rates),
        "peak_rss_mib": peak_rss_mib(),
    }
    result.update(training_floor(result))
    if run.compiled:
        result["warmup_s"] = first_steps_s  # the compile and the warm-up steps
    if run.profile:
        pass_images, pass_features, pass_target = images[first], features[first], target[first]
        result["profile"] = top_operators(
            lambda: segmentation_loss(model(pass_images, pass_features), pass_target).backward()
        )
    return result


def training_floor(run: dict) -> dict:
    """Seconds per image at the matmul rate (forward + backward FLOPs), and the measured
    time's ratio to it."""
    flops = run["forward_gflop_per_image"] + run["backward_gflop_per_image"]
    floor = flops / run["matmul_gflops_per_s"]
    return {"floor_s_per_image": floor, "floor_ratio": run["seconds_per_image"] / floor}


# ---- the parent ----


def measure_first_mask(work: Path, threads: int, repeats: int, size: int) -> list[dict]:
    """``ssam predict`` start to first mask on LiteMedSAM's real weights (``run_suite``)."""
    from run_suite import measure_first_mask as first_mask
    from ssam.sam.variants import get_sam_spec
    from ssam.weights import locate_packaged

    base = locate_packaged(get_sam_spec("litemedsam").weights, "LiteMedSAM")
    clip = wl.write_random_clip(work)
    setup = wl.BenchSetup("litemedsam", size, str(base), str(work / "cache"), threads,
                          str(work), str(clip))  # fmt: skip
    return first_mask(setup, repeats)


def format_table(results: dict) -> str:
    lines = [
        "| base | size | method | ckpt | micro | s/image | forward | backward | optimizer "
        "| W' rebuild | floor s | floor ratio | peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        p = r["parts_per_image"]
        lines.append(
            f"| {r['variant']} | {r['size']} | {r['method']}{' compiled' if r.get('compiled') else ''}"
            f" | {'yes' if r['checkpointing'] else 'no'}"
            f" | {r['micro_batch']} | {r['seconds_per_image']:.2f} | {p['forward']:.2f}"
            f" | {p['backward']:.2f} | {p['optimizer']:.3f} | {p['svd_weights']:.3f}"
            f" | {r['floor_s_per_image']:.2f} | {r['floor_ratio']:.2f}"
            f" | {r['peak_rss_mib'] / 1024:.1f} |"
        )
    for r in results["runs"]:
        if "warmup_s" in r:
            lines.append(f"compiled: warm-up steps (the compile included) {r['warmup_s']:.0f} s")
    for row in results.get("first_mask", []):
        lines.append(f"ssam predict, {row['kind']}: first mask after {row['median_s']:.1f} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 192, 160, 128])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="timed optimiser steps per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-vit-b", action="store_true", help="LiteMedSAM only")
    p.add_argument("--passes", type=int, default=None, help="images per pass (default: auto)")
    p.add_argument("--mask-repeats", type=int, default=2, help="`ssam predict` first-mask runs")
    p.add_argument("--profile", action="store_true", help="top operators of the first run")
    p.add_argument("--compile", action="store_true", help="S-SAM eager vs compiled encoder")
    p.add_argument("--quick", action="store_true", help="tiny SAM at 64, batch 2: a smoke run")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--report", type=Path, default=None, help="a results JSON: print its table")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup, args.mask_repeats = 2, 1, 0, 0
    if args.compile:
        args.warmup, args.mask_repeats = max(args.warmup, 1), 0
    args.out = args.out or RESULTS / ("train_cpu_quick.json" if args.quick else "train_cpu.json")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.report is not None:
        results = json.loads(args.report.read_text())
        print(format_table(results))
        return results
    results: dict = {
        "command": command_line("train_cpu.py", argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": describe_machine(args.threads),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="ssam-train-cpu-") as tmp:
        work = Path(tmp)
        clip = str(wl.write_random_clip(work))
        vit_b = None
        if not (args.quick or args.no_vit_b or args.compile):
            vit_b = str(wl.write_random_checkpoint("vit_b", work))
        for run in default_runs(args, clip, vit_b):
            what = f"{run.variant} {run.size} {run.method} ckpt={run.checkpointing}"
            print(f"{what}{' compiled' if run.compiled else ''} ...", flush=True)
            command = [sys.executable, "-m", "train_cpu", "child", json.dumps(asdict(run))]
            results["runs"].append(run_fresh(command))
            save_partial(results, args.out)
        if args.mask_repeats:
            print("ssam predict, start to first mask ...", flush=True)
            sub = work / "predict"
            sub.mkdir()
            results["first_mask"] = measure_first_mask(sub, args.threads, args.mask_repeats, 256)
    results["load_average_after"] = describe_machine(args.threads)["load_average"]
    print(format_table(results))
    write_final(results, args.out)
    print(f"\nwritten {args.out}")
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        print(json.dumps(child(Run(**json.loads(sys.argv[2])))))
    else:
        main()
