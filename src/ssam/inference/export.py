"""ONNX export of the image encoder and the label-prompted mask decoder, and its check.

Two graphs (TorchScript-based exporter, ``dynamo=False``: the dynamo exporter needs
``onnxscript``, which the project does not depend on):

* ``image_encoder.onnx``: ``images`` (B, 3, S, S) float32, normalised as the base expects
  (``normalisation`` in ``export.json``: ``sam``, (x - pixel_mean) / pixel_std, or ``minmax``,
  per image to [0, 1]; zero-padded bottom/right) -> ``image_embeddings`` (B, C, S/p, S/p), p
  the encoder's stride (16 in SAM ViT, 4 in LiteMedSAM's TinyViT); B is dynamic.
* ``mask_decoder.onnx``: ``image_embeddings`` (1, C, S/p, S/p) [+ ``label_tokens``
  (L, 1, C) when exported with ``tokens_as_input``; L dynamic] -> ``logits`` (L, S, S),
  the decoder's low-res logits upsampled bilinearly to S (crop the padding and resize to
  the original size afterwards, as ``ssam.data.transforms.restore_to_original``). By default
  the tokens of the exported labels are constants of the graph.

The exported model has the adapter merged (plain Linear/Conv layers). ``export.json``
records the sizes, the labels in output order, the pixel normalisation (with SAM's mean/std)
and the tensor names;
with ``tokens_as_input`` the labels' tokens are saved as ``label_tokens.npy``.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ssam.data.transforms import SAM_PIXEL_MEAN, SAM_PIXEL_STD, preprocess_image
from ssam.inference.merge import merge_adapted_weights
from ssam.model import SSAM

OPSET = 17


class ImageEncoderGraph(nn.Module):
    """images (B, 3, S, S) normalised -> image embeddings (B, C, S/p, S/p)."""

    def __init__(self, model: SSAM) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)


class MaskDecoderGraph(nn.Module):
    """image embedding (1, C, h, w) [+ tokens (L, 1, C)] -> logits (L, S, S).

    With ``tokens`` given at construction they are a constant of the graph.
    """

    def __init__(self, model: SSAM, tokens: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("tokens", None if tokens is None else tokens.detach().clone())

    def forward(self, image_embeddings: torch.Tensor, label_tokens: torch.Tensor | None = None):
        tokens = self.tokens if label_tokens is None else label_tokens
        # SSAM.decode without points or boxes, spelled out: its empty (1, 0, C) sparse set
        # is mis-shaped by the exporter, and cat(empty, tokens) is just the tokens.
        prompt_encoder = self.model.prompt_encoder
        grid = prompt_encoder.image_embedding_size
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = dense.expand(tokens.shape[0], -1, grid[0], grid[1])
        low_res, _ = self.model.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=tokens,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return self.model.upscale(low_res)[:, 0]


@dataclass(frozen=True)
class OnnxFiles:
    """Paths of an export and the labels its decoder outputs, in order."""

    encoder: Path
    decoder: Path
    config: Path
    labels: tuple[str, ...]
    tokens_as_input: bool


def prepare_for_export(model: SSAM) -> SSAM:
    """An eval-mode copy with the adapter merged (the input model is left as it is)."""
    copied = copy.deepcopy(model).eval().requires_grad_(False)
    return merge_adapted_weights(copied)  # a no-op on a model loaded merged


def _export(module: nn.Module, args: tuple, path: Path, names: dict, dynamic: dict) -> None:
    with warnings.catch_warnings():
        # The tracer's notes (shape-dependent Python branches) and the exporter's
        # deprecation notice are expected here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            input_names=names["inputs"],
            output_names=names["outputs"],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
        )


@torch.no_grad()
def export_onnx(
    model: SSAM,
    output_dir: Path | str,
    labels: Sequence[str],
    tokens_as_input: bool = False,
) -> OnnxFiles:
    """Write ``image_encoder.onnx``, ``mask_decoder.onnx`` and ``export.json`` to ``output_dir``.

    ``labels``: the label names whose tokens are baked into the decoder (or saved beside
    it with ``tokens_as_input``), at least one.
    """
    if not labels:
        raise ValueError("export needs at least one label name")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    merged = prepare_for_export(model)
    size = merged.image_size
    tokens = merged.label_tokens(list(labels)).float()
    images = torch.randn(1, 3, size, size)
    encoder_path = output_dir / "image_encoder.onnx"
    encoder_io = {"inputs": ["images"], "outputs": ["image_embeddings"]}
    dynamic = {"images": {0: "batch"}, "image_embeddings": {0: "batch"}}
    _export(ImageEncoderGraph(merged), (images,), encoder_path, encoder_io, dynamic)
    embedding = merged.image_encoder(images)
    decoder_path = output_dir / "mask_decoder.onnx"
    if tokens_as_input:
        decoder = MaskDecoderGraph(merged)
        decoder_io = {"inputs": ["image_embeddings", "label_tokens"], "outputs": ["logits"]}
        dynamic = {"label_tokens": {0: "labels"}, "logits": {0: "labels"}}
        _export(decoder, (embedding, tokens), decoder_path, decoder_io, dynamic)
        np.save(output_dir / "label_tokens.npy", tokens.numpy())
    else:
        decoder_io = {"inputs": ["image_embeddings"], "outputs": ["logits"]}
        _export(MaskDecoderGraph(merged, tokens), (embedding,), decoder_path, decoder_io, {})
    config = {
        "format": "ssam-onnx",
        "image_size": size,
        "embedding_shape": list(embedding.shape[1:]),
        "labels": list(labels),
        "tokens_as_input": tokens_as_input,
        "normalisation": model.normalisation,
        "pixel_mean": list(SAM_PIXEL_MEAN),
        "pixel_std": list(SAM_PIXEL_STD),
        "opset": OPSET,
        "image_encoder": {"file": encoder_path.name, **encoder_io},
        "mask_decoder": {"file": decoder_path.name, **decoder_io},
    }
    config_path = output_dir / "export.json"
    config_path.write_text(json.dumps(config, indent=2))
    return OnnxFiles(encoder_path, decoder_path, config_path, tuple(labels), tokens_as_input)


def run_onnx(files: OnnxFiles, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime (CPU) on normalised images (B, 3, S, S) float32 ->
    (embeddings (B, C, h, w), logits (B, L, S, S))."""
    import onnxruntime as ort

    options = {"providers": ["CPUExecutionProvider"]}
    encoder = ort.InferenceSession(str(files.encoder), **options)
    decoder = ort.InferenceSession(str(files.decoder), **options)
    embeddings = encoder.run(None, {"images": images.astype(np.float32)})[0]
    feeds_extra = {}
    if files.tokens_as_input:
        feeds_extra["label_tokens"] = np.load(files.config.parent / "label_tokens.npy")
    logits = [
        decoder.run(None, {"image_embeddings": e[None], **feeds_extra})[0] for e in embeddings
    ]
    return embeddings, np.stack(logits)


@torch.no_grad()
def check_onnx(files: OnnxFiles, model: SSAM, image: np.ndarray) -> dict[str, float]:
    """Run the export in onnxruntime and ``model`` in PyTorch on ``image``; max |difference|.

    Args:
        image: (C, H, W) in 0-255 (C = 1 or 3), e.g. a real photograph or slice.

    Returns:
        {"embeddings": max abs diff, "logits": max abs diff (L, S, S), "logits_range": max
        |logit|} (logits within 1e-3 is the expected agreement).
    """
    pixels, _ = preprocess_image(image, model.image_size, model.normalisation)
    batch = pixels[None]
    embeddings, logits = run_onnx(files, batch.numpy())
    model = model.eval()
    reference_embeddings = model.encode_images(batch)
    tokens = model.label_tokens(list(files.labels))
    reference = model.upscale(model.decode(reference_embeddings, tokens))[:, 0]
    return {
        "embeddings": float(np.abs(embeddings - reference_embeddings.numpy()).max()),
        "logits": float(np.abs(logits[0] - reference.numpy()).max()),
        "logits_range": float(np.abs(reference.numpy()).max()),
    }
