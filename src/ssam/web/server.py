"""Running the app with uvicorn: in the foreground (``ssam serve``) or in a background
thread on a free loopback port (tests, the load test)."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def build_server(app: FastAPI, host: str, port: int, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server for ``app``; no Server header, connections capped as a last guard."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        limit_concurrency=256,
        timeout_keep_alive=5,
    )
    return uvicorn.Server(config)


class BackgroundServer:
    """``app`` served on a free loopback port from a daemon thread; a context manager."""

    def __init__(self, app: FastAPI, host: str = LOOPBACK, log_level: str = "warning") -> None:
        if not is_loopback(host):
            raise ValueError(f"background servers bind to loopback only, not {host!r}")
        self.host, self.port = host, free_port(host)
        self.server = build_server(app, host, self.port, log_level)
        self.thread = threading.Thread(target=self.server.run, name="ssam-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
