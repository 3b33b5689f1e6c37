"""What the routes share: the engine, the job queue and the settings, and how an upload
becomes a job (stage, admit, decode, segment) whose result a route awaits or the page polls.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from functools import partial

from fastapi import Request
from pydicom.dataset import Dataset

from ssam.config.data import IntensityConfig
from ssam.data.io import read_dicom_source_headers
from ssam.web.encoding import ImageVolume
from ssam.web.engine import SegmentationEngine, WebSegmentation
from ssam.web.errors import JobCancelled, RequestError
from ssam.web.jobs import Job, JobQueue
from ssam.web.refine import EditHistory
from ssam.web.reports import provenance, summarise
from ssam.web.series_uploads import stage_uploads
from ssam.web.settings import ServerSettings
from ssam.web.uploads import AsyncReadable, StagedUpload, decode_upload


@dataclass
class Services:
    """One server's state, on ``app.state.services``; ``info`` describes the model,
    ``viewer`` the page's volume viewer (None: not built, volumes show one plane)."""

    engine: SegmentationEngine
    jobs: JobQueue
    settings: ServerSettings
    info: dict = field(default_factory=dict)
    viewer: dict | None = None


@dataclass(frozen=True, eq=False)
class JobOutput:
    """A finished segmentation job: the result, seconds per phase, its JSON summary, the
    refine edits made to the result since (``ssam.web.refine``), and for a DICOM upload its
    headers in slice order (no pixel data; what a DICOM-SEG download references);
    ``image``: what the page's viewer shows under the labels (a one-channel volume's stored
    values, e.g. HU; the model's 0-255 input for 2D images and colour volumes)."""

    result: WebSegmentation
    timings: dict[str, float]
    summary: dict
    edits: EditHistory = field(default_factory=EditHistory)
    sources: tuple[Dataset, ...] = ()
    image: ImageVolume = field(default_factory=lambda: ImageVolume(None))


def get_services(request: Request) -> Services:
    """FastAPI dependency: the app's ``Services``."""
    return request.app.state.services


def run_job(
    engine: SegmentationEngine,
    staged: StagedUpload,
    names: tuple[str, ...],
    job: Job,
    intensity: IntensityConfig | None = None,
    origin: tuple[dict, dict] = ({}, {}),
    keep: bool = True,
) -> JobOutput:
    """Worker side: decode the staged upload (then delete it), segment, summarise;
    ``origin``: (model, upload) descriptions for the summary's ``provenance``; ``keep``: the
    result stays for downloads (the page's jobs), so it also holds the DICOM headers a
    DICOM-SEG references and the image the viewer shows (a one-shot request needs neither)."""
    total = staged.header.shape[2]
    job.report(0, total, phase="reading")
    tic = time.perf_counter()
    try:
        upload = decode_upload(staged)
        dicom = keep and staged.format == "dicom"
        sources = tuple(read_dicom_source_headers(staged.path)) if dicom else ()
    finally:
        staged.cleanup()
    read = time.perf_counter() - tic
    job.report(0, total, phase="segmenting")
    result = engine.segment(
        upload, names, progress=job.report, should_stop=job.should_stop, intensity=intensity
    )
    job.phase = "summarising"
    timings = {"read": read, **result.timings}
    summary = {**summarise(result, timings), "provenance": provenance(result, *origin)}
    grey_volume = keep and result.is_volume and upload.image.shape[0] == 1
    image = ImageVolume(upload.image[0] if grey_volume else None)
    return JobOutput(result, timings, summary, sources=sources, image=image)


async def admit_upload(
    services: Services,
    sources: list[AsyncReadable],
    labels: list[str] | None,
    keep: bool,
    intensity: IntensityConfig | None = None,
) -> Job:
    """Check the labels, stage the upload and admit its job (422/413/415/429 on refusal);
    ``sources``: one file, or a DICOM series as several files or one zip; ``intensity``: the request's own 0-255 mapping (None: the adapter's)."""
    settings = services.settings
    names, _ = services.engine.resolve_labels(
        labels or [], settings.max_labels, settings.max_label_chars
    )
    staged = await stage_uploads(sources, settings)
    try:
        origin = (services.info, describe_upload(sources, staged.size))
        work = partial(
            run_job, services.engine, staged, names, intensity=intensity, origin=origin, keep=keep
        )
        job = services.jobs.submit(work, keep=keep)
    except BaseException:
        staged.cleanup()
        raise
    # A job cancelled before it ran never reaches run_job's own clean-up.
    job.future.add_done_callback(lambda _: staged.cleanup())
    return job


def describe_upload(sources: list[AsyncReadable], size: int) -> dict:
    """The upload as its provenance names it: the client's file name (first file of a
    series, at most 255 characters), how many files, and the bytes received."""
    name = getattr(sources[0], "filename", None) if sources else None
    return {"filename": name[:255] if name else None, "files": len(sources), "bytes": size}


async def await_job(job: Job, timeout: float) -> JobOutput:
    """The job's output; 504 (and the job cancelled) after ``timeout`` seconds.

    If the awaiting request itself is cancelled (client gone), its job is cancelled too.
    """
    waiter = asyncio.wrap_future(job.future)
    try:
        return await asyncio.wait_for(asyncio.shield(waiter), timeout=max(0.0, timeout))
    except TimeoutError:
        job.cancel()
        # Nobody awaits the job any more: retrieve its outcome so asyncio does not warn.
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        raise RequestError(
            f"no result within the request timeout ({job.elapsed():.1f} s); the job was "
            "cancelled. The server is busy or the image is large: retry later, send a "
            "smaller image, or use the job endpoints (POST /v1/jobs) and poll",
            status=504,
        ) from None
    except JobCancelled:
        raise RequestError("the job was cancelled (is the server shutting down?)", 503) from None
    except asyncio.CancelledError:
        if job.future.cancelled():
            raise RequestError(
                "the job was cancelled (is the server shutting down?)", 503
            ) from None
        job.cancel()
        raise
