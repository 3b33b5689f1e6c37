"""Base models (SAM ViT, LiteMedSAM's TinyViT) at any input size, their variants and checkpoints."""

from ssam.sam.build import PIXEL_MEAN, PIXEL_STD, build_sam
from ssam.sam.checkpoint import adapt_state_dict, load_sam_weights, read_state_dict
from ssam.sam.families import FAMILIES, EncoderFamily, get_family
from ssam.sam.variants import DEFAULT_VARIANT, SAM_VARIANTS, SamSpec, get_sam_spec
from ssam.sam.vit import compute_window_size

__all__ = [
    "DEFAULT_VARIANT",
    "FAMILIES",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "SAM_VARIANTS",
    "EncoderFamily",
    "SamSpec",
    "adapt_state_dict",
    "build_sam",
    "compute_window_size",
    "get_family",
    "get_sam_spec",
    "load_sam_weights",
    "read_state_dict",
]
