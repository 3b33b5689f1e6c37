"""Prediction speed: the encoder runs once per image, and a merged model costs what SAM costs.

Two measurements, in one run:

1. Call counts (forward hooks): segmenting one image for L labels runs the image encoder once
   and the mask decoder once with L prompts; a volume of N slices at batch size b runs the
   encoder ceil(N / b) times on N slices in all, and the decoder once per slice.
2. Time per image (encoder + decoder for L labels, ``SSAMPredictor.predict_logits``) of
   * ``sam_same_layout``: segment_anything's modules with the base weights (no adapter) in the
     S-SAM model's encoder layout (``build_sam(spec, S)``: the windows and tables S-SAM uses
     at S), so a ratio to it is the adapter's own cost,
   * ``sam_stock``: the same modules as segment_anything builds them at S (SAM's own 14-token
     windows, padded: 16x16 tokens become 28x28 at 256), what a user of SAM runs,
   * ``ssam_merged``: the merged checkpoint (``ssam.inference.merge.load_merged``),
   * ``ssam_adapted``: base + adapter, SVD layers in eval mode (W' cached),
   interleaved (each round rotates the order) after a warm-up round; medians, their ratios
   to both baselines and the median of the per-round ratios ("paired": each round runs the
   models back to back, under the same load) are printed side by side.

Default: ViT-B at 256 with seeded random weights saved in the official layout (speed does not
depend on values) and the tiny text tower. ``--quick``: the tiny SAM at 64 (a smoke test).

    python bench/predict_speed.py [--quick] [--rounds 15] [--labels 4] [--threads 1]

Exit status 1 if a call count is wrong; timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ssam.inference.merge import merge_adapter
from ssam.inference.predictor import SSAMPredictor
from ssam.model import SSAM
from ssam.sam.build import build_sam
from ssam.sam.checkpoint import load_sam_weights
from ssam.sam.variants import get_sam_spec
from ssam.text import TextAffine
from workloads import write_moved_adapter

SAME_LAYOUT, STOCK = "sam_same_layout", "sam_stock"
LABEL_NAMES = ("liver", "kidney", "spleen", "pancreas", "lung", "heart", "polyp", "gland")


def build_predictors(
    variant: str, size: int, labels: tuple[str, ...], folder: Path
) -> dict[str, SSAMPredictor]:
    """Plain SAM, merged and adapted predictors over one random base and one adapter."""
    spec = get_sam_spec(variant)
    base, adapter = write_moved_adapter(variant, size, folder, list(labels))
    merged = merge_adapter(adapter, folder / "merged.pth", base)
    plain = {}
    for name, window in ((SAME_LAYOUT, None), (STOCK, spec.encoder.window_size)):
        sam = build_sam(spec, size, window)
        load_sam_weights(sam, base, spec)
        plain[name] = SSAMPredictor(
            SSAM(sam, TextAffine(512, spec.prompt_embed_dim), None, size, variant=variant)
        )
    return {
        **plain,
        "ssam_merged": SSAMPredictor.from_merged(merged.checkpoint),
        "ssam_adapted": SSAMPredictor.from_adapter(adapter, base),
    }


def count_calls(predictor: SSAMPredictor, labels: tuple[str, ...], size: int) -> bool:
    """Print encoder/decoder calls for one image and for a volume; True if as designed."""
    encoder_batches: list[int] = []
    decoder_prompts: list[int] = []
    model = predictor.model
    hooks = [
        model.image_encoder.register_forward_hook(
            lambda m, args, out: encoder_batches.append(args[0].shape[0])
        ),
        model.mask_decoder.register_forward_pre_hook(
            lambda m, args, kw: decoder_prompts.append(kw["sparse_prompt_embeddings"].shape[0]),
            with_kwargs=True,
        ),
    ]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
    n_slices, batch = 10, predictor.batch_size
    volume = rng.normal(size=(size, size, n_slices)).astype(np.float32)
    ok = True
    for name, images in (("one image", 1), (f"volume, {n_slices} slices", n_slices)):
        encoder_batches.clear()
        decoder_prompts.clear()
        if images == 1:
            predictor.segment_image(image, labels)
        else:
            predictor.segment_volume(volume, labels)
        good = (
            len(encoder_batches) == -(-images // batch)
            and sum(encoder_batches) == images
            and decoder_prompts == [len(labels)] * images
        )
        ok &= good
        print(
            f"  {name:<20} {len(labels)} labels: encoder {len(encoder_batches)} call(s) on "
            f"{sum(encoder_batches)} image(s) (batch {batch}); decoder {len(decoder_prompts)} "
            f"call(s), {sorted(set(decoder_prompts))} prompts each  [{'ok' if good else 'WRONG'}]"
        )
    for hook in hooks:
        hook.remove()
    return ok


def time_interleaved(
    predictors: dict[str, SSAMPredictor], labels: tuple[str, ...], size: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds per image of each predictor, rounds rotating the order, after one warm-up."""
    images = torch.randn(1, 3, size, size)
    tokens = predictors["ssam_merged"].label_tokens(labels)  # plain SAM has no text path
    names = list(predictors)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds + 1):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            start = time.perf_counter()
            predictors[name].predict_logits(images, tokens)
            if round_index:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    return times


def report_times(times: dict[str, list[float]]) -> float:
    """Print medians, and against each baseline two ratios: of the medians, and the median of
    the per-round ratios ("paired": each round runs the models back to back, under the same
    load). Returns the merged model's paired ratio to the same-layout baseline."""

    def paired(values: list[float], base: list[float]) -> float:
        return statistics.median(v / b for v, b in zip(values, base, strict=True))

    print(
        f"  {'model':<16}{'median ms':>11}{'min ms':>9}{'x same layout':>15}{'paired':>9}"
        f"{'x stock':>9}{'paired':>9}"
    )
    for name, values in times.items():
        median = statistics.median(values)
        cells = "".join(
            f"{median / statistics.median(times[b]):>{w}.3f}{paired(values, times[b]):>9.3f}"
            for b, w in ((SAME_LAYOUT, 15), (STOCK, 9))
        )
        print(f"  {name:<16}{median * 1e3:>11.1f}{min(values) * 1e3:>9.1f}{cells}")
    ratio = paired(times["ssam_merged"], times[SAME_LAYOUT])
    verdict = "within" if abs(ratio - 1) <= 0.05 else "NOT within"
    print(f"  merged / same layout (paired median) = {ratio:.3f}: {verdict} 5 %")
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny SAM at 64 (smoke test)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds")
    parser.add_argument("--labels", type=int, default=4, help="labels per image")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default); one "
        "thread keeps timings steady on a shared machine",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variant, size = ("tiny", 64) if args.quick else ("vit_b", 256)
    labels = LABEL_NAMES[: max(1, min(args.labels, len(LABEL_NAMES)))]
    print(
        f"SAM {variant} at {size}x{size}, {len(labels)} labels, {torch.get_num_threads()} threads"
    )
    with tempfile.TemporaryDirectory() as tmp:
        # Weight hashes and SVD factors of the throw-away files stay in the temporary folder.
        cache = os.environ.get("SSAM_CACHE")
        os.environ["SSAM_CACHE"] = tmp
        try:
            predictors = build_predictors(variant, size, labels, Path(tmp))
        finally:
            os.environ.pop("SSAM_CACHE") if cache is None else os.environ.update(SSAM_CACHE=cache)
    print("calls (merged model):")
    ok = count_calls(predictors["ssam_merged"], labels, size)
    print(f"time per image, encoder + decoder, {args.rounds} interleaved rounds:")
    report_times(time_interleaved(predictors, labels, size, args.rounds))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
