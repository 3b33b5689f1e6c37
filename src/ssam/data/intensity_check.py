"""Does an input's intensity fit the 0-255 mapping and the data a model was trained on?

A silent mismatch is the worst failure: an adapter trained with preset ``rgb`` on 8-bit images
and given an int16 CT volume (-1000..3000) clips it to 0..255, the model sees a near-black
volume and every label comes back empty. These pure functions summarise the training data's
raw values (recorded in the adapter) and compare each input with them and with its mapping,
returning warnings (sentences naming the input, what was seen, and the fix) for the CLI, the
reports and the page.

Absolute mappings (``rgb``, ``ct``) need the input in the training data's units; relative ones
(``minmax``, ``mri``) rescale each input, so only the mapping itself is checked for them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ssam.config.data import IntensityConfig
from ssam.data.transforms import scale_intensity
from ssam.errors import DataError

PERCENTILES = (0.5, 50.0, 99.5)
_MAX_SAMPLES = 200_000
_ABSOLUTE = ("rgb", "ct")
_CT_HINT = "--intensity ct --window-level 40 --window-width 400 for abdominal CT"


def sample_values(image: np.ndarray, max_values: int = _MAX_SAMPLES) -> np.ndarray:
    """(C, n) float64 evenly strided samples of each channel of (C, ...) ``image``."""
    flat = image.reshape(image.shape[0], -1)
    step = max(1, flat.shape[1] // max_values)
    return flat[:, ::step].astype(np.float64)


def summarise_training_values(
    samples: Iterable[tuple[str, np.ndarray]], preset: str | None = None
) -> dict:
    """``input_stats`` for an adapter: the stored dtypes and value percentiles of the training
    images, from (dtype name, (C, n) samples) pairs, and the ``preset`` they were mapped with
    (None when datasets differ)."""
    dtypes, values = set(), []
    for dtype, sample in samples:
        dtypes.add(dtype)
        values.append(sample[np.isfinite(sample)])
    pooled = np.concatenate(values) if values else np.zeros(1)
    bounds = np.percentile(pooled, PERCENTILES)
    return {
        "preset": preset,
        "dtypes": sorted(dtypes),
        "percentiles": {
            f"{p:g}": round(float(v), 4) for p, v in zip(PERCENTILES, bounds, strict=True)
        },
    }


def _span(low: float, high: float) -> str:
    return f"{low:.4g}..{high:.4g}"


def check_intensity(
    image: np.ndarray,
    intensity: IntensityConfig,
    value_range: tuple[np.ndarray, np.ndarray] | None,
    name: str,
    trained: dict | None = None,
) -> list[str]:
    """Warnings for (C, ...) ``image`` under its resolved ``intensity`` mapping (and
    ``value_range`` as the predictor computed it), against ``trained`` (an adapter's
    ``input_stats``) when known. An empty list: nothing suspicious."""
    sample = sample_values(image)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return [f"{name}: no finite values: the model sees a blank image"]
    low, high = np.percentile(finite, (0.5, 99.5))
    seen = f"{image.dtype} values {_span(low, high)}"
    warnings = []
    if intensity.preset == "rgb" and image.dtype not in (np.uint8, np.uint16, bool):
        outside = float(np.mean((finite < 0) | (finite > 255)))
        if outside > 0.05:
            warnings.append(
                f"{name}: preset rgb clips this input ({seen}) to 0..255: {outside:.0%} of its "
                f"values are outside and lost; use the mapping it needs, e.g. {_CT_HINT}, or "
                "--intensity auto"
            )
    mapped = scale_intensity(sample, intensity, value_range)
    inside = float(np.mean((mapped > 0.5) & (mapped < 254.5)))
    if inside < 0.02 or float(np.std(mapped)) < 1.0:
        warnings.append(
            f"{name}: the {intensity.preset} mapping turns nearly all of this input ({seen}) "
            f"into one value (only {inside:.1%} between 0 and 255): the model sees a blank "
            "image; check the preset or window"
        )
    if trained and intensity.preset in _ABSOLUTE:
        warnings += _compare_with_training(low, high, intensity.preset, trained, name, seen)
    return warnings


def _compare_with_training(
    low: float, high: float, preset: str, trained: dict, name: str, seen: str
) -> list[str]:
    """A warning when the input's robust range lies well outside the training data's, for
    inputs mapped with the training data's own absolute preset."""
    if trained.get("preset") not in (None, preset):
        return []  # trained under another mapping: raw values are not comparable
    try:
        t_low = float(trained["percentiles"]["0.5"])
        t_high = float(trained["percentiles"]["99.5"])
        t_types = ", ".join(trained.get("dtypes", ()))
    except (KeyError, TypeError, ValueError):
        return []
    span = max(t_high - t_low, 1.0)
    if low >= t_low - span and high <= t_high + span:
        return []
    return [
        f"{name}: this input ({seen}) is unlike the training data ({t_types} values "
        f"{_span(t_low, t_high)}) under an absolute mapping: masks may be empty or wrong; "
        "give the input in the training data's units or choose a matching --intensity"
    ]


def check_values_usable(image: np.ndarray, name: str) -> list[str]:
    """DataError naming ``name`` when (C, ...) ``image`` holds no finite value or one value
    only (an all-NaN or constant image segments as noise); a warning for some NaNs (the
    mappings turn them into 0, the darkest value)."""
    finite = np.isfinite(image) if image.dtype.kind == "f" else None
    if finite is not None and not finite.any():
        raise DataError(f"{name}: every value is NaN or infinite: nothing to segment")
    values = image[finite] if finite is not None else image
    low, high = values.min(), values.max()
    if low == high:
        raise DataError(f"{name}: every value is {low}: a constant image has nothing to segment")
    if finite is None or finite.all():
        return []
    bad = int(finite.size - np.count_nonzero(finite))
    return [f"{name}: {bad:,} of {finite.size:,} values are NaN or infinite; they are mapped to 0"]
