"""The web app: API routes, the job routes the page polls, and the page itself.

``create_app(predictor, settings)`` builds everything around one loaded model; ``ssam serve``
runs it with uvicorn. The page (``static/``) is plain HTML, CSS and JavaScript served by the
same app: no CDN, nothing fetched from elsewhere. FastAPI's Swagger and ReDoc pages are
switched off (they load from a CDN); the schema is at ``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from ssam.inference.predictor import SSAMPredictor
from ssam.web import api, job_routes, refine_routes
from ssam.web.cache import EmbeddingCache
from ssam.web.engine import SegmentationEngine
from ssam.web.errors import QueueFull, RequestError
from ssam.web.jobs import JobQueue
from ssam.web.middleware import (
    FORM_SLACK,
    BodyLimitMiddleware,
    HostCheckMiddleware,
    OriginCheckMiddleware,
    SecurityHeadersMiddleware,
)
from ssam.web.services import Services
from ssam.web.settings import ServerSettings

STATIC_DIR = Path(__file__).resolve().parent / "static"
VIEWER_DIR = STATIC_DIR / "vendor" / "niivue"  # built by scripts/build-web.sh
DESCRIPTION = (
    "Segment medical images by label name with an S-SAM adapter. Upload a PNG, JPEG, DICOM or "
    "NIfTI file with label names; get the label map, per-label masks and sizes."
)


async def _request_error(request: Request, exc: Exception) -> JSONResponse:
    """``RequestError`` -> its status with ``{"detail": message}`` (and Retry-After on 429)."""
    assert isinstance(exc, RequestError)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else None
    return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)


def volume_viewer() -> dict | None:
    """The page's volume viewer as built into the package (``{"name", "version", "url"}``),
    or None when scripts/build-web.sh has not run: volumes then show one plane."""
    version_file, bundle = VIEWER_DIR / "VERSION", VIEWER_DIR / "niivue.js"
    if not (version_file.is_file() and bundle.is_file()):
        return None
    version = version_file.read_text().strip()
    return {"name": "NiiVue", "version": version, "url": "/static/vendor/niivue/niivue.js"}


def base_hashes(predictor: SSAMPredictor) -> dict:
    """SHA-256 of the base checkpoints the model was built from, where it knows them."""
    base = getattr(predictor.model, "base_info", None)
    if base is None:
        return {}
    return {"base_sha256": base.base_sha256, "text_sha256": base.text_sha256}


def create_app(
    predictor: SSAMPredictor, settings: ServerSettings | None = None, info: dict | None = None
) -> FastAPI:
    """A FastAPI app serving ``predictor`` (loaded once) under ``settings``' limits.

    ``info`` describes the model for ``GET /v1/labels`` (variant, input size, adapter).
    """
    settings = settings or ServerSettings()
    services = Services(
        engine=SegmentationEngine(predictor, EmbeddingCache(settings.cache_bytes)),
        jobs=JobQueue(settings.workers, settings.queue_size, settings.keep_results),
        settings=settings,
        info={"image_size": predictor.image_size, **base_hashes(predictor), **(info or {})},
        viewer=volume_viewer(),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        services.jobs.shutdown()

    app = FastAPI(
        title="S-SAM",
        description=DESCRIPTION,
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.include_router(api.router)
    app.include_router(job_routes.router)
    app.include_router(refine_routes.router)
    app.add_exception_handler(RequestError, _request_error)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    add_middleware(app, settings)
    return app


def add_middleware(app: FastAPI, settings: ServerSettings) -> None:
    """Outermost first: security headers, the Host check, CORS for the allowed origins (only
    when some are), the Origin check, the body cap."""
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes + FORM_SLACK)
    app.add_middleware(OriginCheckMiddleware, allowed=settings.allowed_origins)
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
            expose_headers=["Retry-After", "X-Height", "X-Width", "Content-Disposition"],
        )
    app.add_middleware(HostCheckMiddleware, allowed=settings.host_names)
    app.add_middleware(SecurityHeadersMiddleware)
