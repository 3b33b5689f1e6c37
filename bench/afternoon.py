"""A user's afternoon on a CPU: ``ssam train`` on a 300-image 2D dataset for 5 epochs on the
default base (LiteMedSAM), started as a user starts it, timed from launch to exit, then the best
adapter scored on the run's own validation split at the original resolution.

    python bench/afternoon.py                        # Kvasir-SEG's first 300 pairs, 160 px: ~30 min
    python bench/afternoon.py --size 256 --images 100

The command is ``ssam train --data SUBSET --label polyp --epochs 5 --batch-size 8 --set
model.image_size=SIZE --set optim.lr=LR`` in a fresh process (its peak RSS from ``os.wait4``); its
own split (seeded, a fifth held out), micro-batches, validation every epoch and adapters as
``ssam train`` makes them. Writes ``bench/results/afternoon_litemedsam_<size>.json`` (or
``--out``) with the command, the machine, the wall time, the time per epoch from the run's log,
validation Dice per epoch and the scored Dice/HD95.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare_methods import DEFAULT_DATA, link_subset
from measure import describe_machine
from summary import RESULTS, command_line, write_results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder-layout dataset")
    p.add_argument("--label", default="polyp")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3, help="S-SAM's LR on LiteMedSAM (bench grid)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="20 images at 64 px, 1 epoch")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.size, args.epochs, args.batch = 20, 64, 1, 4
    tag = "quick" if args.quick else f"litemedsam_{args.size}"
    args.out = args.out or RESULTS / f"afternoon_{tag}.json"
    return args


def train_command(args: argparse.Namespace, data: Path, run_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "ssam", "train", "--data", str(data), "--label", args.label,
        "-o", str(run_dir), "--epochs", str(args.epochs), "--batch-size", str(args.batch),
        "--offline", "--threads", str(args.threads),
        "--set", f"model.image_size={args.size}", "--set", f"optim.lr={args.lr}",
        "--set", "progress=false",
    ]  # fmt: skip


def run_user_command(command: list[str], log_path: Path) -> dict:
    """Run ``command`` as a user's process: wall seconds to exit and its peak RSS."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    start = time.time()
    with open(log_path, "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.time() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{shlex.join(command[:4])} failed:\n{log_path.read_text()[-3000:]}")
    return {"wall_seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024}


def read_run(run_dir: Path) -> dict:
    """Split sizes, seconds per epoch (training and its validation) and validation Dice."""
    from ssam.train.log import read_log

    log = read_log(run_dir / "metrics.jsonl")
    split = next(r for r in log if r["kind"] == "split")
    epochs = [r for r in log if r["kind"] == "epoch" and r["epoch"] >= 0]
    times = [split["time"]] + [r["time"] for r in epochs]
    return {
        "train_cases": split["train"]["cases"],
        "val_cases": split["val"]["cases"],
        "epoch_seconds": [b - a for a, b in zip(times, times[1:], strict=False)],
        "val_dice": [r.get("val_dice") for r in epochs],
    }


def score(run_dir: Path, work: Path) -> dict:
    """The best adapter on the run's validation split, per case at the original resolution."""
    from ssam.config.train import load_train_config
    from ssam.evaluation.evaluate import evaluate

    config = load_train_config(run_dir / "config.yaml")
    adapter = run_dir / "best.safetensors"
    if not adapter.exists():
        adapter = run_dir / "last.safetensors"
    summary = evaluate(config, adapter, "val", work / "eval", pictures=False).table.summary()
    return {name: {"dice": s["dice"]["mean"], "hd95": s["hd95"]["mean"]}
            for name, s in summary["labels"].items()}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results: dict = {
        "command": command_line("afternoon.py", argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": describe_machine(args.threads),
        "recipe": {k: v for k, v in vars(args).items() if k not in ("out", "data", "quick")},
    }
    with tempfile.TemporaryDirectory(prefix="ssam-afternoon-") as tmp:
        work = Path(tmp)
        data = link_subset(args.data, args.images, work / "data")
        run_dir = work / "run"
        command = train_command(args, data, run_dir)
        results["train_command"] = shlex.join(["ssam", *command[3:]])
        print(f"{results['train_command']} ...", flush=True)
        results.update(run_user_command(command, work / "train.log"))
        results.update(read_run(run_dir))
        results["scores"] = score(run_dir, work)
    minutes = results["wall_seconds"] / 60
    print(
        f"{args.images} images ({results['train_cases']} train / {results['val_cases']} val), "
        f"{args.epochs} epochs at {args.size} px: {minutes:.1f} min from launch to exit, peak RSS "
        f"{results['peak_rss_mib'] / 1024:.1f} GiB; Dice "
        + ", ".join(f"{k} {v['dice']:.3f}" for k, v in results["scores"].items())
    )
    write_results(results, args.out)
    print(f"written {args.out}")
    return results


if __name__ == "__main__":
    main()
