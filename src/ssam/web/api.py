"""The HTTP API: ``POST /v1/segment``, ``GET /v1/labels``, ``GET /healthz``.

``/v1/segment`` answers in one request (bounded by the request timeout); the web page uses
the job routes in ``ssam.web.job_routes`` instead, to show progress.
"""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ssam.config.data import IntensityConfig, IntensityPreset
from ssam.errors import summarise_validation
from ssam.inference.overlay import PALETTE
from ssam.web.errors import Unprocessable
from ssam.web.reports import segment_payload
from ssam.web.services import Services, admit_upload, await_job, get_services

router = APIRouter()

LABELS_HELP = (
    "label names: repeat the field or separate names by commas; none given: the labels the "
    "adapter was trained on. Any name is accepted (untrained ones come with a warning)."
)
INTENSITY_HELP = (
    "0-255 mapping for this request: auto (by stored type), rgb, minmax, ct (needs "
    "window_level and window_width) or mri; none given: the mapping the adapter was trained with"
)
FILE_HELP = (
    "PNG, JPEG, DICOM (.dcm) or NIfTI (.nii/.nii.gz); a DICOM series: repeat the field once "
    "per slice, or send one .zip of the slices"
)
FORMAT_HELP = (
    "how the label map and masks come back: 'rle' (run-length JSON, C order), 'png' (2D "
    "only; base64 PNG: label values 1..L, masks 0/255) or 'nifti' (base64 .nii.gz with the "
    "upload's affine; masks 0/1)"
)


def parse_intensity(
    preset: str | None, level: float | None, width: float | None
) -> IntensityConfig | None:
    """A request's intensity fields -> its mapping (None: the adapter's); 422 if invalid."""
    if preset is None:
        if level is not None or width is not None:
            raise Unprocessable("window_level/window_width need intensity=ct")
        return None
    try:
        return IntensityConfig(preset=preset, window_level=level, window_width=width)
    except ValidationError as err:
        raise Unprocessable(f"bad intensity: {summarise_validation(err)}") from None


@router.get("/healthz", tags=["service"])
def healthz(services: Services = Depends(get_services)) -> dict:
    """Liveness, and how full the job queue and the embedding cache are."""
    cache = services.engine.cache.stats()
    return {
        "status": "ok",
        "queue": services.jobs.stats(),
        "cache": {
            "entries": cache.entries,
            "bytes": cache.bytes,
            "budget": cache.budget,
            "hits": cache.hits,
            "misses": cache.misses,
        },
    }


@router.get("/v1/labels", tags=["segmentation"])
def labels(services: Services = Depends(get_services)) -> dict:
    """The adapter's trained labels, the overlay colours, the model and the request limits."""
    settings = services.settings
    return {
        "labels": list(services.engine.trained_labels),
        "any_label": True,
        "colours": ["#{:02x}{:02x}{:02x}".format(*map(int, c)) for c in PALETTE],
        "model": services.info,
        "viewer": services.viewer,
        "limits": {
            "max_upload_bytes": settings.max_upload_bytes,
            "max_pixels": settings.max_pixels,
            "max_voxels": settings.max_voxels,
            "max_slices": settings.max_slices,
            "max_labels": settings.max_labels,
            "max_label_chars": settings.max_label_chars,
            "max_refine_points": settings.max_refine_points,
            "request_timeout_s": settings.request_timeout_s,
        },
        "formats": ["png", "jpeg", "dicom", "nifti"],
    }


@router.post(
    "/v1/segment",
    tags=["segmentation"],
    responses={
        413: {"description": "upload or image over the limits"},
        415: {"description": "not a PNG, JPEG, DICOM or NIfTI file"},
        422: {"description": "corrupt image, bad label names or format"},
        429: {"description": "queue full; see Retry-After"},
        504: {"description": "no result within the request timeout"},
    },
)
async def segment(
    file: list[UploadFile] = File(..., description=FILE_HELP),
    labels: list[str] | None = Form(None, description=LABELS_HELP),
    mask_format: Literal["rle", "png", "nifti"] = Form("rle", description=FORMAT_HELP),
    include_masks: bool = Form(True, description="also return one mask per label"),
    intensity: IntensityPreset | None = Form(None, description=INTENSITY_HELP),
    window_level: float | None = Form(None, description="CT window level (intensity ct)"),
    window_width: float | None = Form(None, description="CT window width (intensity ct)"),
    services: Services = Depends(get_services),
) -> JSONResponse:
    """Segment one image or volume by label name.

    Returns ``labels``, ``colours``, ``kind`` ("2d"/"3d"), ``shape`` ((H, W) or (I, J, K)),
    ``spacing_mm``, ``unit``, ``sizes`` (per label: value, pixels/voxels, area_mm2/volume_ml),
    ``warnings``, ``cache`` (slices, hits, encoded), ``timings_ms`` (queue, read, encode,
    decode, total), ``provenance`` (version, model hashes, intensity, threshold, input name
    and SHA-256, time), ``label_map`` and ``masks`` (name -> mask) in ``mask_format``.
    A DICOM series comes as repeated ``file`` fields or one .zip.
    """
    start = time.monotonic()
    mapping = parse_intensity(intensity, window_level, window_width)
    job = await admit_upload(services, file, labels, keep=False, intensity=mapping)
    timeout = services.settings.request_timeout_s - (time.monotonic() - start)
    output = await await_job(job, timeout)
    timings = dict(output.timings)
    timings["queue"] = (job.started or start) - job.created
    body = await run_in_threadpool(
        segment_payload, output.result, output.summary, mask_format, include_masks
    )
    timings["total"] = time.monotonic() - start
    body["timings_ms"] = {key: round(value * 1000.0, 2) for key, value in timings.items()}
    return JSONResponse(body)
