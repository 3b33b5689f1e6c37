"""Build official ``segment_anything`` SAM modules at any input size (DESIGN.md 1, 4)."""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from ssam.sam.variants import SamSpec, compute_window_size

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def check_image_size(spec: SamSpec, image_size: int) -> None:
    if image_size <= 0 or image_size % spec.patch_size:
        raise ValueError(
            f"image size {image_size} must be a positive multiple of the patch size "
            f"{spec.patch_size} (e.g. 256, 512, 1024)"
        )


def build_sam(spec: SamSpec, image_size: int | None = None, window_size: int | None = None) -> Sam:
    """Official SAM modules of ``spec`` for S x S inputs (default: SAM's own 1024), in eval mode.

    The image encoder's absolute positions cover the S/16 grid, its windowed blocks use
    ``compute_window_size`` (or ``window_size``: e.g. SAM's own 14 at any size, padded as
    ``segment_anything`` pads, which is what stock SAM runs) and its relative-position tables
    have the matching lengths; load
    weights with ``ssam.sam.checkpoint.adapt_state_dict``. Under ``torch.device("meta")`` this
    builds the structure without allocating weights.
    """
    image_size = image_size or spec.pretrain_image_size
    check_image_size(spec, image_size)
    grid = image_size // spec.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.encoder_depth,
            embed_dim=spec.encoder_embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.encoder_num_heads,
            patch_size=spec.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.encoder_global_attn_indexes,
            window_size=window_size or compute_window_size(spec, image_size),
            out_chans=spec.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=spec.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=spec.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=spec.decoder_depth,
                embedding_dim=spec.prompt_embed_dim,
                mlp_dim=spec.decoder_mlp_dim,
                num_heads=spec.decoder_num_heads,
            ),
            transformer_dim=spec.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return sam.eval()


def build_empty_sam(spec: SamSpec, image_size: int | None = None) -> Sam:
    """``build_sam`` with uninitialised CPU storage, for loading a checkpoint over all of it.

    Skips PyTorch's random initialisation (0.5 s for ViT-B, 2 s for ViT-L on 2 cores), which
    a checkpoint would overwrite anyway. Only the pixel mean and std, the buffers no
    checkpoint holds, are filled here.
    """
    with torch.device("meta"):
        sam = build_sam(spec, image_size)
    sam = sam.to_empty(device="cpu")
    with torch.no_grad():
        sam.pixel_mean.copy_(torch.tensor(PIXEL_MEAN).view(-1, 1, 1))
        sam.pixel_std.copy_(torch.tensor(PIXEL_STD).view(-1, 1, 1))
    return sam


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def build_random_sam(spec: SamSpec, seed: int, image_size: int | None = None) -> Sam:
    """Official SAM modules with seeded random weights (PyTorch's default initialisation), the
    zero-initialised positional tables filled with N(0, 0.02) so that they matter.

    For tests, benchmarks and the demo's tiny foundation model; timings do not depend on values.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam(spec, image_size)
        with torch.no_grad():
            for name, param in sam.named_parameters():
                if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
                    param.normal_(0.0, 0.02)
    return sam
