"""What the benchmark suite runs: the compared models, a training step and an inference call on
fixed random inputs, and the measurements that need a fresh process (peak RSS, load time, time
to first mask).

Speed does not depend on weight values, so the base is a seeded random SAM saved in the official
key layout, and the text encoder is CLIP ViT-B/32's real-size text tower with seeded random
weights saved as a file (its size is part of every model's memory; a training or inference step
never runs CLIP: label features are passed as tensors, DESIGN.md 5).

Configurations:
* training: every method of ``ssam.tuning.methods.METHODS`` (built by ``create_model``) and two
  baselines of SAM's official ``segment_anything`` modules, no SVD, every parameter trained,
  behind the same label-token wrapper: ``sam_same_layout`` (``build_sam(spec, S)``: the S-SAM
  model's encoder layout, so the ratio is the SVD's own cost) and ``sam_stock`` (what a user of
  ``segment_anything`` runs at S: SAM's own 14-token windows, padded, e.g. 16x16 tokens to
  28x28 at 256);
* inference: ``ssam_adapted`` (eval, W' cached), ``ssam_merged`` (``merge_svd``) and the two
  baselines as loaded.

Run as ``python -m workloads FUNCTION SETUP_JSON ARGS_JSON`` (with bench/ on the path), a child
function runs in a fresh interpreter and prints its result as JSON on the last line
(``measure.FreshProcessRunner``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from measure import current_rss_mib, peak_rss_mib, time_call
from ssam.config.model import ModelConfig
from ssam.factory import create_model
from ssam.model import SSAM
from ssam.sam.build import build_random_sam, build_sam
from ssam.sam.checkpoint import load_sam_weights, save_state_dict
from ssam.sam.variants import get_sam_spec
from ssam.text import TextAffine, build_text_encoder, build_text_tower, get_text_spec
from ssam.train.losses import segmentation_loss
from ssam.tuning.adapter import save_adapter
from ssam.tuning.methods import METHODS
from ssam.tuning.svd import merge_svd

SAME_LAYOUT = "sam_same_layout"  # official modules in the S-SAM model's layout: SVD overhead
STOCK = "sam_stock"  # official modules as segment_anything builds them at S: SAM's windows
BASELINES = (SAME_LAYOUT, STOCK)
TRAIN_CONFIGS = (*METHODS, *BASELINES)
INFER_CONFIGS = ("ssam_adapted", "ssam_merged", *BASELINES)
TEXT_ENCODER = "clip_vit_b32"  # the real-size tower (random weights): its memory counts
SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


@dataclass(frozen=True)
class BenchSetup:
    """Everything a (possibly fresh) process needs to rebuild the compared models."""

    variant: str
    image_size: int
    checkpoint: str
    cache_dir: str
    threads: int
    work_dir: str
    clip_checkpoint: str


def write_moved_adapter(
    variant: str, size: int, folder: Path, labels: list[str]
) -> tuple[Path, Path]:
    """A random base (``write_random_checkpoint``) and an adapter on it with every trainable
    tensor moved a little (so merging changes weights), tiny text tower: (base, adapter)."""
    base = write_random_checkpoint(variant, folder)
    config = ModelConfig(
        variant=variant, image_size=size, sam_checkpoint=base, text_encoder="tiny",
        allow_download=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = create_model(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.02 * torch.randn_like(param))
    return base, save_adapter(model, folder / "adapter.safetensors", labels=labels)


def write_random_clip(folder: Path, seed: int = 0) -> Path:
    """Seeded random weights of ``TEXT_ENCODER``'s text tower, as an open_clip state dict."""
    torch.manual_seed(seed)
    tower = build_text_tower(get_text_spec(TEXT_ENCODER))
    return save_state_dict(tower.state_dict(), folder / f"{TEXT_ENCODER}_random.pt")


def write_random_checkpoint(variant: str, folder: Path, seed: int = 0) -> Path:
    """A seeded random SAM ``variant`` at its own 1024 input, in the official key layout."""
    sam = build_random_sam(get_sam_spec(variant), seed=seed)
    return save_state_dict(sam.state_dict(), folder / f"sam_{variant}_random.pth")


def model_config(setup: BenchSetup, method: str = "ssam") -> ModelConfig:
    return ModelConfig(
        variant=setup.variant,
        image_size=setup.image_size,
        sam_checkpoint=Path(setup.checkpoint),
        clip_checkpoint=Path(setup.clip_checkpoint),
        text_encoder=TEXT_ENCODER,
        method=method,
        allow_download=False,
    )


def build_plain_sam(setup: BenchSetup, checkpoint: str | None = None, stock: bool = False) -> SSAM:
    """Official SAM modules at S (no SVD) behind the label-token wrapper, all parameters
    trainable, with the frozen text encoder; ``checkpoint`` defaults to the random base (a
    merged checkpoint works too); ``stock``: SAM's own window (``STOCK``), else the S-SAM
    model's layout (``SAME_LAYOUT``)."""
    spec = get_sam_spec(setup.variant)
    # TinyViT's windows do not depend on S: its stock build is the same layout.
    window = getattr(spec.encoder, "window_size", None) if stock else None
    sam = build_sam(spec, setup.image_size, window)
    load_sam_weights(sam, checkpoint or setup.checkpoint, spec)
    text_dim = get_text_spec(TEXT_ENCODER).embed_dim
    model = SSAM(
        sam, TextAffine(text_dim, spec.prompt_embed_dim), None, setup.image_size, variant=spec.name
    )
    model.requires_grad_(True)
    model.text_encoder = build_text_encoder(TEXT_ENCODER, setup.clip_checkpoint)  # frozen
    return model


