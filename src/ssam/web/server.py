"""Running the app with uvicorn: in the foreground (``ssam serve``) or in a background
thread on a free loopback port (tests, the load test).

Connections are admitted by ``GuardedH11Protocol``, uvicorn's h11 protocol with two guards
uvicorn lacks: a per-client-address cap on open connections (more are answered 429 and
closed), and a deadline for the request head (a connection that opens, or starts its next
request, and does not finish the head in ``header_timeout_s`` gets 408 and is closed). Without
them a few hundred idle half-sent requests fill uvicorn's ``limit_concurrency`` and every
other client gets 503.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import threading
import time
from collections import Counter
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from ssam.web.settings import ServerSettings

LOOPBACK = "127.0.0.1"
# uvicorn answers 503 to any request while this many connections (or tasks) are open.
LIMIT_CONCURRENCY = 256


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


def raw_response(status: int, reason: str, detail: str = "", extra: str = "") -> bytes:
    """A whole ``Connection: close`` HTTP/1.1 response, for answers sent outside h11."""
    body = json.dumps({"detail": detail}).encode() if detail else b""
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n{extra}"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class ConnectionGuard:
    """Open connections per client address of one server (used from its event loop only)."""

    def __init__(self, max_per_client: int, header_timeout_s: float) -> None:
        self.max_per_client = max_per_client
        self.header_timeout_s = header_timeout_s
        self.open: Counter[str] = Counter()
        self.warned: set[str] = set()

    def admit(self, client: str) -> bool:
        """Count a new connection from ``client``; False (not counted) when at the cap."""
        if self.open[client] >= self.max_per_client:
            return False
        self.open[client] += 1
        return True

    def release(self, client: str) -> None:
        """Forget a closed connection that ``admit`` counted."""
        left = self.open[client] - 1
        if left > 0:
            self.open[client] = left
        else:
            del self.open[client]
        if left < self.max_per_client:
            self.warned.discard(client)

    def first_refusal(self, client: str) -> bool:
        """True once per burst of refusals for ``client`` (to log it once, not a flood)."""
        if client in self.warned:
            return False
        self.warned.add(client)
        return True


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a per-client connection cap and a request-head deadline.

    ``build_server`` makes a subclass per server whose ``guard`` is that server's.
    """

    guard: ConnectionGuard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_key: str | None = None
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        key = self.client[0] if self.client else None
        if key is not None and not self.guard.admit(key):
            self.refuse(key)
            return
        self.client_key = key
        self.arm_head_timer()

    def refuse(self, client: str) -> None:
        """Answer 429 and close: ``client`` already holds its share of connections."""
        limit = self.guard.max_per_client
        if self.guard.first_refusal(client):
            self.logger.warning("%s holds %d connections: refusing more", client, limit)
        detail = f"too many open connections from {client} (limit {limit}); retry later"
        self.transport.write(raw_response(429, "Too Many Requests", detail, "retry-after: 1\r\n"))
        self.transport.close()

    def waiting_for_head(self) -> bool:
        """True between requests: the client has not finished a request head yet."""
        return self.conn.their_state is h11.IDLE

    def arm_head_timer(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.guard.header_timeout_s, self.head_timeout)

    def cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        # The first bytes of a new request start its deadline; trickling more does not.
        if self.waiting_for_head():
            self.arm_head_timer()
        super().data_received(data)
        if not self.waiting_for_head():
            self.cancel_head_timer()

    def head_timeout(self) -> None:
        """The deadline passed without a whole request head: 408 if it began, then close."""
        self.head_timer = None
        if self.transport.is_closing() or not self.waiting_for_head():
            return
        if self.conn.trailing_data[0]:
            limit = self.guard.header_timeout_s
            detail = f"request head not received within {limit:g} s"
            self.transport.write(raw_response(408, "Request Timeout", detail))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_head_timer()
        if self.client_key is not None:
            self.guard.release(self.client_key)
            self.client_key = None
        super().connection_lost(exc)


def app_settings(app: FastAPI) -> ServerSettings:
    """The settings ``create_app`` stored on ``app`` (the defaults for any other app)."""
    services = getattr(app.state, "services", None)
    return services.settings if services is not None else ServerSettings()


def build_server(
    app: FastAPI,
    host: str,
    port: int,
    log_level: str = "info",
    settings: ServerSettings | None = None,
) -> uvicorn.Server:
    """A uvicorn server for ``app``: no Server header, guarded connections (see the module
    docstring), the total capped as a last guard. ``settings`` default to the app's."""
    settings = settings or app_settings(app)
    guard = ConnectionGuard(settings.max_client_connections, settings.header_timeout_s)
    protocol = type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=protocol,
        ws="none",  # no WebSocket routes; an upgraded connection would leave the guard's count
        server_header=False,
        limit_concurrency=LIMIT_CONCURRENCY,
        timeout_keep_alive=settings.keep_alive_s,
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
