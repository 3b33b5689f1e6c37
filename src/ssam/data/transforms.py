"""Preprocessing to SAM's input and back, and training augmentation (DESIGN.md section 6).

Pipeline for one 2D image (C, H, W) of any dtype:

1. `scale_intensity`: to float32 0-255 by preset (rgb / minmax / ct / mri), with the value
   range optionally computed once per volume by `compute_intensity_range`; preset "auto" is
   first made concrete per image or volume by `resolve_intensity`.
2. `preprocess_image`: grey -> 3 channels, resize the longest side to S (bilinear,
   antialiased), normalise as the base was trained (`normalise_pixels`: SAM's pixel mean/std,
   or LiteMedSAM's per-image min-max to [0, 1]), zero-pad bottom/right to S x S. As in SAM's
   own `Sam.preprocess`, padding is added after normalisation (padded pixels are 0 there).
   Masks: `preprocess_mask` resizes with nearest neighbour and pads with 0.
3. `restore_to_original`: (N, S, S) logits or probabilities -> crop the padding -> bilinear
   to the original (H, W).

Augmentation (`augment_pair`, training only) works on the resized, unpadded image in 0-255
and its mask, with an explicit `numpy.random.Generator`; `augmentation_rng(seed, epoch,
index)` derives one per sample so that a run can resume bit-exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssam.config.data import AugmentConfig, IntensityConfig

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
_AUGMENT_STREAM = 1  # keeps augmentation seeds apart from other seeded streams


@dataclass(frozen=True)
class PreprocessInfo:
    """What `restore_to_original` needs: sizes as (height, width)."""

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    input_size: int


def resolve_intensity(
    config: IntensityConfig | None, image: np.ndarray, is_2d: bool
) -> IntensityConfig:
    """The concrete mapping for ``image``: ``config``, unless it is None or preset "auto".

    "auto" goes by the stored type: uint8 as is ("rgb"), other 2D images "minmax", other
    volumes "mri" (per-channel percentiles of the whole volume).
    """
    config = config or IntensityConfig()
    if config.preset != "auto":
        return config
    by_dimensions = "minmax" if is_2d else "mri"
    preset = "rgb" if image.dtype == np.uint8 else by_dimensions
    return config.model_copy(update={"preset": preset})  # keeps the given percentiles


def _check_resolved(config: IntensityConfig) -> None:
    if config.preset == "auto":
        raise ValueError("intensity preset 'auto' must be resolved first (resolve_intensity)")


def compute_intensity_range(
    image: np.ndarray, config: IntensityConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (low, high) of the 0-255 mapping, or None for preset "rgb".

    Args:
        image: (C, ...) whole image or volume, any real dtype; NaNs are ignored.
        config: preset and its parameters.

    Returns:
        low, high: float64 arrays of shape (C,).
    """
    _check_resolved(config)
    if config.preset == "rgb":
        return None
    n_channels = image.shape[0]
    if config.preset == "ct":
        low, high = config.window_bounds()
        return np.full(n_channels, low), np.full(n_channels, high)
    flat = image.reshape(n_channels, -1).astype(np.float32, copy=False)
    if config.preset == "minmax":
        return np.nanmin(flat, axis=1).astype(np.float64), np.nanmax(flat, axis=1).astype(
            np.float64
        )
    bounds = np.nanpercentile(flat, list(config.percentiles), axis=1)
    return bounds[0].astype(np.float64), bounds[1].astype(np.float64)


def _scale_rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * np.float32(255.0 / 65535.0)
    if image.dtype == bool:
        return image.astype(np.float32) * np.float32(255.0)
    return np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 255.0)


