"""SAM's ViT image encoder (official ``segment_anything`` module) at any input size (DESIGN.md 4)."""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT

from ssam.sam.variants import SamSpec, ViTEncoderSpec


def compute_window_size(spec: SamSpec, image_size: int) -> int:
    """Attention window of the windowed blocks at ``image_size`` (DESIGN.md 4).

    At SAM's pretraining size it is SAM's own (14, padded as SAM pads). At any other size it is
    the divisor of the token grid closest to 14 (ties: the larger) among those of at least half
    SAM's window (7), so no window holds padding and none is so small that tokens attend only
    to a few neighbours: a 16x16 grid (input 256) gets one 16x16 window, a 32x32 grid (512) four
    16x16 windows, a prime grid such as 31 (496) one 31x31 window (global attention) and a 58
    grid (928) four 29x29 windows. Grids below 7 tokens attend globally.
    """
    encoder: ViTEncoderSpec = spec.encoder
    grid = image_size // encoder.patch_size
    if image_size == spec.pretrain_image_size:
        return encoder.window_size
    smallest = -(-encoder.window_size // 2)
    divisors = [d for d in range(smallest, grid + 1) if grid % d == 0] or [grid]
    return min(divisors, key=lambda d: (abs(d - encoder.window_size), -d))


def build_vit_encoder(
    spec: SamSpec, image_size: int, window_size: int | None = None
) -> ImageEncoderViT:
    """SAM's ``ImageEncoderViT`` of ``spec`` for S x S inputs: absolute positions on the S/16
    grid, windowed blocks with ``compute_window_size`` (or ``window_size``, e.g. SAM's own 14 at
    any size, padded as ``segment_anything`` pads: what stock SAM runs)."""
    encoder: ViTEncoderSpec = spec.encoder
    return ImageEncoderViT(
        depth=encoder.depth,
        embed_dim=encoder.embed_dim,
        img_size=image_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=encoder.num_heads,
        patch_size=encoder.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=encoder.global_attn_indexes,
        window_size=window_size or compute_window_size(spec, image_size),
        out_chans=spec.prompt_embed_dim,
    )
