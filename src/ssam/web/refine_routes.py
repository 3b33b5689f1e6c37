"""Refine routes: ``POST /v1/refine`` and ``POST /v1/refine/undo`` on a kept job's result.

The job is one admitted by ``POST /v1/jobs`` (``/v1/segment`` keeps nothing to refine); its
slices' embeddings are in the engine's cache under the upload's digest, so a refine runs the
mask decoder only. Points and boxes are (x, y) = (column, row) pixels of the slice itself,
``label_map[:, :, slice]`` (2D images: the image, slice 0), not of the picture the page shows
rotated for NIfTI; answers use the same orientation.
"""

from __future__ import annotations

import base64
import time
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from ssam.inference.refine import RefinePrompt
from ssam.text import normalise_label
from ssam.web.encoding import check_slice, encode_label_map_rle, encode_mask_rle, png_bytes
from ssam.web.errors import RequestError, Unprocessable
from ssam.web.refine import SliceUpdate, refine_slice, undo_refine
from ssam.web.services import JobOutput, Services, get_services

router = APIRouter(prefix="/v1/refine", tags=["refine"])
JOB_ID_PATTERN = "^[0-9a-f]{32}$"


class RefineRequest(BaseModel):
    """One click-to-refine call (JSON body)."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(pattern=JOB_ID_PATTERN, description="id from POST /v1/jobs, done")
    slice: int = Field(0, ge=0, description="slice index along the last axis (2D: 0)")
    label: str = Field(min_length=1, description="one of the job's label names")
    points: list[tuple[float, float, int]] = Field(
        default_factory=list,
        description="[[x, y, 1|0], ...]: slice pixels, 1 positive, 0 negative; all of this "
        "label's points on this slice (they replace the previous ones)",
    )
    box: tuple[float, float, float, float] | None = Field(
        None, description="(x0, y0, x1, y1) slice pixels, optional"
    )
    mask_format: Literal["rle", "png"] = "rle"


class UndoRequest(BaseModel):
    """Take back a label's last refine on a job (JSON body)."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(pattern=JOB_ID_PATTERN)
    label: str = Field(min_length=1)
    mask_format: Literal["rle", "png"] = "rle"


def _job_output(services: Services, job_id: str) -> JobOutput:
    job = services.jobs.get(job_id)
    if job is None:
        raise RequestError(
            f"job_id: no job {job_id} (refine needs a job from POST /v1/jobs; finished jobs "
            "are kept only a while)",
            404,
        )
    if job.state != "done":
        raise RequestError(f"job_id: job {job_id} is {job.state}, not done", 409)
    return job.result


def _label_index(output: JobOutput, name: str) -> int:
    try:
        label = normalise_label(name)
    except ValueError as err:
        raise Unprocessable(f"label: {err}") from None
    labels = output.result.labels
    if label not in labels:
        raise Unprocessable(f"label: {label!r} is not one of this job's labels {list(labels)}")
    return labels.index(label)


def _prompt(request: RefineRequest, output: JobOutput, max_points: int) -> RefinePrompt:
    if len(request.points) > max_points:
        raise Unprocessable(f"points: {len(request.points)} given, at most {max_points}")
    check_slice(output.result, request.slice)
    try:
        prompt = RefinePrompt.build(
            [p[:2] for p in request.points], [p[2] for p in request.points], request.box
        )
    except ValueError as err:
        raise Unprocessable(f"points/box: {err}") from None
    shape = output.result.label_map.shape[:2]
    try:
        prompt.check_inside(*shape)
    except ValueError as err:
        raise Unprocessable(f"points/box: {err}") from None
    return prompt


def _encode_mask(mask: np.ndarray, fmt: str) -> dict:
    if fmt == "rle":
        return encode_mask_rle(mask)
    data = base64.b64encode(png_bytes(mask.astype(np.uint8) * 255)).decode("ascii")
    return {"encoding": "png", "media_type": "image/png", "data": data}


def _answer(output: JobOutput, update: SliceUpdate, fmt: str, start: float) -> dict:
    """The body of refine and undo, from the update alone (taken under the job's edit lock:
    the result may already hold a later call's edit)."""
    name = output.result.labels[update.label]
    prompt = update.prompt
    points = [] if prompt is None else prompt.points.tolist()
    labels = [] if prompt is None else prompt.point_labels.tolist()
    timings = {**update.timings, "total": time.perf_counter() - start}
    return {
        "slice": update.index,
        "label": name,
        "value": update.label + 1,
        "points": [[x, y, int(v)] for (x, y), v in zip(points, labels, strict=True)],
        "box": None if prompt is None or prompt.box is None else list(prompt.box),
        "mask": _encode_mask(update.mask, fmt),
        "label_map": encode_label_map_rle(update.label_map),
        "size": update.size,
        "undo_depth": update.undo_depth,
        "encoded": update.encoded,
        "timings_ms": {key: round(value * 1000.0, 2) for key, value in timings.items()},
    }


@router.post(
    "",
    responses={
        404: {"description": "no such job"},
        409: {"description": "job not done"},
        422: {"description": "bad slice, label, points or box"},
    },
)
def refine(request: RefineRequest, services: Services = Depends(get_services)) -> dict:
    """Re-decode one label on one slice with points and/or a box (decoder only).

    Returns ``slice``, ``label``, ``value``, the ``points``/``box`` now in force, the slice's
    ``mask`` (``mask_format``) and ``label_map`` (RLE), the label's new ``size``,
    ``undo_depth``, ``encoded`` (the embedding had left the cache) and ``timings_ms``.
    No points and no box: back to the plain label prediction (undoable too).
    """
    start = time.perf_counter()
    output = _job_output(services, request.job_id)
    label = _label_index(output, request.label)
    prompt = _prompt(request, output, services.settings.max_refine_points)
    depth = services.settings.refine_undo_depth
    edit = (request.slice, label, prompt)
    sizes = output.summary["sizes"]
    update = refine_slice(services.engine, output.result, output.edits, edit, depth, sizes)
    return _answer(output, update, request.mask_format, start)


@router.post(
    "/undo",
    responses={
        404: {"description": "no such job"},
        409: {"description": "job not done, or nothing to undo"},
    },
)
def undo(request: UndoRequest, services: Services = Depends(get_services)) -> dict:
    """Take back the label's last refine; the answer is that slice as it is now."""
    start = time.perf_counter()
    output = _job_output(services, request.job_id)
    label = _label_index(output, request.label)
    sizes = output.summary["sizes"]
    update = undo_refine(services.engine, output.result, output.edits, label, sizes)
    return _answer(output, update, request.mask_format, start)
