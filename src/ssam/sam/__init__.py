"""Official SAM modules at any input size, their variants and checkpoints."""

from ssam.sam.build import PIXEL_MEAN, PIXEL_STD, build_sam
from ssam.sam.checkpoint import adapt_state_dict, load_sam_weights, read_state_dict
from ssam.sam.variants import SAM_VARIANTS, SamSpec, compute_window_size, get_sam_spec

__all__ = [
    "PIXEL_MEAN",
    "PIXEL_STD",
    "SAM_VARIANTS",
    "SamSpec",
    "adapt_state_dict",
    "build_sam",
    "compute_window_size",
    "get_sam_spec",
    "load_sam_weights",
    "read_state_dict",
]
