"""Load test of the HTTP API: N concurrent clients on loopback for a fixed time, then a report.

    python bench/load_test.py                 # 8 clients, 60 s, in-process server, tiny model
    python bench/load_test.py --quick         # 8 clients, 3 s: a smoke run
    python bench/load_test.py --url http://127.0.0.1:8000 --labels liver,kidney   # a running server
    python bench/load_test.py --quick --slow-clients 300   # and 300 half-sent requests

Without ``--url`` the script starts the app on a free loopback port with a tiny random model
(``--variant vit_b``: ViT-B at 256 with random weights, CPU speed as the real one;
``--variant litemedsam``: the default base with its real weights, at 256) or with
``--adapter``/``--sam-checkpoint``, and stops it at the end. Each client posts the same image
(Kvasir-SEG from ../shared/data when present, else a synthetic one) with one label at a time,
cycling through the labels, and every ``--fresh-every``-th request a new random image, so both
cached embeddings and encoder runs are measured. 429 answers are the server's deliberate
back-pressure: the client waits as ``Retry-After`` asks (at most 0.2 s) and counts them apart;
any other failure is an error, and the script exits 1 if there was one.

``--slow-clients N`` adds a slow-client attack from a second loopback address (``--slow-from``,
default 127.0.0.2): N connections that send half a request head and idle, each reopened a
second after the server closes it (so at most N x (duration + 1) connections in all). Meanwhile
``/healthz`` is fetched every 0.25 s from the normal address; any answer but 200 counts as a
health failure, and the script exits 1 if there was one.

Prints a table and writes JSON (``--out``, default ``bench/results/load_test-<time>.json``).
"""

from __future__ import annotations

import argparse
import io
import json
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=8, help="concurrent clients")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--quick", action="store_true", help="3 s of load (smoke run)")
    p.add_argument("--url", default=None, help="a running server on loopback (else one is started)")
    p.add_argument("--labels", default="polyp,lung", help="comma-separated labels to cycle")
    p.add_argument("--fresh-every", type=int, default=4, help="every n-th request a new image")
    p.add_argument("--variant", default="tiny", choices=["tiny", "vit_b", "litemedsam"],
                   help="random model (litemedsam: its real weights)")  # fmt: skip
    p.add_argument("--adapter", type=Path, default=None, help="adapter file (instead of random)")
    p.add_argument("--sam-checkpoint", type=Path, default=None)
    p.add_argument("--clip-checkpoint", type=Path, default=None)
    p.add_argument("--queue-size", type=int, default=4, help="in-process server's waiting places")
    p.add_argument("--timeout", type=float, default=120.0, help="client timeout per request (s)")
    p.add_argument("--slow-clients", type=int, default=0, help="half-sent requests held open")
    p.add_argument("--slow-from", default="127.0.0.2", help="loopback address they come from")
    p.add_argument(
        "--header-timeout", type=float, default=None, help="in-process server's head deadline (s)"
    )
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: bench/results/)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 3.0)
    if args.clients < 1 or args.duration <= 0 or args.fresh_every < 0 or args.slow_clients < 0:
        p.error("--clients >= 1, --duration > 0, --fresh-every >= 0, --slow-clients >= 0")
    return args


def check_loopback(url: str) -> str:
    """The URL without a trailing slash; ValueError unless its host is a loopback address."""
    from ssam.web.server import is_loopback

    host = urlparse(url).hostname or ""
    if not is_loopback(host):
        raise ValueError(f"load tests run on loopback only; {host!r} is not a loopback address")
    return url.rstrip("/")


def base_image() -> bytes:
    """The image every client posts: a real Kvasir-SEG JPEG if the data folder is there."""
    images = sorted((SHARED_DATA / "kvasir-seg" / "images").glob("*.jpg"))
    if images:
        return images[0].read_bytes()
    return random_png(np.random.default_rng(0), (256, 256))


