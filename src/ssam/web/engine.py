"""Segmentation for the web app: the predictor's slice loop, with image embeddings cached.

To reuse an image's embeddings when another label is asked for, this module calls the
predictor's steps (``scale_slices``, ``preprocess``, ``encode``, ``decode_probabilities``)
itself, with an embedding cache between the encoder and the decoder, so results equal
``SSAMPredictor.segment_array``.

Volumes are cut along their last axis (K: axial for RAS-like NIfTI); 2D images are volumes of
depth one, so axis 2 serves both. Results keep the label map and per-label masks but not the
float probabilities, so a large volume costs 1 + L bytes per voxel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ssam.config.data import IntensityConfig
from ssam.data.intensity_check import check_intensity, check_values_usable
from ssam.data.properties import ImageProperties, take_slice
from ssam.data.transforms import PreprocessInfo
from ssam.errors import DataError
from ssam.inference.label_maps import (
    compute_label_map,
    compute_label_sizes,
    compute_masks,
    label_map_dtype,
)
from ssam.inference.predictor import SSAMPredictor
from ssam.text import normalise_label
from ssam.web.cache import EmbeddingCache, tensor_bytes
from ssam.web.errors import JobCancelled, Unprocessable
from ssam.web.uploads import DecodedUpload

SLICE_AXIS = 2
Progress = Callable[[int, int], None]


@dataclass(frozen=True, eq=False)
class WebSegmentation:
    """One upload's result at its original resolution.

    Attributes:
        labels: L names; value k of ``label_map`` is ``labels[k - 1]``.
        label_map: (H, W) for 2D images, (I, J, K) for volumes; uint8, for display: per
            pixel the most probable label among those >= 0.5, else 0.
        masks: (L, *label_map.shape) bool, each label's own probability >= 0.5 (labels may
            overlap); sizes count these.
        display: (C, I, J, K) uint8, the 0-255 intensities the model saw (C = 1 or 3).
        properties: geometry of the upload; ``format``: "png", "jpeg", "dicom" or "nifti".
        unknown_labels: asked-for names the model was not trained on.
        intensity_warnings: what looked wrong about the upload's intensities
            (``ssam.data.intensity_check``), shown on the page and in the report.
        cache_hits / encoded: slices whose embedding came from the cache / the encoder.
        timings: seconds per phase ("encode", "decode"; the job adds "read").
        digest, intensity: the upload's SHA-256 and the resolved 0-255 mapping, which name
            its slices' embeddings in the cache (``embedding_key``; refine reuses them).
    """

    labels: tuple[str, ...]
    label_map: np.ndarray
    masks: np.ndarray
    display: np.ndarray
    properties: ImageProperties
    format: str
    spacing_known: bool
    unknown_labels: tuple[str, ...]
    cache_hits: int
    encoded: int
    timings: dict[str, float]
    intensity_warnings: tuple[str, ...] = ()
    digest: str = ""
    intensity: IntensityConfig | None = None

    @property
    def is_volume(self) -> bool:
        return self.label_map.ndim == 3

    @property
    def n_slices(self) -> int:
        return self.display.shape[1 + SLICE_AXIS]

    def label_sizes(self) -> dict[str, dict[str, float | int | None]]:
        """Per label, from its own mask (independent of the other labels asked for): pixels
        and mm^2 (2D) or voxels and mL (volumes); sizes None if the upload states no spacing."""
        spacing = self.properties.spacing if self.spacing_known else None
        return compute_label_sizes(self.masks, self.labels, spacing, self.is_volume)


def parse_label_names(values: Sequence[str]) -> list[str]:
    """Form values, each one name or several separated by commas -> stripped names."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def embedding_key(digest: str, intensity: IntensityConfig, size: int, index: int) -> tuple:
    """Cache key of one slice's embedding: upload content + preprocessing + slice."""
    return (digest, intensity.model_dump_json(), size, SLICE_AXIS, index)


@dataclass(eq=False)
class _Run:
    """One segmentation in progress: its input, mapping, outputs filled slice by slice, and
    counters. Outputs are (I, J, K) label map, (L, I, J, K) masks, (C, I, J, K) display."""

    upload: DecodedUpload
    intensity: IntensityConfig
    value_range: tuple[np.ndarray, np.ndarray] | None
    n_labels: int
    hits: int = 0
    encoded: int = 0
    timings: dict[str, float] = field(default_factory=lambda: {"encode": 0.0, "decode": 0.0})

    def __post_init__(self) -> None:
        shape = self.upload.image.shape
        self.label_map = np.zeros(shape[1:], dtype=label_map_dtype(self.n_labels))
        self.masks = np.zeros((self.n_labels, *shape[1:]), dtype=bool)
        self.display = np.zeros(shape, dtype=np.uint8)


