"""Inference backends: PyTorch eager and compiled vs ONNX Runtime float32 and int8 weights, per
image, against the float32 floor; and the Dice each backend changes on real cases.

    python bench/backends.py [--quick] [--rounds 5] [--variant vit_b] [--size 256] [--out FILE]
    python bench/backends.py --adapter RUN/best.safetensors (--config CFG | --data DIR --label
        NAME) [--split val] [--out FILE]

Speed (default): ViT-B at 256 (``--variant``, ``--size``: e.g. litemedsam), seeded random base
in the official layout, an adapter whose trainable tensors all moved a little, the tiny text
tower (speed does not depend on values). "torch" is the predictor as it runs (the encoder's
inference speed-ups applied: TinyViT's BatchNorms folded, channels-last convolutions),
"torch-plain" the same model without them, "torch-compile" the same with the adapter merged and
the encoder compiled by TorchInductor (its compile seconds reported, the thread counts' compiles
in the warm-up round).
Time per image of ``SSAMPredictor.predict_logits`` (encoder once per batch, decoder once per
image for one label) for each backend at batch 1 and 8, at 1 and 2 threads, interleaved
(``measure.time_interleaved``); medians, and per backend the median of the per-round ratios to
torch at the same batch and threads ("paired"). The float32 floor: the model's FLOPs
(``measure.count_flops``, encoder + decoder) over a 2048^3 float32 matmul's GFLOP/s at the
same thread count, timed in the same interleaved rounds (so under the same load), i.e. the
time if every operation ran at the speed of the best-tuned float32 kernel; below 1.0 in "of
floor" means beating it. ``--profile`` adds the top operators of one image through torch and
torch-compile at 2 threads. ``--quick``: tiny SAM at 64 (a smoke test). Writes
``bench/results/backends_<variant>_<size>.json`` (or ``--out``).

Dice (``--adapter``): ``ssam.evaluation.evaluate.evaluate`` on the same cases with each
backend; per label the mean Dice and its change from torch. Decision rule: onnx-int8 ships
only if no label's mean Dice drops by more than ``INT8_MAX_DICE_DROP`` (absolute).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from measure import count_flops, describe_machine, time_interleaved, top_operators
from ssam.inference.backends import BACKENDS, OnnxRuntimeModel, use_backend
from ssam.inference.predictor import SSAMPredictor
from summary import RESULTS, command_line, format_table, write_results
from workloads import write_moved_adapter

INT8_MAX_DICE_DROP = 0.01
BATCHES = (1, 8)
THREADS = (1, 2)
MATMUL = 2048  # the floor's float32 matmul: MATMUL^3, about 17 GFLOP


def build_predictors(variant: str, size: int, folder: Path) -> tuple[dict, Path]:
    """Predictors over a random base + an adapter with every trainable tensor moved a little
    (so merging changes weights), by row name: "torch" (eager; the ONNX rows share it and swap
    its runtime), "torch-plain" (without the encoder's inference speed-ups), "torch-compile"
    (its own, compiled in place); and the adapter's path (the export is keyed by it)."""
    base, adapter = write_moved_adapter(variant, size, folder, ["polyp"])
    eager = SSAMPredictor.from_adapter(adapter, base)
    predictors = {b: eager for b in BACKENDS}
    predictors["torch-compile"] = SSAMPredictor.from_adapter(adapter, base)
    predictors["torch-plain"] = SSAMPredictor.from_adapter(adapter, base, prepare_encoder=False)
    return predictors, adapter


def prepare_runtimes(predictors: dict, adapter: Path) -> tuple[dict, dict]:
    """Sessions per (backend, threads) (torch rows: None), and each backend's first-use
    seconds: the ONNX exports, the compile at the current thread count."""
    runtimes: dict[tuple[str, int], OnnxRuntimeModel | None] = {}
    first_use_s = {}
    for backend, predictor in predictors.items():
        runtimes.update({(backend, t): None for t in THREADS})
        if backend in ("torch", "torch-plain"):
            continue
        start = time.perf_counter()
        use_backend(predictor, backend, adapter)
        first_use_s[backend] = time.perf_counter() - start
        if predictor.runtime is not None:
            folder = predictor.runtime.folder
            runtimes.update({(backend, t): OnnxRuntimeModel(folder, threads=t) for t in THREADS})
            predictor.runtime = None
    return runtimes, first_use_s


def count_model_flops(predictor: SSAMPredictor) -> dict:
    """FLOPs per image: the encoder, and the decoder for one label."""
    size = predictor.image_size
    image = torch.randn(1, 3, size, size)
    tokens = predictor.label_tokens(["polyp"])
    with torch.inference_mode():
        embedding = predictor.encode(image)[0]
        encoder = count_flops(lambda: predictor.encode(image))
        decoder = count_flops(lambda: predictor.decode_logits(embedding, tokens))
    return {"encoder_flops": encoder, "decoder_flops": decoder}


def profile_torch(predictors: dict) -> dict:
    """Top operators of one image's ``predict_logits`` at 2 threads, eager and compiled."""
    torch.set_num_threads(2)
    out = {}
    for backend in ("torch", "torch-compile"):
        step = make_step(predictors[backend], None, 1, 2)
        step()  # warm
        out[backend] = top_operators(step)
    return out


def make_step(predictor, runtime, batch: int, threads: int):
    """One ``predict_logits`` call on ``batch`` fixed random images with ``runtime``."""
    size = predictor.image_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    tokens = predictor.label_tokens(["polyp"])

    def step() -> None:
        torch.set_num_threads(threads)
        predictor.runtime = runtime
        predictor.predict_logits(images, tokens)

    return step


def make_matmul(threads: int):
    """One float32 (2048 x 2048) @ (2048 x 2048) at ``threads`` torch threads."""
    a, b = torch.randn(MATMUL, MATMUL), torch.randn(MATMUL, MATMUL)

    def step() -> None:
        torch.set_num_threads(threads)
        torch.mm(a, b)

    return step


def measure_speed(predictors: dict, runtimes, flops: dict, rounds: int) -> tuple[list[dict], dict]:
    """Rows per (backend, batch, threads): median ms per image, paired ratio to torch, and the
    ratio to the float32 floor; the floor's matmul runs in the same interleaved rounds, so it
    is measured under the same load. Also returns the matmul GFLOP/s per thread count."""
    names = {
        f"{b}|{n}|{t}": make_step(predictor, runtimes[(b, t)], n, t)
        for n in BATCHES
        for t in THREADS
        for b, predictor in predictors.items()
    }
    names.update({f"matmul|{t}": make_matmul(t) for t in THREADS})
    times = time_interleaved(names, rounds, warmup=1)
    gflops = {
        str(t): 2 * MATMUL**3 / statistics.median(times.pop(f"matmul|{t}")) / 1e9 for t in THREADS
    }
    total = flops["encoder_flops"] + flops["decoder_flops"]
    rows = []
    for name, samples in times.items():
        backend, batch, threads = name.split("|")
        batch = int(batch)
        torch_samples = times[f"torch|{batch}|{threads}"]
        paired = [s / r for s, r in zip(samples, torch_samples, strict=True)]
        floor_ms = total / (gflops[threads] * 1e9) * 1e3
        ms = statistics.median(samples) / batch * 1e3
        rows.append(
            {
                "backend": backend,
                "batch": batch,
                "threads": int(threads),
                "ms_per_image": ms,
                "samples_s": samples,
                "paired_ratio_to_torch": statistics.median(paired),
                "floor_ms_per_image": floor_ms,
                "ratio_to_floor": ms / floor_ms,
            }
        )
    return rows, gflops


def run_speed(args: argparse.Namespace) -> dict:
    variant, size = ("tiny", 64) if args.quick else (args.variant, args.size)
    with tempfile.TemporaryDirectory() as work:
        predictors, adapter = build_predictors(variant, size, Path(work))
        runtimes, first_use_s = prepare_runtimes(predictors, adapter)
        floor = count_model_flops(predictors["torch-plain"])
        rows, floor["matmul_gflops"] = measure_speed(predictors, runtimes, floor, args.rounds)
        profiles = profile_torch(predictors) if args.profile else None
    table = [
        [
            r["backend"],
            r["batch"],
            r["threads"],
            f"{r['ms_per_image']:.1f}",
            f"{r['paired_ratio_to_torch']:.2f}",
            f"{r['floor_ms_per_image']:.1f}",
            f"{r['ratio_to_floor']:.2f}",
        ]
        for r in sorted(rows, key=lambda r: (r["batch"], r["threads"], r["backend"]))
    ]
    headers = ["backend", "batch", "threads", "ms/image", "vs torch", "floor ms", "of floor"]
    gflop = (floor["encoder_flops"] + floor["decoder_flops"]) / 1e9
    print(f"predict_logits, {variant} at {size}, 1 label: {gflop:.2f} GFLOP per image")
    print(f"(medians of {args.rounds} interleaved rounds; vs torch: paired per-round ratio)")
    print(format_table(headers, table))
    rates = ", ".join(f"{t} thread(s) {g:.0f}" for t, g in floor["matmul_gflops"].items())
    print(f"float32 floor: {MATMUL}^3 matmul GFLOP/s, {rates}")
    print("first use: " + ", ".join(f"{k} {v:.1f} s" for k, v in first_use_s.items()))
    return {
        "variant": variant,
        "image_size": size,
        "rounds": args.rounds,
        "floor": floor,
        "first_use_s": first_use_s,
        "rows": rows,
        **({"profile": profiles} if profiles else {}),
        "default_out": RESULTS / f"backends_{variant}_{size}.json",
    }


def compare_dice(train_config, adapter: Path, split: str) -> dict:
    """Per backend, ``evaluate`` on ``split``; per label the mean Dice, its change from torch
    (negative: worse), the largest per-case change, and the verdict of the decision rule."""
    from ssam.evaluation.evaluate import evaluate

    scores: dict[str, dict[tuple[str, str], float]] = {}
    for backend in BACKENDS:
        with tempfile.TemporaryDirectory() as work:
            result = evaluate(
                train_config, adapter, split, Path(work), pictures=False, backend=backend
            )
        scores[backend] = {(row.case_id, row.label): row.dice for row in result.table.rows}
    labels = sorted({label for _, label in scores["torch"]})

    def mean(backend: str, label: str) -> float:
        return statistics.fmean(d for (_, k), d in scores[backend].items() if k == label)

    mean_dice = {b: {label: mean(b, label) for label in labels} for b in BACKENDS}
    change = {
        b: {label: mean_dice[b][label] - mean_dice["torch"][label] for label in labels}
        for b in BACKENDS
        if b != "torch"
    }
    case_change = {
        b: max(abs(d - scores["torch"][key]) for key, d in scores[b].items())
        for b in BACKENDS
        if b != "torch"
    }
    worst = min(change.get("onnx-int8", {"": 0.0}).values())
    return {
        "mean_dice": mean_dice,
        "dice_change": change,
        "max_case_abs_change": case_change,
        "n_cases": result.n_cases,
        "int8_worst_change": worst,
        "int8_ships": worst >= -INT8_MAX_DICE_DROP,
        "rule": f"ship onnx-int8 only if no label's mean Dice drops by > {INT8_MAX_DICE_DROP}",
    }


def run_dice(args: argparse.Namespace) -> dict:
    from ssam.cli.common import build_config

    labels = (args.label,) if args.label else None
    config = build_config(args.config, args.data, labels, [], offline=True)
    result = compare_dice(config, args.adapter, args.split)
    for backend, change in result["dice_change"].items():
        for label, delta in change.items():
            dice = result["mean_dice"][backend][label]
            torch_dice = result["mean_dice"]["torch"][label]
            print(f"{label}: torch {torch_dice:.4f}, {backend} {dice:.4f} ({delta:+.4f})")
    print(f"{result['n_cases']} cases; {result['rule']}: {result['int8_ships']}")
    name = (args.data or args.config).resolve().name
    return {
        **result,
        "adapter": str(args.adapter),
        "split": args.split,
        "default_out": RESULTS / f"backends_dice_{name}.json",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny SAM at 64 (smoke run)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variant", default="vit_b", help="base variant (speed runs)")
    parser.add_argument("--size", type=int, default=256, help="input size (speed runs)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--profile", action="store_true", help="top operators, one image")
    parser.add_argument("--adapter", type=Path, help="measure Dice per backend instead")
    parser.add_argument("--config", type=Path, help="training config naming the data")
    parser.add_argument("--data", type=Path, help="one dataset folder instead of --config")
    parser.add_argument("--label", help="the label of a folder dataset")
    parser.add_argument("--split", default="val")
    args = parser.parse_args(argv)
    result = run_dice(args) if args.adapter else run_speed(args)
    out = args.out or result.pop("default_out")
    result.pop("default_out", None)
    result = {
        "command": command_line("backends.py", argv),
        "machine": describe_machine(torch.get_num_threads()),
        **result,
    }
    write_results(result, out)
    print(f"written: {out}")
    return result


if __name__ == "__main__":
    main()