def random_png(rng: np.random.Generator, shape: tuple[int, int] = (128, 160)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def describe_model(variant: str) -> str:
    return f"{variant}, its own weights" if variant == "litemedsam" else f"random {variant}"


def build_predictor(args: argparse.Namespace, folder: Path):
    """The model to serve: an adapter on its base, or random weights (speed only)."""
    from ssam.config.model import ModelConfig
    from ssam.factory import create_model
    from ssam.inference.predictor import SSAMPredictor
    from ssam.sam.build import build_random_sam
    from ssam.sam.checkpoint import save_state_dict
    from ssam.sam.variants import get_sam_spec

    if args.adapter is not None:
        return SSAMPredictor.from_adapter(args.adapter, args.sam_checkpoint, args.clip_checkpoint)
    size = 64 if args.variant == "tiny" else 256
    checkpoint = None  # LiteMedSAM: the package's weights
    if args.variant != "litemedsam":
        sam = build_random_sam(get_sam_spec(args.variant), seed=0)
        checkpoint = save_state_dict(sam.state_dict(), folder / f"sam_{args.variant}.pth")
    config = ModelConfig(
        variant=args.variant,
        image_size=size,
        sam_checkpoint=checkpoint,
        text_encoder="tiny",
        allow_download=False,
        svd_cache=False,
    )
    return SSAMPredictor(create_model(config), args.labels.split(","))


@dataclass
class Tally:
    """What the clients saw, shared between threads (append/Counter updates under a lock)."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, status: int | str, seconds: float, detail: str = "") -> None:
        with self.lock:
            self.statuses[str(status)] += 1
            if status == 200:
                self.latencies.append(seconds)
            elif status != 429:
                self.errors.append(f"{status}: {detail[:200]}")


def run_client(
    url: str, index: int, args: argparse.Namespace, image: bytes, stop: float, tally: Tally
) -> None:
    """One client: post until the deadline; back off on 429 as Retry-After asks (<= 0.2 s)."""
    labels = args.labels.split(",")
    rng = np.random.default_rng(1000 + index)
    with httpx.Client(base_url=url, timeout=args.timeout) as http:
        n = 0
        while time.monotonic() < stop:
            fresh = args.fresh_every and n % args.fresh_every == args.fresh_every - 1
            data = random_png(rng) if fresh else image
            form = {"labels": labels[(index + n) % len(labels)], "include_masks": "false"}
            tic = time.perf_counter()
            try:
                response = http.post("/v1/segment", files={"file": ("x", data)}, data=form)
            except httpx.HTTPError as err:
                tally.record(type(err).__name__, time.perf_counter() - tic, str(err))
                continue
            tally.record(response.status_code, time.perf_counter() - tic, response.text)
            if response.status_code == 429:
                time.sleep(min(0.2, float(response.headers.get("retry-after", 1))))
            else:
                n += 1


@dataclass
class SlowTally:
    """What the slow clients and the health probe saw (each written by one thread)."""

    opened: int = 0
    answers: Counter = field(default_factory=Counter)
    connect_errors: int = 0
    health_ms: list[float] = field(default_factory=list)
    health: Counter = field(default_factory=Counter)


# Half a request head: the request line and part of a header, never finished.
SLOW_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0"


def open_slow(address: tuple[str, int], source: str, tally: SlowTally) -> socket.socket | None:
    """One slow connection from ``source`` that has sent ``SLOW_REQUEST`` (None if refused)."""
    tally.opened += 1
    try:
        sock = socket.create_connection(address, timeout=2, source_address=(source, 0))
    except OSError:
        tally.connect_errors += 1
        return None
    with suppress(OSError):  # already refused: its answer (or reset) is read as the others
        sock.sendall(SLOW_REQUEST)
    sock.setblocking(False)
    return sock


def answer_kind(data: bytes) -> str:
    """How the server ended a slow connection: its status code, or "closed"."""
    return data[9:12].decode("ascii", "replace") if data.startswith(b"HTTP/1.") else "closed"


def run_slow_clients(url: str, args: argparse.Namespace, stop: float, tally: SlowTally) -> None:
    """Hold ``args.slow_clients`` half-sent requests open until ``stop``; reopen each one a
    second after the server ends it; at most slow_clients x (duration + 1) connections."""
    parts = urlparse(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    budget = int(args.slow_clients * (args.duration + 1))
    reopen: list[float] = [0.0] * args.slow_clients  # when each place may connect again
    selector = selectors.DefaultSelector()
    try:
        while (now := time.monotonic()) < stop:
            for place, when in enumerate(reopen):
                if when <= now and tally.opened < budget:
                    reopen[place] = float("inf")
                    sock = open_slow(address, args.slow_from, tally)
                    if sock is None:
                        reopen[place] = now + 1.0
                    else:
                        selector.register(sock, selectors.EVENT_READ, place)
            for key, _ in selector.select(timeout=0.1):
                try:
                    data = key.fileobj.recv(4096)
                except OSError:
                    data = b""
                tally.answers[answer_kind(data)] += 1
                selector.unregister(key.fileobj)
                key.fileobj.close()
                reopen[key.data] = time.monotonic() + 1.0
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        selector.close()


def probe_health(url: str, stop: float, tally: SlowTally) -> None:
    """``GET /healthz`` every 0.25 s until ``stop``: statuses and latencies."""
    with httpx.Client(base_url=url, timeout=5) as http:
        while time.monotonic() < stop:
            tic = time.perf_counter()
            try:
                status: int | str = http.get("/healthz").status_code
            except httpx.HTTPError as err:
                status = type(err).__name__
            tally.health[str(status)] += 1
            tally.health_ms.append(1000.0 * (time.perf_counter() - tic))
            time.sleep(0.25)


def slow_report(tally: SlowTally, args: argparse.Namespace) -> dict:
    checks = sum(tally.health.values())
    return {
        "slow_clients": {
            "sockets": args.slow_clients,
            "from": args.slow_from,
            "opened": tally.opened,
            "connect_errors": tally.connect_errors,
            "ended_by_server": dict(tally.answers),
            "still_open_at_end": tally.opened - tally.connect_errors - sum(tally.answers.values()),
        },
        "health": {
            "checks": checks,
            "ok": tally.health.get("200", 0),
            "failures": checks - tally.health.get("200", 0),
            "statuses": dict(tally.health),
            "p50_ms": percentile(tally.health_ms, 50),
            "max_ms": max(tally.health_ms) if tally.health_ms else None,
        },
    }


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(tally: Tally, elapsed: float, args: argparse.Namespace, health: dict) -> dict:
    ok = len(tally.latencies)
    total = sum(tally.statuses.values())
    ms = [1000.0 * s for s in tally.latencies]
    return {
        "clients": args.clients,
        "duration_s": round(elapsed, 3),
        "requests": total,
        "ok": ok,
        "rejected_429": tally.statuses.get("429", 0),
        "errors": len(tally.errors),
        "statuses": dict(tally.statuses),
        "ok_per_s": round(ok / elapsed, 3),
        "requests_per_s": round(total / elapsed, 3),
        "latency_ms": {
            "p50": percentile(ms, 50),
            "p95": percentile(ms, 95),
            "p99": percentile(ms, 99),
            "max": max(ms) if ms else None,
            "mean": statistics.fmean(ms) if ms else None,
        },
        "server": health,
        "error_samples": tally.errors[:10],
    }


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    lat = report["latency_ms"]
    fmt = lambda v: "-" if v is None else f"{v:,.1f}"  # noqa: E731
    table = Table(title=f"load test: {report['clients']} clients, {report['duration_s']:.1f} s")
    for column in ("requests", "ok/s", "req/s", "p50 ms", "p95 ms", "p99 ms", "429", "errors"):
        table.add_column(column, justify="right")
    table.add_row(
        str(report["requests"]),
        f"{report['ok_per_s']:.2f}",
        f"{report['requests_per_s']:.2f}",
        fmt(lat["p50"]),
        fmt(lat["p95"]),
        fmt(lat["p99"]),
        str(report["rejected_429"]),
        str(report["errors"]),
    )
    Console().print(table)
    if "health" in report:
        slow, health = report["slow_clients"], report["health"]
        Console().print(
            f"slow clients: {slow['sockets']} from {slow['from']}, {slow['opened']} opened, "
            f"ended by the server: {slow['ended_by_server']}; /healthz: {health['ok']} of "
            f"{health['checks']} ok, p50 {fmt(health['p50_ms'])} ms, max {fmt(health['max_ms'])} ms"
        )


def run(args: argparse.Namespace) -> dict:
    """Start a server unless ``--url``, run the clients, return the report."""
    with ExitStack() as stack:
        url, setup = args.url, {}
        if url is None:
            from ssam.web.app import create_app
            from ssam.web.server import BackgroundServer
            from ssam.web.settings import ServerSettings

            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ssam-load-")))
            predictor = build_predictor(args, folder)
            timeouts = (
                {} if args.header_timeout is None else {"header_timeout_s": args.header_timeout}
            )
            settings = ServerSettings(queue_size=args.queue_size, upload_dir=folder, **timeouts)
            server = stack.enter_context(BackgroundServer(create_app(predictor, settings)))
            url = server.url
            setup = {
                "model": str(args.adapter or describe_model(args.variant)),
                **settings.model_dump(mode="json"),
            }
        url = check_loopback(url)
        if args.slow_clients:
            check_loopback(f"http://{args.slow_from}")
        image, tally, slow = base_image(), Tally(), SlowTally()
        start = time.monotonic()
        stop = start + args.duration
        threads = [
            threading.Thread(target=run_client, args=(url, i, args, image, stop, tally))
            for i in range(args.clients)
        ]
        if args.slow_clients:
            threads.append(threading.Thread(target=run_slow_clients, args=(url, args, stop, slow)))
            threads.append(threading.Thread(target=probe_health, args=(url, stop, slow)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - start
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        report = summarise(tally, elapsed, args, health)
        if args.slow_clients:
            report.update(slow_report(slow, args))
    report["url"], report["setup"] = url, setup
    report["labels"], report["fresh_every"] = args.labels.split(","), args.fresh_every
    report["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_report(report)
    out = args.out or RESULTS / f"load_test-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    for sample in report["error_samples"]:
        print(f"error: {sample}", file=sys.stderr)
    return 1 if report["errors"] or report.get("health", {}).get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