def scale_intensity(
    image: np.ndarray,
    config: IntensityConfig,
    value_range: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Intensities to float32 0-255 by preset.

    Args:
        image: (C, ...) any real dtype (uint8, uint16, int16, float32, ...).
        config: "rgb": uint8 as is, uint16 x 255/65535, bool x 255, else clipped to 0-255;
            "minmax" / "ct" / "mri": clip to (low, high), then linearly to 0-255.
        value_range: per-channel (low, high) from `compute_intensity_range` of the whole
            volume, so all its slices share one mapping; computed from `image` if None.

    Returns:
        (C, ...) float32 in [0, 255]; a channel with high <= low becomes 0.
    """
    _check_resolved(config)
    if config.preset == "rgb":
        return _scale_rgb(image)
    if value_range is None:
        value_range = compute_intensity_range(image, config)
    low, high = (np.asarray(v, dtype=np.float64) for v in value_range)  # type: ignore[union-attr]
    shape = (image.shape[0],) + (1,) * (image.ndim - 1)
    low, high = low.reshape(shape), high.reshape(shape)
    width = high - low
    scale = np.where(width > 0, 255.0 / np.where(width > 0, width, 1.0), 0.0)
    out = (np.clip(image.astype(np.float64), low, high) - low) * scale
    return np.nan_to_num(out).astype(np.float32)


def to_three_channels(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (3, H, W): grey is repeated; 2 channels get their mean as the third."""
    channels = image.shape[0]
    if channels == 3:
        return image
    if channels == 1:
        return image.expand(3, -1, -1)
    if channels == 2:
        return torch.cat([image, image.mean(dim=0, keepdim=True)], dim=0)
    raise ValueError(f"expected 1 to 3 channels, got image of shape {tuple(image.shape)}")


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the longest side = size, aspect kept (SAM's ResizeLongestSide rounding)."""
    scale = size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_image(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) float -> (C, h, w), bilinear, antialiased when shrinking."""
    if tuple(image.shape[-2:]) == tuple(shape):
        return image
    return F.interpolate(
        image[None], size=shape, mode="bilinear", align_corners=False, antialias=True
    )[0]


def resize_mask(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(H, W) -> (h, w) float32, nearest neighbour (values kept exactly)."""
    mask = mask.to(torch.float32)
    if tuple(mask.shape) == tuple(shape):
        return mask
    return F.interpolate(mask[None, None], size=shape, mode="nearest-exact")[0, 0]


def pad_to_square(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """(..., h, w) -> (..., size, size), zeros at the bottom and right."""
    height, width = tensor.shape[-2:]
    if height > size or width > size:
        raise ValueError(f"cannot pad shape {tuple(tensor.shape)} to {size}x{size}")
    return F.pad(tensor, (0, size - width, 0, size - height))


NORMALISATIONS = ("sam", "minmax")


def normalise_pixels(image: torch.Tensor, normalisation: str) -> torch.Tensor:
    """(3, H, W) in 0-255 -> the base's input values.

    ``sam``: SAM's (x - pixel_mean) / pixel_std. ``minmax``: (x - min) / (max - min) over the
    whole image, in [0, 1] (LiteMedSAM's preprocessing; a constant image becomes 0).
    """
    if normalisation == "sam":
        mean = torch.tensor(SAM_PIXEL_MEAN, dtype=image.dtype).view(3, 1, 1)
        std = torch.tensor(SAM_PIXEL_STD, dtype=image.dtype).view(3, 1, 1)
        return (image - mean) / std
    if normalisation == "minmax":
        low = image.min()
        return (image - low) / (image.max() - low).clamp_min(1e-8)
    raise ValueError(f"unknown pixel normalisation {normalisation!r}; known: {NORMALISATIONS}")


def _as_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.to(torch.float32)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def preprocess_pair(
    image: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None,
    size: int,
    augment: AugmentConfig | None = None,
    rng: np.random.Generator | None = None,
    normalisation: str = "sam",
) -> tuple[torch.Tensor, torch.Tensor | None, PreprocessInfo]:
    """Image (and mask) to the model's input, with optional augmentation between resize and pad.

    Args:
        image: (C, H, W), C in 1..3, float in 0-255 (see `scale_intensity`).
        mask: (H, W) binary {0, 1} (any dtype), or None.
        size: S, the model's square input size.
        augment: augmentation settings; needs ``rng``. None: no augmentation.
        rng: the sample's generator (`augmentation_rng`).
        normalisation: the base's (`normalise_pixels`; ``SSAM.normalisation``).

    Returns:
        image (3, S, S) float32 normalised; mask (S, S) float32 in {0, 1} or None; info.
    """
    pixels = _as_tensor(image)
    if pixels.ndim != 3:
        raise ValueError(f"expected an image (C, H, W), got shape {tuple(pixels.shape)}")
    height, width = pixels.shape[-2:]
    new_shape = resized_shape(height, width, size)
    pixels = resize_image(pixels, new_shape)
    target = None if mask is None else resize_mask(_as_tensor(mask), new_shape)
    if augment is not None:
        if rng is None:
            raise ValueError("augmentation needs an explicit rng (see augmentation_rng)")
        pixels, target = augment_pair(pixels, target, augment, rng)
    pixels = pad_to_square(normalise_pixels(to_three_channels(pixels), normalisation), size)
    target = None if target is None else pad_to_square(target, size)
    info = PreprocessInfo((int(height), int(width)), new_shape, size)
    return pixels.contiguous(), target, info


def preprocess_image(
    image: np.ndarray | torch.Tensor, size: int, normalisation: str = "sam"
) -> tuple[torch.Tensor, PreprocessInfo]:
    """(C, H, W) in 0-255 -> ((3, S, S) float32 normalised and padded, info to undo it)."""
    pixels, _, info = preprocess_pair(image, None, size, normalisation=normalisation)
    return pixels, info


def preprocess_mask(mask: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """(H, W) binary -> (S, S) float32 {0, 1}: nearest resize of the longest side, zero pad."""
    target = _as_tensor(mask)
    return pad_to_square(resize_mask(target, resized_shape(*target.shape, size)), size)


def restore_to_original(masks: torch.Tensor, info: PreprocessInfo) -> torch.Tensor:
    """(N, S, S) logits or probabilities -> (N, H, W) at the original size.

    Crops the bottom/right padding, then resizes bilinearly (align_corners=False, as
    SAM's `postprocess_masks`). Pure: the input is not modified.
    """
    if masks.ndim != 3 or tuple(masks.shape[-2:]) != (info.input_size, info.input_size):
        raise ValueError(
            f"expected (N, {info.input_size}, {info.input_size}), got {tuple(masks.shape)}"
        )
    height, width = info.resized_size
    cropped = masks[:, :height, :width]
    if (height, width) == info.original_size:
        return cropped.clone()
    return F.interpolate(
        cropped[None].to(torch.float32),
        size=info.original_size,
        mode="bilinear",
        align_corners=False,
    )[0].to(masks.dtype)


def augmentation_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample in one epoch: a pure function of (seed, epoch, index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, _AUGMENT_STREAM, epoch, index]))


def _rotation_grid(height: int, width: int, degrees: float) -> torch.Tensor:
    """(1, h, w, 2) grid_sample grid rotating an image about its centre by `degrees`."""
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    # Normalised coordinates (align_corners=False) of the output pixel centres.
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) * (2.0 / height) - 1.0
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) * (2.0 / width) - 1.0
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    # Rotation in pixel space: normalised x is scaled by w/2 and y by h/2.
    source_x = cos * x + sin * y * (height / width)
    source_y = -sin * x * (width / height) + cos * y
    return torch.stack([source_x, source_y], dim=-1)[None]


