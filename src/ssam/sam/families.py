"""Encoder families: how each kind of base model is built and what S-SAM tunes in it, as data.

A ``SamSpec`` names its family; everything that differs between SAM's ViT and LiteMedSAM's
TinyViT lives here, so no code asks which variant it holds:

* ``build_encoder``: (spec, input size S, window or None) -> image encoder module;
* ``stride``: input pixels per image-embedding cell (ViT: its patch size; TinyViT: 4), so the
  embedding grid is S / stride and the mask decoder's logits come out at 4 x that;
* ``normalisation``: pixels as the base was trained: ``sam`` (0-255 minus SAM's pixel mean,
  over its std) or ``minmax`` (per image to [0, 1], as LiteMedSAM);
* ``position_tables``: parameters sized by S, fitted when a checkpoint is loaded at another size
  (and drawn at random for random test models);
* ``svd_targets``: glob patterns of the Linear/Conv2d layers S-SAM factorises;
* ``ssam_groups`` / ``norm_groups``: the encoder's own trainable groups (name, regex over
  parameter names) under S-SAM, and its normalisation layers (bias tuning trains them);
* ``lora_qkv`` and ``qkv_per_head``: where LoRA goes (the fused qkv projections) and whether
  their rows are ordered q, k, v per head (TinyViT) rather than all q, all k, all v (ViT);
* ``signature``: what a checkpoint's encoder looks like, to name the variant a foreign file is;
* ``prepare_inference``: in-place, inference-only speed-ups of an eval-mode encoder that keep
  its outputs to float error (TinyViT: BatchNorm folding, channels-last convolutions, one
  image per pass on a CPU);
* ``compiled_method``: the encoder method ``--backend torch-compile`` compiles (TinyViT:
  ``encode``, one pass, under the ``forward`` that splits a CPU batch into one-image passes,
  so on a CPU one graph serves every batch size);
* ``train_bytes_per_pixel``: activation memory of a training pass (S-SAM, float32) per input
  pixel, measured: what ``micro_batch_size: auto`` plans with; ``checkpointed_bytes_per_pixel``
  the same with activation checkpointing of the encoder's early stages (None: the family's
  encoder offers none);
* ``cpu_pass_pixels``: on a CPU, the most input pixels per training pass that still run fastest
  (None: no limit beyond memory). Passes through TinyViT's full-resolution stage slow down per
  image as they grow (its tensors outgrow the caches): fwd+bwd per image on two cores, passes of
  1/2/4 images, 0.83/0.79/1.01 s at 128 px (3 images: 1.08 against 2's 0.96 in another run),
  1.20/1.07/1.61 s at 160, 1.60/2.09 s (1/2) at 192, 2.87/4.35/8.27 s at 256;
* ``cpu_image_size``: the input size to train at on a CPU (None: no advice). TinyViT: 160 px,
  from bench/input_size.py (S-SAM on Kvasir-SEG, the same 20 steps at each size, two cores:
  Dice 0.350 / 0.427 / 0.448 / 0.398 at 256 / 192 / 160 / 128 px, 3.66 / 2.15 / 1.25 / 1.16 s
  per training image); ``ssam train`` says so above it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ssam.sam.tiny_vit import build_tiny_vit_encoder, prepare_inference
from ssam.sam.variants import SAM_VARIANTS, SamSpec
from ssam.sam.vit import build_vit_encoder

Groups = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class EncoderFamily:
    name: str
    build_encoder: Callable[[SamSpec, int, int | None], nn.Module]
    stride: Callable[[SamSpec], int]
    normalisation: str
    position_tables: tuple[str, ...]
    svd_targets: tuple[str, ...]
    ssam_groups: Groups
    norm_groups: Groups
    lora_qkv: str
    qkv_per_head: bool
    signature: Callable[[Mapping[str, torch.Tensor]], tuple | None]
    spec_signature: Callable[[SamSpec], tuple]
    train_bytes_per_pixel: float
    checkpointed_bytes_per_pixel: float | None = None
    cpu_pass_pixels: int | None = None
    cpu_image_size: int | None = None
    prepare_inference: Callable[[nn.Module], None] = lambda encoder: None
    compiled_method: str = "forward"

    def grid(self, spec: SamSpec, image_size: int) -> int:
        """Side of the image embedding for S x S inputs."""
        return image_size // self.stride(spec)


def _vit_signature(state: Mapping[str, torch.Tensor]) -> tuple | None:
    """(embed dim, depth) of a ViT encoder in ``state``; None if it holds none."""
    pos = state.get("image_encoder.pos_embed")
    if pos is None:
        return None
    blocks = {
        int(m.group(1)) for k in state if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))
    }
    return int(pos.shape[-1]), len(blocks)


def _tiny_vit_signature(state: Mapping[str, torch.Tensor]) -> tuple | None:
    """(stage widths, depths) of a TinyViT encoder in ``state``; None if it holds none."""
    depths: dict[int, set[int]] = {}
    widths: dict[int, int] = {}
    for key, value in state.items():
        m = re.match(
            r"image_encoder\.layers\.(\d+)\.blocks\.(\d+)\.(conv1\.c|attn\.qkv)\.weight$", key
        )
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            depths.setdefault(stage, set()).add(block)
            widths[stage] = int(value.shape[1])
    if not depths:
        return None
    stages = sorted(depths)
    return tuple(widths[s] for s in stages), tuple(len(depths[s]) for s in stages)


VIT = EncoderFamily(
    name="vit",
    build_encoder=build_vit_encoder,
    stride=lambda spec: spec.encoder.patch_size,
    normalisation="sam",
    position_tables=("pos_embed", "rel_pos_h", "rel_pos_w"),
    svd_targets=(
        "image_encoder.blocks.*.attn.qkv",
        "image_encoder.blocks.*.attn.proj",
        "image_encoder.blocks.*.mlp.lin1",
        "image_encoder.blocks.*.mlp.lin2",
        "image_encoder.neck.0",
        "image_encoder.neck.2",
    ),
    ssam_groups=(
        ("encoder block LayerNorms", r"^image_encoder\.blocks\.\d+\.norm[12]\."),
        ("encoder positional embedding", r"^image_encoder\.pos_embed$"),
    ),
    norm_groups=(("encoder LayerNorms", r"^image_encoder\.(blocks\.\d+\.norm[12]|neck\.[13])\."),),
    lora_qkv="image_encoder.blocks.*.attn.qkv",
    qkv_per_head=False,
    signature=_vit_signature,
    spec_signature=lambda spec: (spec.encoder.embed_dim, spec.encoder.depth),
    train_bytes_per_pixel=8_000,
)

_TINY_VIT_NORMS = r"^image_encoder\.(layers\.\d+\.blocks\.\d+\.(attn|mlp)\.norm|neck\.[13])\."
TINY_VIT = EncoderFamily(
    name="tinyvit",
    build_encoder=build_tiny_vit_encoder,
    stride=lambda spec: math.prod(spec.encoder.merge_strides),
    normalisation="minmax",
    position_tables=(),  # attention_biases depend on the window, not on S
    # Every Linear and Conv2d of the encoder, depthwise convs included (DESIGN.md 1b).
    svd_targets=("image_encoder.*",),
    ssam_groups=(
        ("encoder LayerNorms", _TINY_VIT_NORMS),
        ("encoder BatchNorm affine", r"^image_encoder\..*\.bn\.(weight|bias)$"),
        ("encoder attention biases", r"^image_encoder\..*\.attention_biases$"),
    ),
    norm_groups=(("encoder LayerNorms", _TINY_VIT_NORMS),),
    lora_qkv="image_encoder.layers.*.attn.qkv",
    qkv_per_head=True,
    signature=_tiny_vit_signature,
    spec_signature=lambda spec: (spec.encoder.embed_dims, spec.encoder.depths),
    # 2.4 GiB per 256 x 256 image: stage 0 keeps 256 channels at full resolution; with
    # stages 0-1 checkpointed (TinyViT.checkpoint_stages(2)) 1.5 GiB.
    train_bytes_per_pixel=41_000,
    checkpointed_bytes_per_pixel=25_000,
    cpu_pass_pixels=2 * 128 * 128,  # 2 images at 128 px, 1 from 160 px up
    cpu_image_size=160,
    prepare_inference=prepare_inference,
    compiled_method="encode",
)

FAMILIES: dict[str, EncoderFamily] = {f.name: f for f in (VIT, TINY_VIT)}


def get_family(spec: SamSpec | str) -> EncoderFamily:
    """The family of ``spec`` (or of the variant named so)."""
    if isinstance(spec, str):
        spec = SAM_VARIANTS[spec]
    return FAMILIES[spec.family]


def guess_variants(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Registered variants whose encoder looks like the one in ``state``."""
    names = []
    for family in FAMILIES.values():
        found = family.signature(state)
        if found is not None:
            names += [
                s.name
                for s in SAM_VARIANTS.values()
                if s.family == family.name and family.spec_signature(s) == found
            ]
    return names
