"""Job routes for the web page: submit, poll progress, then fetch slices and downloads.

``POST /v1/jobs`` takes the same form as ``/v1/segment`` and answers 202 with the job's id at
once; ``GET /v1/jobs/{id}`` reports state, phase, slices done and elapsed time, and the
result's summary when done. The last few finished jobs are kept for their slice pictures
(``slices/{k}/image.png``), label slices (``slices/{k}/labels``: raw uint8 bytes, row-major,
shape in the ``X-Height``/``X-Width`` headers), the image as NIfTI (``image.nii.gz``), the
label map file, its names
(``labels.json``), a DICOM-SEG for DICOM uploads (``dicom-seg``) and overlay pictures.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Path, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from ssam.config.data import IntensityPreset
from ssam.web.api import FILE_HELP, INTENSITY_HELP, LABELS_HELP, parse_intensity
from ssam.web.encoding import (
    FileBytes,
    dicom_seg_file,
    display_slice,
    label_map_file,
    label_slice,
    labels_file,
    overlay_png,
    png_bytes,
)
from ssam.web.errors import RequestError
from ssam.web.jobs import Job
from ssam.web.services import JobOutput, Services, admit_upload, get_services

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JOB_ID = Path(..., pattern="^[0-9a-f]{32}$", description="id from POST /v1/jobs")


def _job(services: Services, job_id: str) -> Job:
    job = services.jobs.get(job_id)
    if job is None:
        raise RequestError(f"no job {job_id} (finished jobs are kept only a while)", 404)
    return job


def _output(services: Services, job_id: str) -> JobOutput:
    job = _job(services, job_id)
    if job.state != "done":
        raise RequestError(f"job {job_id} is {job.state}, not done", 409)
    return job.result


def snapshot(job: Job, services: Services) -> dict:
    """What the page polls: state, phase, progress, elapsed seconds, error or result."""
    body = {
        "id": job.id,
        "state": job.state,
        "phase": job.phase,
        "progress": {"done": job.done, "total": job.total},
        "elapsed_s": round(job.elapsed(), 3),
        "queue_position": services.jobs.position(job),
        "error": job.error,
        "error_status": job.error_status,
    }
    if job.state == "done":
        body["result"] = job.result.summary
    return body


@router.post("", status_code=202)
async def submit_job(
    file: list[UploadFile] = File(..., description=FILE_HELP),
    labels: list[str] | None = Form(None, description=LABELS_HELP),
    intensity: IntensityPreset | None = Form(None, description=INTENSITY_HELP),
    window_level: float | None = Form(None, description="CT window level (intensity ct)"),
    window_width: float | None = Form(None, description="CT window width (intensity ct)"),
    services: Services = Depends(get_services),
) -> dict:
    """Admit a segmentation job (same limits, fields and errors as ``/v1/segment``)."""
    mapping = parse_intensity(intensity, window_level, window_width)
    job = await admit_upload(services, file, labels, keep=True, intensity=mapping)
    return {"id": job.id, "state": job.state, "status_url": f"/v1/jobs/{job.id}"}


@router.get("/{job_id}")
def get_job(job_id: str = JOB_ID, services: Services = Depends(get_services)) -> dict:
    """State, progress and (when done) the summary of a job."""
    return snapshot(_job(services, job_id), services)


@router.delete("/{job_id}", status_code=204)
def delete_job(job_id: str = JOB_ID, services: Services = Depends(get_services)) -> Response:
    """Cancel a job (at its next slice batch) and forget it."""
    if services.jobs.forget(job_id) is None:
        raise RequestError(f"no job {job_id}", 404)
    return Response(status_code=204)


@router.get("/{job_id}/slices/{index}/image.png", response_class=Response)
async def slice_image(
    index: int, job_id: str = JOB_ID, services: Services = Depends(get_services)
) -> Response:
    """Slice ``index`` as the model saw it (0-255), oriented for display, as PNG."""
    output = _output(services, job_id)
    data = await run_in_threadpool(lambda: png_bytes(display_slice(output.result, index)))
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})


@router.get("/{job_id}/slices/{index}/labels", response_class=Response)
def slice_labels(
    index: int, job_id: str = JOB_ID, services: Services = Depends(get_services)
) -> Response:
    """Slice ``index`` of the label map, oriented as the image: raw uint8, row-major."""
    labels = label_slice(_output(services, job_id).result, index)
    headers = {"X-Height": str(labels.shape[0]), "X-Width": str(labels.shape[1])}
    return Response(labels.tobytes(), media_type="application/octet-stream", headers=headers)


@router.get("/{job_id}/label_map", response_class=Response)
async def label_map(job_id: str = JOB_ID, services: Services = Depends(get_services)) -> Response:
    """The label map file: PNG for 2D rasters, .nii.gz (the upload's geometry, label names in
    its header) for NIfTI, DICOM and volumes."""
    output = _output(services, job_id)
    return _download(await run_in_threadpool(label_map_file, output.result))


@router.get("/{job_id}/image.nii.gz", response_class=Response)
async def image_volume(
    job_id: str = JOB_ID, services: Services = Depends(get_services)
) -> Response:
    """The image beneath the label map as .nii.gz with the label map's affine: a volume's
    stored values (e.g. HU; a DICOM series converted), else the 0-255 values the model saw.
    The page's volume viewer loads it with ``label_map``."""
    output = _output(services, job_id)
    return _download(await run_in_threadpool(output.image.file, output.result))


def _download(file: FileBytes) -> Response:
    disposition = f'attachment; filename="{file.filename}"'
    return Response(
        file.data, media_type=file.media_type, headers={"Content-Disposition": disposition}
    )


@router.get("/{job_id}/labels.json", response_class=Response)
def labels_key(job_id: str = JOB_ID, services: Services = Depends(get_services)) -> Response:
    """What each label map value means: ``{"labels": [{"value", "name", "color"}, ...]}``."""
    return _download(labels_file(_output(services, job_id).result))


@router.get("/{job_id}/dicom-seg", response_class=Response)
async def dicom_seg(job_id: str = JOB_ID, services: Services = Depends(get_services)) -> Response:
    """The label map as a DICOM-SEG referencing the uploaded DICOM file or series (422 for
    other uploads): one segment per label, named by it."""
    output = _output(services, job_id)
    return _download(await run_in_threadpool(dicom_seg_file, output.result, output.sources))


@router.get("/{job_id}/overlay.png", response_class=Response)
async def overlay(
    job_id: str = JOB_ID,
    slice_index: int = Query(0, alias="slice", ge=0, description="slice along the last axis"),
    opacity: float = Query(0.45, ge=0.0, le=1.0, description="fill opacity"),
    services: Services = Depends(get_services),
) -> Response:
    """One slice with the labels drawn in (fill + outline) and a legend, as PNG."""
    output = _output(services, job_id)
    data = await run_in_threadpool(overlay_png, output.result, slice_index, opacity)
    name = f"overlay_slice{slice_index}.png" if output.result.is_volume else "overlay.png"
    disposition = f'attachment; filename="{name}"'
    return Response(data, media_type="image/png", headers={"Content-Disposition": disposition})


@router.get("/{job_id}/report.json")
def report(job_id: str = JOB_ID, services: Services = Depends(get_services)) -> JSONResponse:
    """The result's summary (labels, sizes, geometry, timings) as a JSON download."""
    summary = _output(services, job_id).summary
    return JSONResponse(
        summary, headers={"Content-Disposition": 'attachment; filename="report.json"'}
    )
