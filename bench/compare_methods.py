"""Quality of the fine-tuning methods side by side: each trained the same number of steps with
the library's training loop (``ssam.train``) on a real dataset, then validation Dice against
trainable parameters, as a table, a JSON file and a plot.

    python bench/compare_methods.py            # tiny SAM (seeded random weights) at 128 on
                                               # kvasir-seg, 600 steps per method: ~10 min CPU
    python bench/compare_methods.py --quick    # a smoke run: 12 images, 4 steps per method
    python bench/compare_methods.py --variant vit_b --sam-checkpoint sam_vit_b_01ec64.pth \\
        --text-encoder clip_vit_b32 --clip-checkpoint ViT-B-32.pt --image-size 256 \\
        --steps 2000 --batch-size 8 --lr 1e-4           # the real comparison (wants a GPU)

Every method shares the data, split, augmentation, loss (focal + Dice), label-name prompt,
optimiser (AdamW) and seed; only the trainable set (``ssam.tuning.methods``) differs. Without a SAM
checkpoint the base is a seeded random ``tiny`` SAM: the comparison then measures what each
trainable set can fit from scratch, not how well it transfers pretrained features.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from ssam.cli.params import compute_parameter_report
from ssam.config.data import DatasetConfig, SplitConfig
from ssam.config.model import ModelConfig
from ssam.config.train import OptimConfig, TrainConfig
from ssam.train import train
from ssam.train.log import read_log
from ssam.tuning.methods import METHODS
from summary import check_known, default_output, format_table, write_results
from workloads import write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (ROOT / ".." / "shared" / "data" / "kvasir-seg").resolve()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="images/ + masks/ folder")
    p.add_argument("--label", default="polyp", help="the label name of the masks")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--variant", default="tiny")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--sam-checkpoint", type=Path, default=None, help="default: seeded random")
    p.add_argument("--text-encoder", default="tiny")
    p.add_argument("--clip-checkpoint", type=Path, default=None)
    p.add_argument("--steps", type=int, default=600, help="optimiser steps per method")
    p.add_argument("--evals", type=int, default=3, help="validations (epochs) over the steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, every method")
    p.add_argument("--limit", type=int, default=None, help="use only the first N image pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--quick", action="store_true", help="12 images at 64, 4 steps: smoke run")
    p.add_argument("--out", type=Path, default=None, help="JSON (plot next to it, .png)")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.steps, args.evals, args.batch_size, args.limit = 64, 4, 2, 2, 12
    if args.steps % args.evals:
        p.error(f"--steps ({args.steps}) must be a multiple of --evals ({args.evals})")
    check_known(p, args.methods, METHODS, "methods")
    args.out = default_output(args, "compare_methods")
    return args


def link_subset(data: Path, limit: int, folder: Path) -> Path:
    """A folder with the first ``limit`` image/mask pairs of ``data`` (symbolic links)."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    masks = {p.stem: p for p in (data / "masks").iterdir()}
    images = sorted(p for p in (data / "images").iterdir() if p.stem in masks)[:limit]
    for image in images:
        (folder / "images" / image.name).symlink_to(image)
        mask = masks[image.stem]
        (folder / "masks" / mask.name).symlink_to(mask)
    return folder


def train_config(args, method: str, data: Path, checkpoint: Path, out: Path) -> TrainConfig:
    """The shared recipe with ``method``'s trainable set; one validation per epoch."""
    steps_per_epoch = args.steps // args.evals
    model = ModelConfig(
        variant=args.variant,
        image_size=args.image_size,
        sam_checkpoint=checkpoint,
        text_encoder=args.text_encoder,
        clip_checkpoint=args.clip_checkpoint,
        method=method,
        allow_download=False,
    )
    dataset = DatasetConfig(
        path=data, layout="folder", label=args.label, split=SplitConfig(seed=args.seed)
    )
    return TrainConfig(
        model=model,
        datasets=[dataset],
        output_dir=out / method,
        epochs=args.evals,
        batch_size=args.batch_size,
        samples_per_epoch=steps_per_epoch * args.batch_size,
        optim=OptimConfig(lr=args.lr, step_size=10**6),  # constant lr over these few epochs
        seed=args.seed,
        device="cpu",
        tensorboard=False,
        progress=False,
        threads=torch.get_num_threads(),  # the count this benchmark set
    )


def run_method(config: TrainConfig) -> dict:
    """Train, then read the validation curve back from the run's log."""
    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start
    epochs = [r for r in read_log(result.run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    curve = [(r["step"], r["val_dice"]) for r in epochs if r.get("val_dice") is not None]
    trained = [r["val_dice"] for r in epochs if r["epoch"] >= 0 and r.get("val_dice") is not None]
    untrained = [r["val_dice"] for r in epochs if r["epoch"] < 0]
    report = compute_parameter_report(config.model)
    best = result.best_adapter
    return {
        "trainable": report["trainable"],
        "share_percent": report["share_percent"],
        "val_dice_curve": curve,
        "val_dice_final": curve[-1][1] if curve else None,
        "val_dice_best": max(trained) if trained else None,
        "val_dice_untrained": untrained[0] if untrained else None,
        "n_val": epochs[-1].get("val_n") if epochs else None,
        "train_seconds": seconds,
        "adapter_bytes": best.stat().st_size if best else result.last_adapter.stat().st_size,
    }


def plot(results: dict, path: Path) -> None:
    """Validation Dice over steps per method, and final Dice against trainable parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, scatter) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results["methods"].items():
        steps, dice = zip(*r["val_dice_curve"], strict=True) if r["val_dice_curve"] else ((), ())
        curves.plot(steps, dice, marker="o", label=name)
        scatter.scatter(r["trainable"], r["val_dice_final"] or 0.0)
        scatter.annotate(name, (r["trainable"], r["val_dice_final"] or 0.0))
    curves.set(xlabel="optimiser step", ylabel="validation Dice", title="validation Dice")
    curves.legend()
    scatter.set(xscale="log", xlabel="trainable parameters", ylabel="final validation Dice")
    s = results["settings"]
    data = Path(s["data"]).name
    fig.suptitle(f"SAM {s['variant']} at {s['image_size']}, {s['steps']} steps, {data}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_results(results: dict) -> str:
    rows = [
        (name, f"{r['trainable']:,}", f"{r['share_percent']:.2f}", _f(r["val_dice_final"]),
         _f(r["val_dice_best"]), f"{r['train_seconds']:.1f}", f"{r['adapter_bytes'] / 2**20:.2f}")
        for name, r in results["methods"].items()
    ]  # fmt: skip
    headers = ("method", "trainable", "% of SAM", "val Dice", "best Dice", "train s", "adapter MiB")
    return format_table(headers, rows)


def _f(value: float | None) -> str | None:
    return None if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results: dict = {"command": "python bench/compare_methods.py " + shlex.join(sys.argv[1:]),
                     "settings": settings, "methods": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ssam-compare-") as tmp:
        work = Path(tmp)
        data = link_subset(args.data, args.limit, work / "data") if args.limit else args.data
        checkpoint = args.sam_checkpoint or write_random_checkpoint(args.variant, work, args.seed)
        for method in args.methods:
            config = train_config(args, method, data, checkpoint, work / "runs")
            results["methods"][method] = run_method(config)
            print(f"  {method}: val Dice {results['methods'][method]['val_dice_final']}")
    print(format_results(results))
    write_results(results, args.out)
    plot(results, args.out.with_suffix(".png"))
    print(f"\nwritten {args.out} and {args.out.with_suffix('.png')}\ncommand: {results['command']}")
    return results


if __name__ == "__main__":
    main()
