"""Build a base model's three parts at any input size (DESIGN.md 1, 1b, 4): the family's image
encoder with the official ``segment_anything`` prompt encoder and mask decoder."""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from ssam.sam.families import get_family
from ssam.sam.variants import SamSpec

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def check_image_size(spec: SamSpec, image_size: int) -> None:
    stride = get_family(spec).stride(spec)
    if image_size <= 0 or image_size % stride:
        raise ValueError(
            f"image size {image_size} must be a positive multiple of {spec.name}'s encoder "
            f"stride {stride} (e.g. 256, 512, 1024)"
        )


def build_sam(spec: SamSpec, image_size: int | None = None, window_size: int | None = None) -> Sam:
    """The parts of ``spec`` for S x S inputs (default: its own pretraining size), in eval mode.

    The image encoder is the family's (``ssam.sam.families``) at S; ``window_size`` is passed
    to it (ViT: the windowed blocks' window, e.g. SAM's own 14 at any size, padded as
    ``segment_anything`` pads, which is what stock SAM runs). The prompt encoder's grid is the
    encoder's output grid. Load weights with ``ssam.sam.checkpoint.load_sam_weights``. Under
    ``torch.device("meta")`` this builds the structure without allocating weights.
    """
    image_size = image_size or spec.pretrain_image_size
    check_image_size(spec, image_size)
    family = get_family(spec)
    grid = family.grid(spec, image_size)
    sam = Sam(
        image_encoder=family.build_encoder(spec, image_size, window_size),
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


def _fill_index_buffers(sam: Sam) -> None:
    """Recompute buffers that no checkpoint holds and ``to_empty`` left uninitialised: SAM's
    pixel mean and std, and TinyViT's relative-offset index tables."""
    from ssam.sam.tiny_vit import Attention, relative_offset_index

    with torch.no_grad():
        sam.pixel_mean.copy_(torch.tensor(PIXEL_MEAN).view(-1, 1, 1))
        sam.pixel_std.copy_(torch.tensor(PIXEL_STD).view(-1, 1, 1))
        for module in sam.modules():
            if isinstance(module, Attention):
                window = int(round(module.attention_bias_idxs.shape[0] ** 0.5))
                module.attention_bias_idxs.copy_(relative_offset_index(window)[0])


def build_empty_sam(spec: SamSpec, image_size: int | None = None) -> Sam:
    """``build_sam`` with uninitialised CPU storage, for loading a checkpoint over all of it.

    Skips PyTorch's random initialisation (0.5 s for ViT-B, 2 s for ViT-L on 2 cores), which
    a checkpoint would overwrite anyway. Only the buffers no checkpoint holds are filled here.
    """
    with torch.device("meta"):
        sam = build_sam(spec, image_size)
    sam = sam.to_empty(device="cpu")
    _fill_index_buffers(sam)
    return sam


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def build_random_sam(spec: SamSpec, seed: int, image_size: int | None = None) -> Sam:
    """The parts of ``spec`` with seeded random weights (PyTorch's default initialisation), the
    zero-initialised position tables filled with N(0, 0.02) so that they matter.

    For tests and benchmarks; timings do not depend on values.
    """
    tables = get_family(spec).position_tables + ("attention_biases",)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam(spec, image_size)
        with torch.no_grad():
            for name, param in sam.named_parameters():
                if name.endswith(tables):
                    param.normal_(0.0, 0.02)
    return sam
