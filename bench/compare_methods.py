"""The fine-tuning methods side by side on the default base (LiteMedSAM) over the five shared
datasets, against the untrained model and the base prompted with ground-truth boxes.

    python bench/compare_methods.py              # CPU recipe: 96 px, 30 steps of batch 8 per run,
                                                 # subsets of the five datasets: ~85 min, 2 cores
    python bench/compare_methods.py --quick      # smoke run: 2 datasets, 64 px, 4 steps
    python bench/compare_methods.py --image-size 256 --steps 600 --evals 6 --grid-on all \\
        --seeds 0 1 2 --full-data                # the full recipe (wants a GPU)

Every method shares the data, split, loss (focal + Dice), label-name prompt, optimiser (AdamW,
constant learning rate), batch and number of steps, and none augments its images (decoder and
token train on stored embeddings of the images as they are); only the trainable set
(``ssam.tuning.methods``) and the learning rate differ. Each method's learning rate is picked
from its own small grid (``LR_GRID``) by validation Dice on the ``--grid-on`` datasets and used
as picked on the others. Methods that leave the encoder frozen (decoder, token) train on
embeddings stored once per image (``ssam train``'s ``cache_embeddings``), shared by the runs of
one dataset and seed (their encoding counts as setup, not training). Each run is a fresh
process (its peak RSS measured by the kernel, ``wait4``) that trains, then scores the best adapter on the validation cases at their original resolution
(``ssam.evaluation``: Dice and HD95 per case and label, volumes as volumes). References per
dataset: the untrained model (a fresh label token), and the base prompted with each
ground-truth component's box (2D cases; ``ssam.evaluation.box_reference``) at the run's input
size and at 256, LiteMedSAM's own. Writes JSON (command, machine, splits, budgets, every run)
and two figures beside it: Dice against trainable parameters, validation Dice against time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from measure import describe_machine
from summary import (
    RESULTS,
    check_known,
    command_line,
    format_table,
    save_partial,
    write_final,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared" / "data").resolve()
DEFAULT_DATA = SHARED / "kvasir-seg"

# name -> the dataset entry (``DatasetConfig``) and how many images/cases the CPU recipe uses
DATASETS: dict[str, dict] = {
    "kvasir-seg": {"entry": {"layout": "folder", "label": "polyp"}, "limit": 120},
    "shenzhen-cxr": {"entry": {"layout": "folder", "label": "lung"}, "limit": 120},
    "glas": {"entry": {"layout": "folder", "label": "gland", "split": {"val_fraction": 0.3}}},
    "curvas-ct": {"entry": {"layout": "nnunet"}},
    "ms-lesions-mri": {
        "entry": {"layout": "nnunet", "channels": ["FLAIR"], "split": {"val_fraction": 0.5},
                  "intensity": {"preset": "mri"}},
    },
}  # fmt: skip
METHOD_ORDER = ("ssam", "lora", "bias", "decoder", "token", "full")
LR_GRID: dict[str, tuple[float, ...]] = {
    "ssam": (3e-3, 1e-2),
    "lora": (1e-3, 3e-3),
    "bias": (1e-3, 3e-3),
    "decoder": (1e-4, 1e-3),
    "token": (1e-3, 1e-2),
    "full": (1e-5, 1e-4),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--data-root", type=Path, default=SHARED, help="folder of the datasets")
    p.add_argument("--methods", nargs="+", default=list(METHOD_ORDER))
    p.add_argument("--variant", default="litemedsam")
    p.add_argument("--sam-checkpoint", type=Path, default=None, help="default: the variant's")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--steps", type=int, default=30, help="optimiser steps per run")
    p.add_argument("--evals", type=int, default=3, help="validations (epochs) over the steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grid-on", nargs="+", default=["kvasir-seg"],
                   help="datasets where each method's learning rate is picked ('all': every one)")  # fmt: skip
    p.add_argument("--lr", nargs="+", default=[], metavar="METHOD=LR[,LR]",
                   help="replace a method's grid, e.g. ssam=3e-3,1e-2")  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--full-data", action="store_true", help="no subsets: every image")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--quick", action="store_true", help="2 datasets, 64 px, 4 steps: smoke run")
    p.add_argument("--out", type=Path, default=None, help="JSON (figures beside it, .png)")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        help="a results JSON: print its tables (Markdown too) and redraw its figures",
    )
    p.add_argument("--run-one", type=Path, default=None, help=argparse.SUPPRESS)  # child
    args = p.parse_args(argv)
    if args.run_one is not None or args.report is not None:
        return args
    if args.quick:
        args.image_size, args.steps, args.evals, args.batch_size = 64, 4, 2, 2
        args.datasets = [d for d in args.datasets if d in ("glas", "curvas-ct")] or ["glas"]
    if args.steps % args.evals:
        p.error(f"--steps ({args.steps}) must be a multiple of --evals ({args.evals})")
    check_known(p, args.datasets, DATASETS, "datasets")
    check_known(p, args.methods, METHOD_ORDER, "methods")
    args.grid = {m: LR_GRID[m] for m in args.methods}
    for item in args.lr:
        method, _, values = item.partition("=")
        check_known(p, [method], args.grid, "methods in --lr")
        args.grid[method] = tuple(float(v) for v in values.split(","))
    args.grid_on = list(args.datasets) if args.grid_on == ["all"] else args.grid_on
    args.grid_on = [d for d in args.datasets if d in args.grid_on] or args.datasets[:1]
    tag = "quick" if args.quick else f"{args.variant}_{args.image_size}"
    args.out = args.out or RESULTS / f"compare_methods_{tag}.json"
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


NO_AUGMENTATION = {"rotation_deg": 0.0, "brightness": 0.0}


def dataset_entry(name: str, args, work: Path) -> dict:
    """The ``DatasetConfig`` entry of ``name``: a linked subset where the recipe takes one;
    no augmentation, for every method alike (decoder and token train on stored embeddings of
    the images as they are)."""
    spec, path = DATASETS[name], args.data_root / name
    limit = spec.get("limit")
    if limit and not args.full_data:
        path = link_subset(path, limit, work / "data" / name)
    return {"path": str(path), "name": name, **spec["entry"], "augment": NO_AUGMENTATION}


def base_overrides(args, seed: int) -> list[str]:
    overrides = [
        f"model.variant={args.variant}", f"model.image_size={args.image_size}",
        "model.random_text_tower=true", "model.allow_download=false", f"seed={seed}",
        f"epochs={args.evals}", f"batch_size={args.batch_size}",
        f"samples_per_epoch={args.steps // args.evals * args.batch_size}",
        "optim.step_size=1000000", "val_at_start=false", f"threads={args.threads}",
        "progress=false", "tensorboard=false", "checkpoint_every=1000000",
    ]  # fmt: skip
    if args.sam_checkpoint:
        overrides.append(f"model.sam_checkpoint={args.sam_checkpoint}")
    return overrides


def load_config(entry: dict, overrides: list[str], out: Path):
    from ssam.config.train import load_train_config

    return load_train_config(None, overrides, datasets=[entry], output_dir=str(out))


def label_scores(table) -> dict:
    """Per label, over the validation cases that contain it (as the box reference, which has
    no box to give elsewhere): Dice and HD95 mean and sd, the case count; and the Dice over
    every case (an empty label predicted empty scoring 1) with the share of those cases."""
    out = {}
    for label in table.labels:
        rows = [r for r in table.rows if r.label == label]
        present = [r for r in rows if not r.gt_empty]
        dice = [r.dice for r in present]
        hd95 = [r.hd95 for r in present if not np.isnan(r.hd95)]
        out[label] = {
            "dice": float(np.mean(dice)) if dice else None,
            "dice_sd": float(np.std(dice)) if dice else None, "n": len(dice),
            "hd95": float(np.mean(hd95)) if hd95 else None,
            "hd95_sd": float(np.std(hd95)) if hd95 else None,
            "dice_all_cases": float(np.mean([r.dice for r in rows])), "n_all": len(rows),
        }  # fmt: skip
    return out


def run_one(spec_path: Path) -> None:
    """Child process: train one (dataset, method, lr, seed), score the best adapter, write
    the result JSON the spec names."""
    from ssam.evaluation.evaluate import evaluate
    from ssam.train import train
    from ssam.train.log import read_log

    spec = json.loads(spec_path.read_text())
    config = load_config(spec["entry"], spec["overrides"], Path(spec["out"]))
    start = time.time()
    result = train(config)
    log = read_log(result.run_dir / "metrics.jsonl")
    ready = next(r["time"] for r in log if r["kind"] == "split")  # setup done, first step next
    records = [r for r in log if r["kind"] == "epoch"]
    curve = [(r["time"] - ready, r["step"], r["val_dice"]) for r in records if "val_dice" in r]
    setup, seconds = ready - start, records[-1]["time"] - ready
    adapter = result.best_adapter or result.last_adapter
    scored = evaluate(config, adapter, "val", Path(spec["out"]) / "eval", pictures=False)
    from ssam.cli.params import compute_parameter_report

    report = compute_parameter_report(config.model)
    out = {
        "trainable": report["trainable"], "share_percent": report["share_percent"],
        "setup_seconds": setup, "train_seconds": seconds,
        "seconds_per_epoch": seconds / config.epochs,
        "val_curve": curve, "val_dice_best": max((c[2] for c in curve), default=None),
        "labels": label_scores(scored.table),
        "adapter_bytes": adapter.stat().st_size,
    }  # fmt: skip
    Path(spec["result"]).write_text(json.dumps(out))


def launch(spec: dict, folder: Path, threads: int) -> dict:
    """Run ``run_one`` in a fresh process; its result with the process's peak RSS."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "out": str(folder / "run"), "result": str(folder / "result.json")}
    (folder / "spec.json").write_text(json.dumps(spec))
    command = [sys.executable, __file__, "--run-one", str(folder / "spec.json")]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    with open(folder / "log.txt", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = (folder / "log.txt").read_text()[-3000:]
        raise RuntimeError(f"run {spec['method']} lr {spec['lr']} failed:\n{tail}")
    result = json.loads((folder / "result.json").read_text())
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    return result


def box_reference_at(config, cases: list, labels: list[str], size: int) -> dict:
    """Per label, the Dice of each case of the base prompted with its ground-truth boxes at
    input ``size`` (``score_box_reference``; the config's model and pixel mapping)."""
    from ssam.evaluation.box_reference import score_box_reference
    from ssam.factory import create_model
    from ssam.inference.predictor import SSAMPredictor

    model = create_model(config.model.model_copy(update={"image_size": size}))
    predictor = SSAMPredictor(model, intensity=config.datasets[0].intensity)
    return score_box_reference(predictor, cases, labels)


def box_sizes(image_size: int) -> list[int]:
    """The box-prompted reference's input sizes: the run's, and the base's own 256."""
    return sorted({image_size, 256})


def references(entry: dict, args, work: Path) -> dict:
    """The untrained model's and the box-prompted base's scores on the validation cases."""
    from ssam.evaluation.evaluate import evaluate, select_split_cases

    config = load_config(entry, base_overrides(args, args.seeds[0]), work / "refs")
    untrained = evaluate(config, None, "val", work / "refs" / "untrained", pictures=False)
    cases = select_split_cases(config, "val")[entry["name"]]
    labels = list(cases[0].labels)
    out = {"untrained": label_scores(untrained.table), "val_cases": len(cases)}
    for size in box_sizes(args.image_size):
        boxes = box_reference_at(config, cases, labels, size)
        out[f"box_{size}"] = {
            k: {"dice": float(np.mean(v)), "dice_sd": float(np.std(v)), "n": len(v)}
            for k, v in boxes.items() if v
        } or None  # volumes: a box per slice is another protocol  # fmt: skip
    return out


def describe_split(entry: dict, args) -> dict:
    from ssam.evaluation.evaluate import describe_split_cases

    config = load_config(entry, base_overrides(args, args.seeds[0]), Path("unused"))
    cases, lines = describe_split_cases(config, "train")
    val, _ = describe_split_cases(config, "val")
    name = entry["name"]
    return {"line": lines[name], "train": len(cases[name]), "val": len(val[name]),
            "labels": list(cases[name][0].labels)}  # fmt: skip


def mean_dice(result: dict) -> float:
    """Mean over labels of the Dice over cases containing each (labels never present: left
    out)."""
    return float(np.mean([s["dice"] for s in result["labels"].values() if s["dice"] is not None]))


def run_dataset(name: str, args, work: Path, picked: dict) -> dict:
    """Every method (each LR of its grid where ``name`` is a grid dataset, else the picked
    LR) and seed on one dataset; the references."""
    entry = dataset_entry(name, args, work)
    out = {"entry": entry, "split": describe_split(entry, args), "runs": {}}
    start = time.time()
    out["references"] = references(entry, args, work / name)
    out["references"]["seconds"] = time.time() - start
    print(f"{name}: {out['split']['line']}; references {short(out['references'])}", flush=True)
    for method in args.methods:
        lrs = args.grid[method] if name in args.grid_on else (picked[method],)
        for lr in lrs:
            for seed in args.seeds:
                overrides = [*base_overrides(args, seed), f"model.method={method}",
                             f"optim.lr={lr}", f"embeddings_dir={work / name / f'embeddings-{seed}'}"]  # fmt: skip
                spec = {"entry": entry, "overrides": overrides, "method": method, "lr": lr}
                folder = work / name / f"{method}-{lr:g}-seed{seed}"
                result = launch(spec, folder, args.threads)
                out["runs"][f"{method} lr={lr:g} seed={seed}"] = {
                    "method": method,
                    "lr": lr,
                    "seed": seed,
                    **result,
                }
                print(f"  {method} lr {lr:g} seed {seed}: Dice {mean_dice(result):.4f} "
                      f"({result['train_seconds']:.0f} s, {result['peak_rss_mib']:.0f} MiB)",
                      flush=True)  # fmt: skip
    return out


def short(refs: dict) -> str:
    parts = []
    for key, value in refs.items():
        if isinstance(value, dict):
            parts.append(f"{key} " + "/".join(_f(v["dice"]) for v in value.values()))
    return ", ".join(parts)


def pick_lrs(results: dict, args) -> dict[str, float]:
    """Each method's learning rate with the best mean validation Dice (mean over the grid
    datasets, their labels and the seeds)."""
    picked = {}
    for method in args.methods:
        by_lr = {}
        for lr in args.grid[method]:
            scores = [mean_dice(r) for d in args.grid_on for r in results[d]["runs"].values()
                      if r["method"] == method and r["lr"] == lr]  # fmt: skip
            by_lr[lr] = float(np.mean(scores))
        picked[method] = max(by_lr, key=by_lr.get)
    return picked


def summarise(results: dict, picked: dict, args) -> dict:
    """Per dataset, label and method at its picked LR: Dice mean and sd over seeds (and the
    case-level sd), HD95, trainable parameters, seconds per epoch, peak RSS."""
    table = {}
    for name, data in results.items():
        rows = {}
        for method in args.methods:
            runs = [r for r in data["runs"].values()
                    if r["method"] == method and r["lr"] == picked[method]]  # fmt: skip
            labels = runs[0]["labels"]
            rows[method] = {
                "lr": picked[method], "seeds": len(runs), "trainable": runs[0]["trainable"],
                "seconds_per_epoch": float(np.mean([r["seconds_per_epoch"] for r in runs])),
                "peak_rss_mib": float(max(r["peak_rss_mib"] for r in runs)),
                "labels": {
                    label: {
                        "dice": _mean_or_none([r["labels"][label]["dice"] for r in runs]),
                        "dice_sd_seeds": _sd_or_none([r["labels"][label]["dice"] for r in runs]),
                        "dice_sd_cases": _mean_or_none([r["labels"][label]["dice_sd"] for r in runs]),
                        "hd95": _mean_or_none([r["labels"][label]["hd95"] for r in runs]),
                    }
                    for label in labels
                },
            }  # fmt: skip
        table[name] = rows
    return table


def _mean_or_none(values: list) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


def _sd_or_none(values: list) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.std(finite)) if finite else None


