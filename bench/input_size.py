"""Which input size on a CPU: the same S-SAM recipe on LiteMedSAM at 256 and smaller sizes, with
the validation Dice it reaches, the ground-truth-box-prompted base's Dice at that size (what the
base itself can still see there), seconds per image of training and peak RSS.

    python bench/input_size.py                     # 256 192 160 128, Kvasir-SEG subset: ~45 min
    python bench/input_size.py --sizes 128 96 --datasets glas

Each size is one ``compare_methods`` run (S-SAM only, its learning rate fixed, no LR grid; the
same subsets, steps, batch, seed), each training in a fresh process. Writes
``bench/results/input_size_litemedsam.json`` (or ``--out``) with every size's full result, the
command and the machine, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import compare_methods
from measure import describe_machine
from summary import RESULTS, command_line, save_partial, write_final


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 192, 160, 128])
    p.add_argument("--datasets", nargs="+", default=["kvasir-seg"])
    p.add_argument("--data-root", type=Path, default=compare_methods.SHARED)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--evals", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3, help="S-SAM's learning rate (every size)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="GlaS at 64 and 48 px, 2 steps")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.datasets, args.steps, args.evals = [64, 48], ["glas"], 2, 1
    args.out = args.out or RESULTS / ("input_size_quick.json" if args.quick else
                                      "input_size_litemedsam.json")  # fmt: skip
    return args


def size_rows(size: int, output: dict) -> list[dict]:
    """One row per dataset and label: S-SAM's Dice, the box reference at this size, cost."""
    rows = []
    for name, data in output["datasets"].items():
        method = output["table"][name]["ssam"]
        box = compare_methods.box_reference(data, size) or {}
        images = output["settings"]["batch_size"] * output["settings"]["steps"]
        run = next(iter(data["runs"].values()))
        for label, scores in method["labels"].items():
            rows.append({
                "size": size, "dataset": name, "label": label, "ssam_dice": scores["dice"],
                "box_dice": box.get(label, {}).get("dice"),
                "train_seconds": run["train_seconds"],
                "seconds_per_image": run["train_seconds"] / images,
                "seconds_per_epoch": method["seconds_per_epoch"],
                "peak_rss_mib": method["peak_rss_mib"],
            })  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| size | dataset | label | S-SAM Dice | box Dice at size | s per training image (validation included) "
        "| peak RSS GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        box = "-" if r["box_dice"] is None else f"{r['box_dice']:.3f}"
        lines.append(
            f"| {r['size']} | {r['dataset']} | {r['label']} | {r['ssam_dice']:.3f} | {box}"
            f" | {r['seconds_per_image']:.2f} | {r['peak_rss_mib'] / 1024:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results: dict = {
        "command": command_line("input_size.py", argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": describe_machine(args.threads),
        "recipe": {
            "steps": args.steps,
            "evals": args.evals,
            "lr": args.lr,
            "batch_size": 8,
            "datasets": args.datasets,
            "method": "ssam",
        },  # fmt: skip
        "sizes": {},
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="ssam-input-size-") as tmp:
        for size in args.sizes:
            print(f"input size {size} ...", flush=True)
            argv_size = [
                "--methods", "ssam", "--lr", f"ssam={args.lr}", "--datasets", *args.datasets,
                "--data-root", str(args.data_root),
                "--image-size", str(size), "--steps", str(args.steps), "--evals", str(args.evals),
                "--threads", str(args.threads), "--out", str(Path(tmp) / f"size_{size}.json"),
            ]  # fmt: skip
            if args.quick:
                argv_size += ["--batch-size", "2"]
            output = compare_methods.main(argv_size)
            results["sizes"][str(size)] = output
            results["rows"] += size_rows(size, output)
            save_partial(results, args.out)
    print("\n" + markdown(results["rows"]))
    write_final(results, args.out)
    print(f"\nwritten {args.out}")
    return results


if __name__ == "__main__":
    main()
