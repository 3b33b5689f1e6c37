"""The values a choice option takes, as ``Literal`` types (Typer turns them into choices:
help lists them, a wrong value is refused naming them). Importing them must not import torch.

Each mirrors a library registry (tests check they agree): ``ssam.sam.variants.SAM_VARIANTS``,
``ssam.tuning.methods.METHODS``, ``ssam.config.data.IntensityPreset``,
``ssam.evaluation.evaluate.SPLITS`` and ``ssam.inference.backends.BACKENDS``. Those modules
load torch, which ``ssam --help`` must not.
"""

from __future__ import annotations

from typing import Literal, get_args

Intensity = Literal["auto", "rgb", "minmax", "ct", "mri"]
# ``--intensity`` of predict and serve: ``trained`` (the adapter's recorded mapping, the
# default) or one of the presets (``auto``: chosen per input by its stored type).
IntensityOption = Literal["trained", "auto", "rgb", "minmax", "ct", "mri"]
Variant = Literal["litemedsam", "vit_b", "vit_l", "vit_h", "medsam_vit_b", "tiny"]
Method = Literal["ssam", "lora", "bias", "decoder", "token", "full"]
Split = Literal["train", "val", "test", "all"]
Backend = Literal["torch", "torch-compile", "onnx", "onnx-int8"]

INTENSITY_PRESETS: tuple[str, ...] = get_args(Intensity)
SAM_VARIANTS: tuple[str, ...] = get_args(Variant)
METHODS: tuple[str, ...] = get_args(Method)
SPLITS: tuple[str, ...] = get_args(Split)
BACKENDS: tuple[str, ...] = get_args(Backend)
BACKEND_HELP = (
    "where the model runs (torch-compile: the image encoder compiled at start, tens of "
    "seconds; onnx: onnxruntime, exported once and cached)"
)
