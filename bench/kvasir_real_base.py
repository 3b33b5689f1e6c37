"""Kvasir-SEG end to end on the default base (LiteMedSAM): the base prompted with each
ground-truth box, untrained S-SAM (a fresh label token), and S-SAM trained by label name.

    python bench/kvasir_real_base.py [--size 128] [--steps 200] [--lr 3e-3] [--data DIR]

Kvasir-SEG's own seeded split (798 train / 200 validation). Dice on the validation images at
their original resolution. The box reference is scored at the training size and at 256 (the
base's own size). The recipe: batch 8, AdamW, validation every epoch, the random CLIP text tower
(no CLIP weights offline). Writes ``bench/results/kvasir_litemedsam_<size>.json`` (or ``--out``)
with the command and the machine. Two CPU cores: about 40 minutes at 128 px and 200 steps.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from compare_methods import DEFAULT_DATA, box_reference_at
from measure import describe_machine
from ssam.config.train import load_train_config
from ssam.evaluation.evaluate import evaluate, select_split_cases
from ssam.train import train
from summary import RESULTS, write_results


def mean_dice(summary: dict) -> float:
    return summary["labels"]["polyp"]["dice"]["mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="kvasir-"))
    data = [{"path": str(args.data), "layout": "folder", "label": "polyp"}]
    overrides = [
        f"model.image_size={args.size}",
        "model.random_text_tower=true",
        f"optim.lr={args.lr}",
        f"max_steps={args.steps}",
        "epochs=100",
        "batch_size=8",
        "val_every=1",
        f"threads={args.threads}",
        "progress=false",
        "tensorboard=false",
    ]
    config = load_train_config(None, overrides, datasets=data, output_dir=str(work))
    results: dict = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": describe_machine(args.threads),
        "recipe": {"size": args.size, "steps": args.steps, "lr": args.lr, "batch_size": 8},
    }
    cases = select_split_cases(config, "val")["kvasir-seg"]
    results["val_cases"] = len(cases)
    for size in sorted({args.size, 256}):
        start = time.time()
        dice = box_reference_at(config, cases, ["polyp"], size)["polyp"]
        results[f"box_{size}"] = float(np.mean(dice))
        results[f"box_{size}_seconds"] = round(time.time() - start)
        print(f"box prompt at {size}: Dice {results[f'box_{size}']:.3f}", flush=True)
    untrained = evaluate(config, None, "val", work / "eval-untrained", pictures=False)
    results["untrained"] = mean_dice(untrained.table.summary())
    start = time.time()
    run = train(config)
    results["train_seconds"] = round(time.time() - start)
    for name, adapter in (("best", run.best_adapter), ("last", run.last_adapter)):
        scored = evaluate(config, adapter, "val", work / f"eval-{name}", pictures=False)
        results[name] = mean_dice(scored.table.summary())
    print({k: v for k, v in results.items() if k not in ("machine", "command")})
    out = args.out or RESULTS / f"kvasir_litemedsam_{args.size}.json"
    print(f"wrote {write_results(results, out)}")


if __name__ == "__main__":
    main()
