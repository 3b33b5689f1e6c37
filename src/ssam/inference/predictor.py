"""Segment new images and volumes by label name (SAM's ``SamPredictor`` in spirit).

A numpy layer (``segment``, ``segment_image``, ``segment_volume``, ``segment_file``,
``segment_array``) over a torch layer (``label_tokens``, ``scale_slices``, ``preprocess``,
``encode``, ``decode_probabilities``; ``predict_logits`` does both model halves at once). Per image or
slice the image encoder runs once and the mask decoder once for all requested labels; slices
of a volume go through the encoder in batches of ``batch_size``. Results come back at the
original resolution: logits (B, L, S, S) are cropped and resized with the data layer's
``restore_to_original``, then turned into probabilities, so a probability of 0.5 is exactly
where SAM's upsampled logit crosses 0.

Intensities become 0-255 as in training (``ssam.data.transforms.scale_intensity``): the
preset given, else the one the adapter records (``intensity`` in its config), else by dtype:
uint8 as is ("rgb"), other 2D images min-max, other volumes the "mri" percentile preset; a
volume's mapping is computed once over the whole volume.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from ssam.config.data import IntensityConfig
from ssam.data.intensity_check import check_intensity, check_values_usable
from ssam.data.io import read_image, take_slice
from ssam.data.properties import ImageProperties, normalize_axis
from ssam.data.transforms import (
    PreprocessInfo,
    compute_intensity_range,
    preprocess_image,
    resolve_intensity,
    restore_to_original,
    scale_intensity,
)
from ssam.errors import AdapterError, ConfigError, DataError, summarise_validation
from ssam.inference.inputs import array_properties, spacing_is_known
from ssam.inference.label_maps import compute_label_map, compute_label_sizes, compute_masks
from ssam.inference.loading import load_adapted_model
from ssam.inference.merge import load_merged
from ssam.model import SSAM
from ssam.sam.families import get_family
from ssam.text import normalise_label

ImageSource = str | Path | np.ndarray


class UnknownLabelWarning(UserWarning):
    """A label name the model was not trained on: its mask rests on the name alone."""


@dataclass(frozen=True, eq=False)
class Segmentation:
    """Result for one image or volume, at its original resolution.

    Spatial shape: (H, W) for 2D images, (I, J, K) for volumes (the reader's axes).

    Attributes:
        labels: the L label names; label value k in ``label_map`` is ``labels[k - 1]``.
        probabilities: (L, *spatial) float32 in [0, 1].
        masks: (L, *spatial) bool, each label's own probability >= 0.5, whatever else was
            asked for (labels may overlap: a lesion inside an organ is in both masks).
        label_map: (*spatial) uint8 (uint16 above 255 labels), for display and label-map
            files: per pixel the most probable label among those >= 0.5, else 0, so where
            masks overlap it shows one label only (``label_maps.LABEL_MAP_RULE``).
        properties: geometry of the source (``write_label_map`` takes it back).
        slice_axis: the spatial axis (0..2) sliced; 2 for 2D images.
        spacing_known: whether ``properties.spacing`` is a real size in mm.
        intensity, value_range: the 0-255 mapping the model saw (resolved preset and the
            source's per-channel range, from ``compute_intensity_range``).
        warnings: what looked wrong about the input's intensities (``check_intensity``):
            a mapping that clips most of it, or values unlike the training data's.
    """

    labels: tuple[str, ...]
    probabilities: np.ndarray
    masks: np.ndarray
    label_map: np.ndarray
    properties: ImageProperties
    slice_axis: int
    spacing_known: bool
    intensity: IntensityConfig
    value_range: tuple[np.ndarray, np.ndarray] | None
    warnings: tuple[str, ...] = ()

    @property
    def is_volume(self) -> bool:
        return self.label_map.ndim == 3

    def label_sizes(self) -> dict[str, dict[str, float | int | None]]:
        """Per label, from its own mask (not the label map), so independent of the other
        labels asked for: pixel count and area (mm^2), or voxels and mL."""
        spacing = self.properties.spacing if self.spacing_known else None
        return compute_label_sizes(self.masks, self.labels, spacing, self.is_volume)


class SSAMPredictor:
    """Runs an S-SAM model (adapted or merged) on images and volumes, by label name.

    Args:
        model: an ``SSAM`` (moved to eval mode, gradients off).
        trained_labels: the names the model was trained on (the default label set; other
            names are allowed and raise an ``UnknownLabelWarning``).
        intensity: 0-255 mapping; None or preset "auto": chosen per input by its type.
        batch_size: slices per image-encoder call.
        prepare_encoder: apply the encoder family's inference-only speed-ups in place
            (TinyViT: BatchNorms folded into their convolutions, channels-last convolutions,
            on a CPU one image per encoder pass; the same outputs to float error). The model is then for running, not for training
            or saving. False leaves it as given.
    """

    def __init__(
        self,
        model: SSAM,
        trained_labels: Sequence[str] = (),
        intensity: IntensityConfig | None = None,
        batch_size: int = 8,
        input_stats: dict | None = None,
        prepare_encoder: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.model = model.eval().requires_grad_(False)
        if prepare_encoder:
            get_family(model.variant).prepare_inference(model.image_encoder)
        self.trained_labels = tuple(normalise_label(n) for n in trained_labels)
        self.intensity = intensity
        self.batch_size = batch_size
        self.input_stats = input_stats
        # encode/decode_logits elsewhere (onnxruntime): ``ssam.inference.backends.use_backend``
        self.runtime = None

    @classmethod
    def from_adapter(
        cls,
        adapter: str | Path,
        sam_checkpoint: str | Path | None = None,
        clip_checkpoint: str | Path | None = None,
        device: torch.device | str = "cpu",
        allow_download: bool = False,
        **kwargs,
    ) -> SSAMPredictor:
        """Base checkpoint + adapter, the model built with the settings the adapter records
        (variant, input size, method, text encoder); ``kwargs`` go to the constructor."""
        model, config = load_adapted_model(
            adapter, sam_checkpoint, clip_checkpoint, device, allow_download
        )
        if kwargs.get("intensity") is None and isinstance(config.get("intensity"), dict):
            try:
                kwargs["intensity"] = IntensityConfig(**config["intensity"])
            except ValidationError as err:
                raise AdapterError(
                    f"{adapter}: bad intensity in the adapter config: "
                    f"{summarise_validation(err, 'intensity')}"
                ) from None
        kwargs.setdefault("input_stats", config.get("input_stats"))
        return cls(model, config.get("labels", ()), **kwargs)

    @classmethod
    def from_merged(
        cls,
        checkpoint: str | Path,
        companion: str | Path | None = None,
        clip_checkpoint: str | Path | None = None,
        device: torch.device | str = "cpu",
        **kwargs,
    ) -> SSAMPredictor:
        """A merged checkpoint and its companion (see ``ssam.inference.merge``)."""
        model = load_merged(checkpoint, companion, clip_checkpoint, device=device)
        return cls(model, model.labels, **kwargs)

    @property
    def image_size(self) -> int:
        return self.model.image_size

    # ----- torch layer -------------------------------------------------------------------

    def resolve_labels(self, labels: Sequence[str] | str | None) -> tuple[str, ...]:
        """Normalised names (default: the trained labels); warns about untrained names."""
        if labels is None:
            labels = self.trained_labels
            if not labels:
                raise ConfigError("the model records no trained labels: name the labels")
        if isinstance(labels, str):
            labels = [labels]
        try:
            names = tuple(normalise_label(n) for n in labels)
        except ValueError as err:
            raise ConfigError(f"bad label list {list(labels)}: {err}") from None
        if not names:
            raise ConfigError("the label list is empty: name at least one label")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"labels {duplicates} are listed twice")
        for name in names:
            if self.trained_labels and name not in self.trained_labels:
                warnings.warn(
                    f"label {name!r} is not one the model was trained on "
                    f"{list(self.trained_labels)}; its mask may be poor",
                    UnknownLabelWarning,
                    stacklevel=3,
                )
        return names

    @torch.inference_mode()
    def label_tokens(self, labels: Sequence[str]) -> torch.Tensor:
        """Prompt tokens (L, 1, C) of resolved label names. The text encoder caches each name's
        CLIP features; the text-affine layer on top costs next to nothing."""
        return self.model.label_tokens(list(labels))

    @torch.inference_mode()
    def predict_logits(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) normalised + tokens (L, 1, C) -> logits (B, L, S, S) float32.

        One encoder call for the batch; one decoder call per image for all L labels.
        """
        return torch.stack([self.decode_logits(e, tokens) for e in self.encode(images)])

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) normalised -> embeddings (B, C, h, w), one encoder call."""
        if self.runtime is not None:
            return self.runtime.encode(images)
        return self.model.encode_images(images.to(self.model.device))

    @torch.inference_mode()
    def decode_logits(self, embedding: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """One image's embedding (C, h, w) + tokens (L, 1, C) -> logits (L, S, S) float32."""
        if self.runtime is not None:
            return self.runtime.decode_logits(embedding, tokens)
        model = self.model
        return model.upscale(model.decode(embedding[None].to(model.device), tokens))[:, 0].float()

    @torch.inference_mode()
    def decode_probabilities(
        self, embedding: torch.Tensor, info: PreprocessInfo, tokens: torch.Tensor
    ) -> np.ndarray:
        """``decode_logits`` at the original size (``info``) as probabilities (L, H, W)."""
        logits = self.decode_logits(embedding, tokens)
        return restore_to_original(logits, info).sigmoid().cpu().numpy()

    def scale_slices(
        self,
        image: np.ndarray,
        axis: int,
        indices: Sequence[int],
        intensity: IntensityConfig,
        value_range: tuple[np.ndarray, np.ndarray] | None,
    ) -> list[np.ndarray]:
        """Slices ``indices`` of (C, I, J, K) ``image`` as 0-255 pixels (C, H, W)."""
        return [
            scale_intensity(take_slice(image, axis, i), intensity, value_range) for i in indices
        ]

    def preprocess(self, pixels: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[PreprocessInfo]]:
        """0-255 slices -> the model's input batch (B, 3, S, S) and each one's info."""
        norm = self.model.normalisation
        prepared = [preprocess_image(p, self.image_size, norm) for p in pixels]
        return torch.stack([t for t, _ in prepared]), [info for _, info in prepared]

    # ----- numpy layer -------------------------------------------------------------------

    def segment(
        self,
        source: ImageSource,
        labels: Sequence[str] | str | None = None,
        *,
        axis: int = -1,
        spacing: Sequence[float] | None = None,
    ) -> Segmentation:
        """A file path, or an array: (H, W) grey, (H, W, 3) RGB or (H, W, 1) images, any
        other (I, J, K) as a volume sliced along ``axis`` (use ``segment_volume`` for a
        volume of 1 or 3 slices along its last axis)."""
        if isinstance(source, str | Path):
            return self.segment_file(source, labels, axis=axis)
        array = np.asarray(source)
        if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3)):
            return self.segment_image(array, labels, spacing=spacing)
        if array.ndim == 3:
            return self.segment_volume(array, labels, axis=axis, spacing=spacing)
        raise DataError(
            f"expected a 2D image (H, W[, 3]) or a volume (I, J, K), got shape {array.shape}"
        )

    def segment_file(
        self, path: str | Path, labels: Sequence[str] | str | None = None, *, axis: int = -1
    ) -> Segmentation:
        """Any file (or DICOM series folder) the data layer reads; 2D files ignore ``axis``."""
        image, properties = read_image(path)
        return self.segment_array(image, properties, labels, axis=axis)

    def segment_image(
        self,
        image: np.ndarray,
        labels: Sequence[str] | str | None = None,
        *,
        spacing: Sequence[float] | None = None,
    ) -> Segmentation:
        """(H, W) grey or (H, W, C) with C = 1 or 3 (RGB), any real dtype; ``spacing`` (row,
        column) in mm, if known."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] not in (1, 3):
            raise DataError(f"expected an image (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
        channels_first = np.moveaxis(image, -1, 0)[..., None]
        properties = array_properties(channels_first, spacing, kind="2d")
        return self.segment_array(
            channels_first, properties, labels, spacing_known=spacing is not None
        )

    def segment_volume(
        self,
        volume: np.ndarray,
        labels: Sequence[str] | str | None = None,
        *,
        axis: int = -1,
        spacing: Sequence[float] | None = None,
        affine: np.ndarray | None = None,
    ) -> Segmentation:
        """(I, J, K) volume, any real dtype, sliced along ``axis``; ``spacing`` in mm (or an
        ``affine``, voxel -> mm) makes volumes come out in mL. A depth-one volume (I, J, 1)
        is a 2D image (the data layer's convention): results are (I, J)."""
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise DataError(f"expected a volume (I, J, K), got shape {volume.shape}")
        properties = array_properties(volume[None], spacing, kind="3d", affine=affine)
        known = spacing is not None or affine is not None
        return self.segment_array(volume[None], properties, labels, axis=axis, spacing_known=known)

    def segment_array(
        self,
        image: np.ndarray,
        properties: ImageProperties,
        labels: Sequence[str] | str | None = None,
        *,
        axis: int = -1,
        progress: Callable[[int], None] | None = None,
        spacing_known: bool | None = None,
    ) -> Segmentation:
        """The data layer's (C, I, J, K) array and its properties -> ``Segmentation``.

        ``progress`` is called with the number of slices done after each batch.
        ``spacing_known`` None: decided from the source file (``spacing_is_known``).
        """
        names = self.resolve_labels(labels)
        if image.ndim != 4 or image.shape[0] not in (1, 2, 3):
            raise DataError(
                f"{properties.path}: expected an image (C, I, J, K) with C in 1..3, "
                f"got shape {image.shape}"
            )
        axis = 2 if properties.is_2d else normalize_axis(axis)
        name = str(properties.path or "the input")
        found = check_values_usable(image, name)
        intensity, value_range = self.intensity_mapping(image, properties)
        found += check_intensity(image, intensity, value_range, name, self.input_stats)
        probabilities = self._predict_volume(image, (intensity, value_range), names, axis, progress)
        if properties.is_2d:
            probabilities = probabilities[..., 0]
        known = spacing_is_known(properties) if spacing_known is None else spacing_known
        return Segmentation(
            labels=names,
            probabilities=probabilities,
            masks=compute_masks(probabilities),
            label_map=compute_label_map(probabilities),
            properties=properties,
            slice_axis=axis,
            spacing_known=known,
            intensity=intensity,
            value_range=value_range,
            warnings=tuple(found),
        )

    def intensity_mapping(
        self,
        image: np.ndarray,
        properties: ImageProperties,
        override: IntensityConfig | None = None,
    ) -> tuple[IntensityConfig, tuple[np.ndarray, np.ndarray] | None]:
        """The 0-255 mapping used for (C, I, J, K) ``image``: ``override``, else the configured
        preset (or the "auto" rule's), and the whole image's value range, computed once."""
        intensity = resolve_intensity(override or self.intensity, image, properties.is_2d)
        return intensity, compute_intensity_range(image, intensity)

    @torch.inference_mode()
    def _predict_volume(
        self,
        image: np.ndarray,
        mapping: tuple[IntensityConfig, tuple[np.ndarray, np.ndarray] | None],
        names: tuple[str, ...],
        axis: int,
        progress: Callable[[int], None] | None,
    ) -> np.ndarray:
        """(C, I, J, K) -> probabilities (L, I, J, K) float32, slices in batches; ``mapping``:
        the resolved intensity preset and the volume's value range."""
        intensity, value_range = mapping
        tokens = self.label_tokens(names)
        out = np.empty((len(names), *image.shape[1:]), dtype=np.float32)
        n_slices = image.shape[1 + axis]
        for start in range(0, n_slices, self.batch_size):
            indices = range(start, min(start + self.batch_size, n_slices))
            pixels = self.scale_slices(image, axis, indices, intensity, value_range)
            inputs, infos = self.preprocess(pixels)
            embeddings = self.encode(inputs)
            for index, embedding, info in zip(indices, embeddings, infos, strict=True):
                probabilities = self.decode_probabilities(embedding, info, tokens)
                take_slice(out, axis, index)[...] = probabilities
            if progress is not None:
                progress(len(indices))
        return out