def box_reference(data: dict, size: int) -> dict | None:
    """The box-prompted base's scores at the runs' input size (None: no 2D case to box)."""
    return data["references"].get(f"box_{size}")


def verdicts(results: dict, table: dict, size: int) -> dict[str, str]:
    """One sentence per dataset: where S-SAM stands among the methods and against the box."""
    out = {}
    for name, rows in table.items():
        ranked = sorted(rows, key=lambda method: mean_dice(rows[method]), reverse=True)
        text = "S-SAM not run"
        if "ssam" in rows:
            place = ranked.index("ssam") + 1
            text = f"S-SAM {mean_dice(rows['ssam']):.3f}, rank {place} of {len(ranked)}"
        text += f"; best {ranked[0]} {mean_dice(rows[ranked[0]]):.3f}"
        box = box_reference(results[name], size)
        if box:
            text += f"; the box-prompted base at {size} px {mean_dice({'labels': box}):.3f}"
        out[name] = text
    return out


def format_results(table: dict, results: dict) -> str:
    rows = []
    for name, methods in table.items():
        refs = results[name]["references"]
        for ref in ("untrained", *sorted(k for k in refs if k.startswith("box_"))):
            if isinstance(refs.get(ref), dict):
                for label, s in refs[ref].items():
                    rows.append((name, label, ref, "", _f(s["dice"]), "", "", ""))
        for method, r in methods.items():
            for label, s in r["labels"].items():
                hd = "" if s["hd95"] is None else f"{s['hd95']:.1f}"
                rows.append((name, label, method, f"{r['trainable']:,}",
                             f"{_f(s['dice'])} ± {_f(s['dice_sd_cases'])}", hd,
                             f"{r['seconds_per_epoch']:.0f}", f"{r['peak_rss_mib']:.0f}"))  # fmt: skip
    headers = ("dataset", "label", "method", "trainable", "Dice ± sd (cases)", "HD95",
               "s/epoch", "peak RSS MiB")  # fmt: skip
    return format_table(headers, rows)


