"""The suite's results as text tables, and the project's speed and memory targets checked on them.

Targets (CPU, float32, ViT-B at 256, one run on one machine): S-SAM training step at batch 2 at
most 0.85x a full fine-tuning step of SAM in the same layout; S-SAM inference at batch 1 within
1.15x SAM in the same layout adapted, 1.05x merged; peak RSS of a fresh process training at batch
2 at most 2.5 GiB; checkpoint to ready model at most 15 s with the SVD, 5 s from the SVD cache or
a merged checkpoint. The ratios to stock SAM and the time to first mask are reported beside them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(results: dict, out: Path) -> Path:
    """``results`` as indented JSON at ``out`` (its folder made if missing)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    return out


def command_line(script: str, argv: list[str] | None) -> str:
    """How a bench script was run: ``python bench/<script>`` and its arguments (``argv``, or
    this process's when None), for the results' ``command``."""
    return shlex.join(["python", f"bench/{script}", *(sys.argv[1:] if argv is None else argv)])


def save_partial(results: dict, out: Path) -> None:
    """What is measured so far, beside ``out`` (``.partial.json``): a killed run keeps it."""
    write_results(results, out.with_suffix(".partial.json"))


def write_final(results: dict, out: Path) -> Path:
    """``results`` at ``out``, and the partial file beside it removed."""
    write_results(results, out)
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    return out


def check_known(parser: argparse.ArgumentParser, given: Iterable[str], known, what: str) -> None:
    """Stop with a usage error naming the ``given`` names that are not in ``known``."""
    unknown = set(given) - set(known)
    if unknown:
        parser.error(f"unknown {what} {sorted(unknown)}; known: {list(known)}")


def default_output(args: argparse.Namespace, prefix: str) -> Path:
    """``--out`` if given, else bench/results/<prefix>_<variant>_<size>.json (or _quick)."""
    if args.out is not None:
        return args.out
    tag = "quick" if args.quick else f"{args.variant}_{args.image_size}"
    return RESULTS / f"{prefix}_{tag}.json"


# (name, section, config, batch, field, limit)
TARGETS = (
    ("train step b2: ssam / same layout", "training", "ssam", 2, "ratio", 0.85),
    ("inference b1: adapted / same layout", "inference", "ssam_adapted", 1, "ratio", 1.15),
    ("inference b1: merged / same layout", "inference", "ssam_merged", 1, "ratio", 1.05),
    ("peak RSS train b2: ssam (GiB)", "memory", "ssam", 2, "peak_rss_gib", 2.5),
    ("ready from checkpoint, SVD computed (s)", "load", "svd_first", None, "median_s", 15.0),
    ("ready from checkpoint, SVD cached (s)", "load", "svd_cached", None, "median_s", 5.0),
    ("ready from merged checkpoint (s)", "load", "merged", None, "median_s", 5.0),
)


def _find(rows: Sequence[dict], config: str, batch: int | None, mode: str | None = None):
    for row in rows:
        key = row.get("config", row.get("kind"))
        if key == config and row.get("batch") == batch and row.get("mode", mode) == mode:
            return row
    return None


