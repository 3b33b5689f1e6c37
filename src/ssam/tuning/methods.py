"""Fine-tuning methods: what each injects into SAM and which parameters it trains.

A method is a list of named parameter groups (regular expressions over parameter names) plus an
optional injection step run on the plain SAM before its parameters are grouped. Where the groups
depend on the encoder, the method names an attribute of the base's encoder family
(``ssam.sam.families``: ``ssam_groups``, ``norm_groups``) instead of a group. ``ssam`` is the
paper's set (DESIGN.md 3; on TinyViT DESIGN.md 1b); the others are the comparison methods,
sharing everything else (data, loss, label-name prompt, evaluation):

* ``lora``: rank-r LoRA on the query and value rows of every encoder ``attn.qkv`` (SAMed's
  placement; rank ``ModelConfig.lora_rank``, default 4 as SAMed) + text affine. SAMed itself also
  fine-tunes the whole mask decoder; here only the encoder adaptation is compared.
* ``bias``: every bias of the image encoder, its LayerNorms, the decoder transformer's
  LayerNorms + text affine (AdaptiveSAM's bias tuning; its code also trains the positional
  embedding, the prompt encoder and the whole mask decoder).
* ``decoder``: the whole mask decoder + text affine; the encoder stays pretrained SAM.
* ``token``: the label token alone: text affine + the decoder transformer's LayerNorms (a few
  thousand parameters); encoder and decoder stay pretrained SAM.
* ``full``: every SAM parameter + text affine (CLIP stays frozen).

Methods that leave the image encoder frozen (``trains_encoder`` False: ``decoder``, ``token``)
train on image embeddings computed once per image (``TrainConfig.cache_embeddings``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ssam.errors import ConfigError
from ssam.sam.families import EncoderFamily, get_family

Group = tuple[str, str]


@dataclass(frozen=True)
class Method:
    """Trainable parameter groups (name -> regex over parameter names; a parameter belongs to
    the first group it matches; a plain string names the encoder family's attribute holding
    more groups) and an injection step (a key of ``ssam.factory.INJECTORS``: ``"svd"``
    SVD-tunes the ``svd_targets``, ``"lora"`` adds LoRA; None: train SAM's own parameters).
    ``trains_encoder``: whether any image-encoder parameter trains (False: the encoder's
    output for an image never changes, so training may compute it once)."""

    name: str
    groups: tuple[Group | str, ...]
    inject: str | None = None
    description: str = ""
    trains_encoder: bool = True

    def resolve_groups(self, family: EncoderFamily) -> tuple[Group, ...]:
        """The groups on an encoder of ``family``, its own groups spliced in."""
        out: list[Group] = []
        for group in self.groups:
            out += getattr(family, group) if isinstance(group, str) else [group]
        return tuple(out)


_TEXT_AFFINE = ("text affine", r"^text_affine\.")
_DECODER_NORMS = (
    "decoder transformer LayerNorms",
    r"^mask_decoder\.transformer\.(layers\.\d+\.norm\d|norm_final_attn)\.",
)

_SSAM_GROUPS = (
    ("svd scale and shift", r"\.svd_(scale|shift)$"),
    "ssam_groups",
    _DECODER_NORMS,
    _TEXT_AFFINE,
)

METHODS: dict[str, Method] = {
    "ssam": Method(
        "ssam",
        _SSAM_GROUPS,
        inject="svd",
        description="singular-value scale and shift + norms + positions + text affine (paper)",
    ),
    "lora": Method(
        "lora",
        (("lora down and up", r"\.lora_[AB]$"), _TEXT_AFFINE),
        inject="lora",
        description="rank-r LoRA on q and v of the encoder's qkv (SAMed) + text affine",
    ),
    "bias": Method(
        "bias",
        (
            "norm_groups",
            ("encoder biases", r"^image_encoder\..*\.bias$"),
            _DECODER_NORMS,
            _TEXT_AFFINE,
        ),
        description="encoder biases + LayerNorms + text affine (AdaptiveSAM's bias tuning)",
    ),
    "decoder": Method(
        "decoder",
        (("mask decoder", r"^mask_decoder\."), _TEXT_AFFINE),
        description="the whole mask decoder + text affine; pretrained encoder",
        trains_encoder=False,
    ),
    "token": Method(
        "token",
        (_DECODER_NORMS, _TEXT_AFFINE),
        description="the label token: text affine + decoder LayerNorms; pretrained SAM",
        trains_encoder=False,
    ),
    "full": Method(
        "full",
        (
            ("image encoder", r"^image_encoder\."),
            ("prompt encoder", r"^prompt_encoder\."),
            ("mask decoder", r"^mask_decoder\."),
            _TEXT_AFFINE,
        ),
        description="every SAM parameter + text affine (CLIP frozen)",
    ),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}") from None


def configure_trainable(model: nn.Module, method: str | Method) -> dict[str, int]:
    """Freeze ``model`` (an ``SSAM``, whose ``variant`` gives the encoder family) except
    ``method``'s groups; returns the parameter count per group.

    A group that matches nothing is an error: the model and the method do not fit together.
    """
    method = get_method(method) if isinstance(method, str) else method
    groups = method.resolve_groups(get_family(model.variant))
    patterns = [(group, re.compile(rx)) for group, rx in groups]
    counts = dict.fromkeys((g for g, _ in patterns), 0)
    for name, param in model.named_parameters():
        group = next((g for g, rx in patterns if rx.search(name)), None)
        frozen_here = name.startswith("text_encoder.")
        param.requires_grad_(group is not None and not frozen_here)
        if group is not None and not frozen_here:
            counts[group] += param.numel()
    empty = [g for g, n in counts.items() if n == 0]
    if empty:
        raise ConfigError(f"method {method.name}: no parameter matches group(s) {empty}")
    return counts


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]