class SegmentationEngine:
    """Runs one predictor's model for the web app; model calls take turns (one lock)."""

    def __init__(self, predictor: SSAMPredictor, cache: EmbeddingCache) -> None:
        self.predictor = predictor
        self.cache = cache
        self._model_lock = threading.Lock()

    @property
    def trained_labels(self) -> tuple[str, ...]:
        return self.predictor.trained_labels

    @property
    def model_lock(self) -> threading.Lock:
        """Held around every model call (encoder or decoder)."""
        return self._model_lock

    def resolve_labels(
        self, values: Sequence[str], max_labels: int, max_chars: int
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Requested names -> (normalised names, those the model was not trained on).

        No names means the trained labels. 422 for too many, too long, repeated names.
        """
        raw = parse_label_names(values) or list(self.trained_labels)
        if not raw:
            raise Unprocessable("name at least one label (the model records no trained labels)")
        if len(raw) > max_labels:
            raise Unprocessable(f"{len(raw)} labels asked for; at most {max_labels} per request")
        too_long = [n for n in raw if len(n) > max_chars]
        if too_long:
            raise Unprocessable(f"label names are limited to {max_chars} characters")
        try:
            names = tuple(normalise_label(n) for n in raw)
        except ValueError as err:
            raise Unprocessable(f"bad label name: {err}") from None
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise Unprocessable(f"labels {repeated} are listed twice")
        return names, self.untrained(names)

    def untrained(self, names: Sequence[str]) -> tuple[str, ...]:
        """The names the model was not trained on (none when it records no labels)."""
        trained = self.trained_labels
        return tuple(n for n in names if trained and n not in trained)

    def segment(
        self,
        upload: DecodedUpload,
        names: tuple[str, ...],
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
        intensity: IntensityConfig | None = None,
    ) -> WebSegmentation:
        """Segment every slice of ``upload`` for ``names`` (from ``resolve_labels``).

        ``progress(done, total)`` follows each batch of slices; when ``should_stop()`` turns
        true the next batch raises ``JobCancelled``. ``intensity``: this request's 0-255
        mapping instead of the adapter's (e.g. a CT window).
        """
        image, properties = upload.image, upload.properties
        try:
            notes = check_values_usable(image, "the upload")
        except DataError as err:  # blank or all-NaN: the request's fault, a clear 422
            raise Unprocessable(str(err)) from None
        intensity, value_range = self.predictor.intensity_mapping(image, properties, intensity)
        run = _Run(upload, intensity, value_range, len(names))
        with self._model_lock, torch.inference_mode():
            tokens = self.predictor.model.label_tokens(list(names))
        n_slices, batch = image.shape[1 + SLICE_AXIS], self.predictor.batch_size
        for start in range(0, n_slices, batch):
            if should_stop is not None and should_stop():
                raise JobCancelled("the request was cancelled or timed out")
            indices = list(range(start, min(start + batch, n_slices)))
            self._segment_batch(run, indices, tokens)
            if progress is not None:
                progress(indices[-1] + 1, n_slices)
        label_map, masks = run.label_map, run.masks
        if properties.is_2d:
            label_map, masks = label_map[..., 0], masks[..., 0]
        return WebSegmentation(
            labels=names,
            label_map=label_map,
            masks=masks,
            display=run.display,
            properties=properties,
            format=upload.format,
            spacing_known=upload.spacing_known,
            unknown_labels=self.untrained(names),
            intensity_warnings=tuple(
                notes
                + check_intensity(
                    image, intensity, value_range, "the upload", self.predictor.input_stats
                )
            ),
            cache_hits=run.hits,
            encoded=run.encoded,
            timings=run.timings,
            digest=upload.digest,
            intensity=intensity,
        )

    def _segment_batch(self, run: _Run, indices: list[int], tokens: torch.Tensor) -> None:
        """Scale, embed (cache first) and decode the slices ``indices`` into ``run``."""
        image, digest = run.upload.image, run.upload.digest
        pixels = self.predictor.scale_slices(
            image, SLICE_AXIS, indices, run.intensity, run.value_range
        )
        for index, slice_pixels in zip(indices, pixels, strict=True):
            take_slice(run.display, SLICE_AXIS, index)[...] = np.rint(slice_pixels)
        size = self.predictor.image_size
        keys = [embedding_key(digest, run.intensity, size, i) for i in indices]
        tic = time.perf_counter()
        embedded = self._embed(keys, pixels, run)
        run.timings["encode"] += time.perf_counter() - tic
        tic = time.perf_counter()
        for index, (embedding, info) in zip(indices, embedded, strict=True):
            with self._model_lock:
                probs = self.predictor.decode_probabilities(embedding, info, tokens)
            take_slice(run.masks, SLICE_AXIS, index)[...] = compute_masks(probs)
            take_slice(run.label_map, SLICE_AXIS, index)[...] = compute_label_map(probs)
        run.timings["decode"] += time.perf_counter() - tic

    def _embed(
        self, keys: list[tuple], pixels: list[np.ndarray], run: _Run
    ) -> list[tuple[torch.Tensor, PreprocessInfo]]:
        """Embeddings (C, h, w) and preprocessing info of a batch of slices (0-255, (C, H, W)),
        from the cache where present, else one encoder call for the missing ones."""
        found = [self.cache.get(key) for key in keys]
        missing = [i for i, item in enumerate(found) if item is None]
        run.hits += len(keys) - len(missing)
        run.encoded += len(missing)
        if missing:
            inputs, infos = self.predictor.preprocess([pixels[i] for i in missing])
            with self._model_lock:
                embeddings = self.predictor.encode(inputs).cpu()
            for i, embedding, info in zip(missing, embeddings, infos, strict=True):
                item = (embedding.clone(), info)
                self.cache.put(keys[i], item, tensor_bytes(item[0]))
                found[i] = item
        return found  # type: ignore[return-value]
