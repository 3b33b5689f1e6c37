"""``ssam serve``: the web app and HTTP API for one model, loaded once."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console

from ssam.cli.choices import BACKEND_HELP, Backend, IntensityOption
from ssam.cli.common import intensity_option
from ssam.errors import SERVE_PACKAGES, ConfigError, require_packages
from ssam.web.settings import MIB, ServerSettings


def model_info(adapter: Path | None, merged: Path | None) -> dict:
    """What ``GET /v1/labels`` and each result's provenance tell about the model: file name,
    its SHA-256 and training settings."""
    from ssam.tuning.adapter import read_adapter
    from ssam.weights import file_sha256

    if adapter is None:
        if merged is None:
            return {"merged": None}
        return {"merged": merged.name, "merged_sha256": file_sha256(merged)}
    _, config = read_adapter(adapter)
    keys = ("variant", "image_size", "method", "text_encoder")
    return {
        "adapter": adapter.name,
        "adapter_sha256": file_sha256(adapter),
        **{key: config.get(key) for key in keys},
    }


def warn_if_exposed(host: str, console: Console) -> None:
    """A warning when the server will listen beyond this machine."""
    from ssam.web.server import is_loopback

    if not is_loopback(host):
        console.print(
            f"[yellow]warning:[/] binding {host}: anyone who can reach this address can upload "
            "images; the server has no authentication (put it behind a proxy that has). "
            "Requests must name this server as 127.0.0.1, localhost, ::1, the bound address "
            "or an --allowed-host"
        )


# Bind addresses that mean "every interface": no client names the server so.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def host_names(host: str, allowed_host: list[str]) -> tuple[str, ...]:
    """Host header names to answer besides the loopback ones: the bound host and extras."""
    bound = () if host.strip("[]") in WILDCARD_HOSTS else (host,)
    return (*bound, *allowed_host)


def serve_entry(
    adapter: Path | None = typer.Option(None, help="adapter file (.safetensors)"),
    merged: Path | None = typer.Option(None, help="merged checkpoint (.pth) instead"),
    sam_checkpoint: Path | None = typer.Option(None, help="base SAM checkpoint of the adapter"),
    clip_checkpoint: Path | None = typer.Option(None, help="CLIP weights file"),
    host: str = typer.Option("127.0.0.1", help="address to bind (default: this machine only)"),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port"),
    device: str = typer.Option("cpu", help="torch device"),
    intensity: IntensityOption = intensity_option(),
    window_level: float | None = typer.Option(None, help="CT window level (--intensity ct)"),
    window_width: float | None = typer.Option(None, help="CT window width (--intensity ct)"),
    batch_size: int = typer.Option(4, min=1, help="slices per image-encoder call"),
    max_upload_mb: float = typer.Option(256.0, min=0.001, help="largest upload (MiB)"),
    max_pixels: int = typer.Option(40_000_000, min=1, help="largest 2D image (pixels)"),
    max_voxels: int = typer.Option(64_000_000, min=1, help="largest volume (voxels)"),
    max_slices: int = typer.Option(512, min=1, help="most slices of a volume"),
    max_labels: int = typer.Option(16, min=1, max=255, help="most labels per request"),
    max_refine_points: int = typer.Option(
        64, min=1, max=4096, help="most points per click-to-refine call (POST /v1/refine)"
    ),
    refine_undo_depth: int = typer.Option(
        32, min=1, max=1024, help="refine edits per job and label that undo can take back"
    ),
    workers: int = typer.Option(1, min=1, max=16, help="jobs running at once"),
    queue_size: int = typer.Option(4, min=0, help="jobs waiting; one more gets 429"),
    timeout: float = typer.Option(300.0, min=0.1, help="seconds before /v1/segment gives 504"),
    cache_mb: float = typer.Option(512.0, min=0, help="image-embedding cache budget (MiB)"),
    keep_results: int = typer.Option(4, min=1, help="finished page jobs kept for downloads"),
    allowed_host: list[str] = typer.Option(
        [], "--allowed-host", help="another Host name to answer (repeatable; '*': any)"
    ),
    allow_origin: list[str] = typer.Option(
        [], "--allow-origin", help="site (http://host:port) whose pages may POST (repeatable)"
    ),
    header_timeout: float = typer.Option(
        10.0, min=0.1, help="seconds a connection gets to send a whole request head"
    ),
    max_client_connections: int = typer.Option(
        32, min=1, help="open connections per client address; more get 429"
    ),
    offline: bool = typer.Option(False, help="never download weights"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
    threads: str = typer.Option("auto", help="torch CPU threads: a number, or auto"),
    backend: Backend = typer.Option("torch", help=BACKEND_HELP),
) -> None:
    """Serve the web page and HTTP API: segment uploads by label name in a browser."""
    require_packages("ssam serve", SERVE_PACKAGES)
    from ssam.cli.common import check_files, load_option_predictor, use_threads
    from ssam.web.app import create_app
    from ssam.web.server import build_server

    fields = dict(
        max_upload_bytes=int(max_upload_mb * MIB),
        max_pixels=max_pixels,
        max_voxels=max_voxels,
        max_slices=max_slices,
        max_labels=max_labels,
        max_refine_points=max_refine_points,
        refine_undo_depth=refine_undo_depth,
        workers=workers,
        queue_size=queue_size,
        request_timeout_s=timeout,
        cache_bytes=int(cache_mb * MIB),
        keep_results=keep_results,
        allowed_hosts=host_names(host, allowed_host),
        allowed_origins=tuple(allow_origin),
        header_timeout_s=header_timeout,
        max_client_connections=max_client_connections,
    )
    try:
        settings = ServerSettings(**fields)
    except ValidationError as err:
        raise ConfigError("; ".join(error["msg"] for error in err.errors())) from None
    console = Console(stderr=True)
    warn_if_exposed(host, console)
    if adapter is None and merged is None:
        raise ConfigError("give --adapter (with --sam-checkpoint) or --merged")
    check_files(
        adapter=adapter,
        merged=merged,
        sam_checkpoint=sam_checkpoint,
        clip_checkpoint=clip_checkpoint,
    )
    threads_line = use_threads(threads)
    predictor = load_option_predictor(
        adapter,
        merged,
        sam_checkpoint,
        clip_checkpoint,
        device,
        offline,
        intensity,
        batch_size,
        (window_level, window_width),
        backend=backend,
    )
    console.print(threads_line, highlight=False)
    app = create_app(predictor, settings, model_info(adapter, merged))
    if app.state.services.viewer is None:
        console.print(
            "[yellow]warning:[/] the page's volume viewer (NiiVue) is not built: volumes show "
            "one plane. Run scripts/build-web.sh (needs npm)"
        )
    console.print(f"S-SAM on http://{host}:{port}  (labels: {', '.join(predictor.trained_labels)})")
    build_server(app, host, port, log_level).run()