def markdown_table(output: dict) -> str:
    """The README's table: per dataset and label, the references and each method's Dice at its
    picked learning rate (mean ± sd over the validation cases containing the label), with
    trainable parameters, seconds per epoch and peak RSS per method."""
    methods = list(output["settings"]["methods"])
    size = output["settings"]["image_size"]
    boxes = box_sizes(size)
    head = ["dataset / label", "untrained", *(f"GT box {b} px" for b in boxes), *methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rows in output["table"].items():
        refs = output["datasets"][name]["references"]
        for label in rows[methods[0]]["labels"]:
            cells = [
                f"{name} / {label}",
                _ref(refs, "untrained", label),
                *(_ref(refs, f"box_{b}", label) for b in boxes),
            ]
            scores = {m: rows[m]["labels"][label]["dice"] for m in methods}
            best = max((v for v in scores.values() if v is not None), default=None)
            for m in methods:
                s = rows[m]["labels"][label]
                text = f"{_f(s['dice'])} ± {_f(s['dice_sd_cases'])}"
                cells.append(f"**{text}**" if best and s["dice"] == best else text)
            lines.append("| " + " | ".join(cells) + " |")
    first = output["table"][next(iter(output["table"]))]
    gap = "| " * (2 + len(boxes))  # the reference columns stay empty
    lines.append(
        f"| trainable parameters {gap}"
        + " | ".join(f"{first[m]['trainable']:,}" for m in methods)
        + " |"
    )
    lines.append(
        f"| learning rate (picked) {gap}"
        + " | ".join(f"{output['picked_lr'][m]:g}" for m in methods)
        + " |"
    )
    for name, rows in output["table"].items():
        lines.append(
            f"| s / epoch, peak RSS GiB: {name} {gap}"
            + " | ".join(
                f"{rows[m]['seconds_per_epoch']:.0f}, {rows[m]['peak_rss_mib'] / 1024:.1f}"
                for m in methods
            )
            + " |"
        )
    return "\n".join(lines)


def _ref(refs: dict, key: str, label: str) -> str:
    value = (refs.get(key) or {}).get(label)
    return "-" if value is None else _f(value["dice"])


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot(output: dict, path: Path) -> list[Path]:
    """Dice against trainable parameters (log x, box reference as a line), and validation
    Dice against wall time; one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(output["table"])
    paths = [path.with_name(path.stem + "_params.png"), path.with_name(path.stem + "_time.png")]
    for kind, target in zip(("params", "time"), paths, strict=True):
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            rows, data = output["table"][name], output["datasets"][name]
            for i, (method, r) in enumerate(rows.items()):
                colour = f"C{i}"
                if kind == "params":
                    dice = mean_dice(r)
                    ax.scatter(r["trainable"], dice, color=colour, label=method)
                else:
                    for run in data["runs"].values():
                        if run["method"] == method and run["lr"] == r["lr"] and run["val_curve"]:
                            t, _, d = zip(*run["val_curve"], strict=True)
                            ax.plot(t, d, marker="o", color=colour, label=method)
                            break
            box = box_reference(data, output["settings"]["image_size"])
            if box:
                level = mean_dice({"labels": box})
                ax.axhline(level, color="grey", linestyle="--", label="GT box")
            if kind == "params":
                ax.set(xscale="log", xlabel="trainable parameters", ylabel="validation Dice")
            else:
                ax.set(xlabel="wall time (s)", ylabel="validation Dice (per sample)")
            ax.set_title(name)
            ax.set_ylim(0, 1)
        axes[0][0].legend(fontsize=7)
        s = output["settings"]
        fig.suptitle(f"{s['variant']} at {s['image_size']} px, {s['steps']} steps of batch "
                     f"{s['batch_size']}, LR per method picked on {', '.join(s['grid_on'])}")  # fmt: skip
        fig.tight_layout()
        fig.savefig(target, dpi=110)
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.run_one is not None:
        warnings.filterwarnings("ignore")
        return run_one(args.run_one)
    if args.report is not None:
        output = json.loads(args.report.read_text())
        report(output, args.report)
        return output
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings["grid"] = {m: list(v) for m, v in args.grid.items()}
    output: dict = {
        "command": command_line("compare_methods.py", argv),
        "machine": describe_machine(args.threads), "settings": settings, "datasets": {},
    }  # fmt: skip
    start = time.time()
    order = [d for d in args.datasets if d in args.grid_on]
    order += [d for d in args.datasets if d not in args.grid_on]
    with tempfile.TemporaryDirectory(prefix="ssam-compare-") as tmp:
        work, picked = Path(tmp), {}
        for name in order:
            if name not in args.grid_on and not picked:
                picked = pick_lrs(output["datasets"], args)
                print(f"learning rates picked: {picked}", flush=True)
            output["datasets"][name] = run_dataset(name, args, work, picked)
            save_partial(output, args.out)  # kept if a later dataset fails
        picked = picked or pick_lrs(output["datasets"], args)
    output["picked_lr"] = picked
    output["table"] = summarise(output["datasets"], picked, args)
    output["verdicts"] = verdicts(output["datasets"], output["table"], args.image_size)
    output["seconds"] = time.time() - start
    write_final(output, args.out)
    report(output, args.out)
    return output


def report(output: dict, path: Path) -> None:
    """Print the tables and verdicts of ``output``; draw its figures beside ``path``."""
    print(format_results(output["table"], output["datasets"]))
    for name, text in output["verdicts"].items():
        print(f"{name}: {text}")
    print("\n" + markdown_table(output))
    figures = plot(output, path)
    print(f"\nwritten {path}, {figures[0].name}, {figures[1].name}\ncommand: {output['command']}")


if __name__ == "__main__":
    main()