def evaluate_targets(results: dict) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it is met (None: not measured here).

    Targets are stated for ViT-B at 256; for other settings they are reported, not judged.
    """
    settings = results["settings"]
    judged = settings["variant"] == "vit_b" and settings["image_size"] == 256
    out = []
    for name, section, config, batch, field, limit in TARGETS:
        rows = results.get(section, [])
        row = _find(rows, config, batch, "train" if section == "memory" else None)
        value = None
        if row is not None:
            value = row["peak_rss_mib"] / 1024 if field == "peak_rss_gib" else row[field]
        met = None if value is None or not judged else value <= limit
        out.append({"target": name, "value": value, "limit": limit, "met": met})
    return out


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in rows) and bool(rows) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        padded = zip(r, widths, numeric, strict=True)
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in padded)

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _is_number(value: Any) -> bool:
    return value is None or isinstance(value, int | float)


def _f(value: float | None, digits: int = 3) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _rss_lookup(results: dict, mode: str, config: str, batch: int) -> str | None:
    row = _find(results.get("memory", []), config, batch, mode)
    return None if row is None else f"{row['peak_rss_mib']:.0f}"


def format_training(results: dict) -> str:
    rows = []
    for r in results["training"]:
        rows.append(
            (r["config"], r["batch"], _f(r["median_s"]), _f(r["images_per_s"], 2),
             *_ratios(r), _rss_lookup(results, "train", r["config"], r["batch"]),
             f"{results['trainable'][r['config']]:,}", _mib(results["adapter_bytes"], r["config"]))
        )  # fmt: skip
    headers = ("config", "batch", "s/step", "img/s", *RATIO_HEADERS, "peak RSS MiB",
               "trainable", "adapter MiB")  # fmt: skip
    return format_table(headers, rows)


RATIO_HEADERS = ("x same layout", "paired", "x stock", "paired")


def _ratios(row: dict) -> tuple[str | None, ...]:
    """Ratio of medians and paired ratio against the same-layout, then the stock baseline."""
    keys = ("ratio", "paired_ratio", "ratio_stock", "paired_ratio_stock")
    return tuple(_f(row.get(k), 3) for k in keys)


def _mib(sizes: dict, config: str) -> str | None:
    return None if config not in sizes else f"{sizes[config] / 2**20:.2f}"


def format_inference(results: dict) -> str:
    rows = [
        (r["config"], r["batch"], _f(1000 * r["median_s"] / r["batch"], 1), *_ratios(r),
         _rss_lookup(results, "infer", r["config"], r["batch"]))
        for r in results["inference"]
    ]  # fmt: skip
    headers = ("config", "batch", "ms/image", *RATIO_HEADERS, "peak RSS MiB")
    return format_table(headers, rows)


def format_flops(results: dict) -> str:
    """Each workload's rate, and as a share of the MLP-shaped matmul of its batch and of the
    large square matmul (this machine's float32 GEMM rate)."""
    flops = results["encoder_flops"]
    square = next((r["gflops_per_s"] for r in flops if r["batch"] is None), None)
    mlp = {r["batch"]: r["gflops_per_s"] for r in flops if r["config"] == "matmul"}

    def share(rate: float, of: float | None) -> str | None:
        return None if of is None else f"{100 * rate / of:.0f}"

    rows = [
        (r["config"], r["batch"], _f(r.get("gflop"), 2), _f(r.get("median_s"), 4),
         _f(r["gflops_per_s"], 1), share(r["gflops_per_s"], mlp.get(r["batch"])),
         share(r["gflops_per_s"], square))
        for r in flops
    ]  # fmt: skip
    headers = ("workload", "batch", "GFLOP", "s", "GFLOP/s", "% of MLP matmul", "% of square")
    return format_table(headers, rows)


def format_load(results: dict) -> str:
    rows = [
        (r["kind"], _f(r["median_s"], 2), " ".join(f"{s:.2f}" for s in r["samples_s"]))
        for r in results.get("load", [])
    ]
    return format_table(("checkpoint -> ready model", "median s", "samples s"), rows)


def format_first_mask(results: dict) -> str:
    rows = [
        (r["kind"], _f(r["median_s"], 2), " ".join(f"{s:.2f}" for s in r["samples_s"]),
         " ".join(f"{s:.2f}" for s in r["exit_samples_s"]))
        for r in results.get("first_mask", [])
    ]  # fmt: skip
    headers = ("ssam predict, one image", "start -> mask s", "samples s", "process exit s")
    return format_table(headers, rows)


def format_targets(results: dict) -> str:
    verdict = {True: "met", False: "MISSED", None: "n/a"}
    rows = [
        (t["target"], _f(t["value"], 3), t["limit"], verdict[t["met"]]) for t in results["targets"]
    ]
    return format_table(("target", "measured", "limit", ""), rows)


def format_report(results: dict) -> str:
    s, m = results["settings"], results["machine"]
    head = (
        f"S-SAM suite: SAM {s['variant']} at {s['image_size']}, float32, CPU "
        f"({m['cpu']}, {m['logical_cpus']} logical CPUs), torch {m['torch']}, "
        f"torch.set_num_threads({m['torch_threads']}); load average before "
        f"{', '.join(f'{x:.2f}' for x in m['load_average'])}, after "
        f"{', '.join(f'{x:.2f}' for x in results['load_average_after'])}.\n"
        f"Medians of {s['rounds']} interleaved training rounds and {s['infer_rounds']} inference "
        f"rounds after {s['warmup']} warm-up ('x': ratio of medians; 'paired': median of the "
        f"per-round ratios; 'same layout': official SAM modules in the S-SAM model's encoder layout, "
        f"'stock': as segment_anything builds them); peak RSS and load times each in a fresh "
        f"interpreter."
    )
    parts = [
        head,
        "Training step (AdamW, focal + Dice)\n" + format_training(results),
        "Inference (eval mode, torch.inference_mode)\n" + format_inference(results),
        "Image encoder forward against a plain matmul\n" + format_flops(results),
    ]
    if results.get("load"):
        parts.append("Load time\n" + format_load(results))
    if results.get("first_mask"):
        parts.append("Time to first mask\n" + format_first_mask(results))
    parts.append("Targets (judged for vit_b at 256 only)\n" + format_targets(results))
    return "\n\n".join(parts)
