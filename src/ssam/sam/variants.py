"""The SAM variants S-SAM can adapt: a plain registry of architecture specs and official files.

Each spec reproduces ``segment_anything.build_sam``'s ``_build_sam`` arguments; ``tiny`` keeps the
same architecture (windowed and global attention blocks, relative positions, neck, prompt encoder,
two-way decoder) at a size that builds and runs in milliseconds, for tests and demos.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssam.weights import WeightsFile

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class SamSpec:
    """Architecture of one SAM variant (``_build_sam`` arguments) and its official weights."""

    name: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    patch_size: int = 16
    window_size: int = 14
    pretrain_image_size: int = 1024
    weights: WeightsFile | None = None


SAM_VARIANTS: dict[str, SamSpec] = {
    "vit_b": SamSpec(
        "vit_b",
        768,
        12,
        12,
        (2, 5, 8, 11),
        weights=WeightsFile(
            "sam_vit_b_01ec64.pth",
            _SAM_URL + "sam_vit_b_01ec64.pth",
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        ),
    ),
    "vit_l": SamSpec(
        "vit_l",
        1024,
        24,
        16,
        (5, 11, 17, 23),
        weights=WeightsFile(
            "sam_vit_l_0b3195.pth",
            _SAM_URL + "sam_vit_l_0b3195.pth",
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        ),
    ),
    "vit_h": SamSpec(
        "vit_h",
        1280,
        32,
        16,
        (7, 15, 23, 31),
        weights=WeightsFile(
            "sam_vit_h_4b8939.pth",
            _SAM_URL + "sam_vit_h_4b8939.pth",
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        ),
    ),
    # MedSAM (Ma et al. 2024) ships a ViT-B checkpoint in SAM's key layout; users pass its path.
    "medsam_vit_b": SamSpec("medsam_vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "tiny": SamSpec(
        "tiny",
        encoder_embed_dim=32,
        encoder_depth=4,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1, 3),
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
        mask_in_chans=4,
    ),
    # The offline demo's foundation model: small enough to pre-train on 2 CPU cores in a
    # minute, at its own 128-pixel input. Patches of 8 pixels give it SAM's 16x16 token grid
    # at 256 (and a 32x32 mask), which small structures such as a lesion need; windowed
    # blocks see 8x8 tokens, the other two the whole grid.
    "demo": SamSpec(
        "demo",
        encoder_embed_dim=64,
        encoder_depth=4,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1, 3),
        prompt_embed_dim=64,
        decoder_mlp_dim=128,
        decoder_num_heads=2,
        iou_head_hidden_dim=64,
        mask_in_chans=4,
        window_size=8,
        pretrain_image_size=128,
        patch_size=8,
    ),
}


def get_sam_spec(name: str) -> SamSpec:
    """The spec registered under ``name``; a ValueError lists the known names."""
    try:
        return SAM_VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown SAM variant {name!r}; known: {', '.join(sorted(SAM_VARIANTS))}"
        ) from None


def compute_window_size(spec: SamSpec, image_size: int) -> int:
    """Attention window of the windowed blocks at ``image_size`` (DESIGN.md 4).

    At SAM's pretraining size it is SAM's own (14, padded as SAM pads). At any other size it is
    the divisor of the token grid closest to 14 (ties: the larger) among those of at least half
    SAM's window (7), so no window holds padding and none is so small that tokens attend only
    to a few neighbours: a 16x16 grid (input 256) gets one 16x16 window, a 32x32 grid (512) four
    16x16 windows, a prime grid such as 31 (496) one 31x31 window (global attention) and a 58
    grid (928) four 29x29 windows. Grids below 7 tokens attend globally.
    """
    grid = image_size // spec.patch_size
    if image_size == spec.pretrain_image_size:
        return spec.window_size
    smallest = -(-spec.window_size // 2)
    divisors = [d for d in range(smallest, grid + 1) if grid % d == 0] or [grid]
    return min(divisors, key=lambda d: (abs(d - spec.window_size), -d))
