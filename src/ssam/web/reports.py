"""JSON bodies the API answers with: a result's summary, and the full ``/v1/segment`` body."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from ssam import __version__
from ssam.inference.label_maps import LABEL_MAP_RULE, THRESHOLD
from ssam.inference.overlay import label_colours
from ssam.web.encoding import encode_array
from ssam.web.engine import SLICE_AXIS, WebSegmentation


def colour_hex(n_labels: int) -> list[str]:
    """'#rrggbb' of labels 1..n, as the overlays draw them."""
    return ["#{:02x}{:02x}{:02x}".format(*map(int, c)) for c in label_colours(n_labels)[1:]]


def size_unit(result: WebSegmentation) -> str:
    """What the sizes are in: mL or voxels (volumes), mm2 or pixels (2D)."""
    if result.is_volume:
        return "mL" if result.spacing_known else "voxels"
    return "mm2" if result.spacing_known else "pixels"


def busiest_slice(result: WebSegmentation) -> int:
    """The slice with most labelled pixels (the middle one when none has any)."""
    if not result.is_volume:
        return 0
    counts = np.count_nonzero(result.label_map, axis=(0, 1))
    return int(counts.argmax()) if counts.any() else result.n_slices // 2


def warnings_of(result: WebSegmentation) -> list[str]:
    """Notes a user should see next to the result."""
    notes = list(result.intensity_warnings)
    notes += [
        f"'{name}' is not a label the model was trained on; its mask rests on the name alone"
        for name in result.unknown_labels
    ]
    if not result.spacing_known:
        notes.append("the file states no pixel spacing: sizes are in pixels/voxels only")
    return notes


def summarise(result: WebSegmentation, timings: dict[str, float]) -> dict:
    """Everything but the arrays: labels, colours, geometry, sizes, warnings, timings.

    ``sizes`` count each label's own mask (labels may overlap); ``label_map_rule`` says how
    the label map keeps one label per pixel for display.
    ``shape`` is (H, W) for 2D images and (I, J, K) for volumes; ``slices`` counts the
    slices along the last axis (1 for 2D images); ``rotated`` tells that slice pictures are
    shown rotated 90 degrees counter-clockwise (NIfTI).
    """
    props = result.properties
    return {
        "labels": list(result.labels),
        "colours": colour_hex(len(result.labels)),
        "kind": "3d" if result.is_volume else "2d",
        "format": result.format,
        "shape": list(result.label_map.shape),
        "spacing_mm": list(props.spacing) if result.spacing_known else None,
        "unit": size_unit(result),
        "sizes": result.label_sizes(),
        "label_map_rule": LABEL_MAP_RULE,
        "slices": result.n_slices,
        "slice_axis": SLICE_AXIS,
        "rotated": result.format == "nifti",
        "best_slice": busiest_slice(result),
        "warnings": warnings_of(result),
        "cache": {"slices": result.n_slices, "hits": result.cache_hits, "encoded": result.encoded},
        "timings_ms": {key: round(value * 1000.0, 2) for key, value in timings.items()},
    }


def provenance(result: WebSegmentation, model: dict, upload: dict) -> dict:
    """How a result was made: ssam version, model files and their SHA-256 (``model``: the
    server's ``info``), the 0-255 intensity mapping, the mask threshold, the input (``upload``:
    name, files, bytes; plus its SHA-256) and the UTC time."""
    return {
        "ssam_version": __version__,
        "model": dict(model),
        "intensity": result.intensity.model_dump() if result.intensity is not None else None,
        "threshold": THRESHOLD,
        "input": {**upload, "sha256": result.digest},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def segment_payload(result: WebSegmentation, summary: dict, fmt: str, include_masks: bool) -> dict:
    """The ``/v1/segment`` body: ``summary`` plus the label map (and masks) in ``fmt``."""
    body = dict(summary)
    body["mask_format"] = fmt
    body["label_map"] = encode_array(result, result.label_map, fmt, is_mask=False)
    if include_masks:
        body["masks"] = {
            name: encode_array(result, result.masks[k], fmt, is_mask=True)
            for k, name in enumerate(result.labels)
        }
    return body