def _resample(tensor: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """(C, h, w) sampled at `grid`, zeros outside."""
    out = F.grid_sample(tensor[None], grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out[0]


def augment_pair(
    image: torch.Tensor,
    mask: torch.Tensor | None,
    config: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random rotation, brightness and flips, identical for image and mask.

    Args:
        image: (C, h, w) float32 in 0-255; mask: (h, w) float32 {0, 1} or None.
        config: ranges and which flips are enabled.
        rng: always consumed the same way (4 draws), whatever is enabled.

    Returns:
        image (C, h, w) in 0-255 (bilinear rotation), mask (h, w) in {0, 1} (nearest).
    """
    angle = float(rng.uniform(-1.0, 1.0)) * config.rotation_deg
    factor = 1.0 + float(rng.uniform(-1.0, 1.0)) * config.brightness
    hflip, vflip = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    if angle != 0.0:
        grid = _rotation_grid(image.shape[-2], image.shape[-1], angle)
        image = _resample(image, grid, "bilinear")
        mask = None if mask is None else _resample(mask[None], grid, "nearest")[0]
    image = torch.clamp(image * factor, 0.0, 255.0)
    dims = ([-1] if hflip and config.hflip else []) + ([-2] if vflip and config.vflip else [])
    if dims:
        image = torch.flip(image, dims)
        mask = None if mask is None else torch.flip(mask, dims)
    return image, mask