def load_merged_model(setup: BenchSetup, checkpoint: str) -> SSAM:
    """A ready inference model from a merged checkpoint: official modules, no SVD, + text."""
    return build_plain_sam(setup, checkpoint).requires_grad_(False).eval()


def build_training_model(setup: BenchSetup, name: str) -> nn.Module:
    if name in BASELINES:
        return build_plain_sam(setup, stock=name == STOCK)
    return create_model(model_config(setup, name))


def build_inference_model(setup: BenchSetup, name: str) -> nn.Module:
    if name in BASELINES:
        return build_plain_sam(setup, stock=name == STOCK).requires_grad_(False).eval()
    model = create_model(model_config(setup, "ssam"))
    if name == "ssam_merged":
        merge_svd(model)
    return model.eval()


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (the paper's lr 1e-4, weight decay 1e-2)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)


def make_inputs(model: SSAM, batch: int, seed: int = 0):
    """Images (B, 3, S, S), label features (B, D) and binary targets (B, 1, S, S)."""
    size = model.image_size
    g = torch.Generator().manual_seed(seed + batch)
    images = torch.randn(batch, 3, size, size, generator=g)
    features = torch.randn(batch, model.text_affine.linear.in_features, generator=g)
    target = (torch.rand(batch, 1, size, size, generator=g) > 0.5).float()
    return images, features, target


def make_train_step(
    model: SSAM, optimizer: torch.optim.Optimizer, batch: int
) -> Callable[[], None]:
    """One optimiser step: zero grads, forward, focal + Dice loss, backward, AdamW step."""
    images, features, target = make_inputs(model, batch)

    def step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        segmentation_loss(model(images, features), target).backward()
        optimizer.step()

    return step


def make_infer_step(model: SSAM, batch: int) -> Callable[[], None]:
    """Inference on B images (eval mode, ``torch.inference_mode``): logits (B, 1, S, S)."""
    images, features, _ = make_inputs(model, batch)

    def step() -> None:
        model.eval()
        with torch.inference_mode():
            model(images, features)

    return step


def make_encoder_step(model: SSAM, batch: int) -> Callable[[], None]:
    """The image encoder alone on B images, in inference mode."""
    images, _, _ = make_inputs(model, batch)

    def step() -> None:
        with torch.inference_mode():
            model.image_encoder(images)

    return step


def adapter_size_bytes(model: nn.Module, folder: str) -> int:
    """Size of the adapter file of ``model`` (trainable tensors + JSON config)."""
    fd, name = tempfile.mkstemp(dir=folder, suffix=".safetensors")
    os.close(fd)
    try:
        return save_adapter(model, name).stat().st_size
    finally:
        Path(name).unlink(missing_ok=True)


# ---- measurements made in a fresh process (see measure.FreshProcessRunner) ----


def _enter_child(setup: BenchSetup, cache_dir: str | None = None) -> float:
    """Fix threads and cache folder; returns the RSS the process starts from (MiB)."""
    torch.set_num_threads(setup.threads)
    os.environ["SSAM_CACHE"] = cache_dir or setup.cache_dir
    return current_rss_mib()


def train_child(setup: BenchSetup, name: str, batch: int, steps: int) -> dict:
    """Peak RSS (MiB) of building configuration ``name`` and training it ``steps`` steps."""
    baseline = _enter_child(setup)
    model = build_training_model(setup, name)
    built = current_rss_mib()
    step = make_train_step(model, make_optimizer(model), batch)
    times = [time_call(step) for _ in range(steps)]
    return {"baseline_rss_mib": baseline, "model_rss_mib": built, "peak_rss_mib": peak_rss_mib(),
            "step_s": times}  # fmt: skip


def infer_child(setup: BenchSetup, name: str, batch: int, steps: int) -> dict:
    """Peak RSS (MiB) of building inference configuration ``name`` and running it."""
    baseline = _enter_child(setup)
    model = build_inference_model(setup, name)
    built = current_rss_mib()
    step = make_infer_step(model, batch)
    times = [time_call(step) for _ in range(steps)]
    return {"baseline_rss_mib": baseline, "model_rss_mib": built, "peak_rss_mib": peak_rss_mib(),
            "step_s": times}  # fmt: skip


def load_child(setup: BenchSetup, kind: str, cache_dir: str) -> dict:
    """Seconds from checkpoint file to ready model, in a fresh process (imports done first).

    ``svd_first``: S-SAM with an empty SVD cache (SVD computed and cached); ``svd_cached``: S-SAM
    again, factors from the cache (then writes the merged checkpoint); ``merged``: official
    modules from that merged checkpoint, no SVD.
    """
    _enter_child(setup, cache_dir)
    merged_path = str(Path(setup.work_dir) / "merged.pth")
    start = time.perf_counter()
    if kind == "merged":
        model = load_merged_model(setup, merged_path)
    else:
        model = create_model(model_config(setup, "ssam"))
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "peak_rss_mib": peak_rss_mib()}
    if kind == "svd_cached":
        merge_svd(model)
        state = {k: v for k, v in model.state_dict().items() if k.startswith(SAM_PARTS)}
        save_state_dict(state, merged_path)
    return result


CHILDREN = {"train_child": train_child, "infer_child": infer_child, "load_child": load_child}


def run_child(argv: list[str]) -> None:
    """``FUNCTION SETUP_JSON ARGS_JSON``: run one child function, print its result as JSON."""
    name, setup, args = argv[0], BenchSetup(**json.loads(argv[1])), json.loads(argv[2])
    print(json.dumps(CHILDREN[name](setup, *args)))


def child_command(name: str, setup: BenchSetup, *args) -> list[str]:
    """The command line running child function ``name`` in a fresh interpreter."""
    return [sys.executable, "-m", "workloads", name, json.dumps(asdict(setup)), json.dumps(args)]


if __name__ == "__main__":
    run_child(sys.argv[1:])
