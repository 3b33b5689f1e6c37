"""ASGI middleware: a hard cap on request bodies, Host and Origin checks, and security
headers on every response.

The body cap answers 413 from the ``Content-Length`` header before reading anything, and
counts streamed (chunked) bodies as they arrive; the upload handler checks the file's exact
size again against the configured limit. The Host check (400) keeps DNS-rebinding pages
out: a browser that reaches this server under a foreign name sends that name. The Origin
check (403) refuses POST and DELETE sent by another site's page unless it was allowed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ssam.web.settings import normalise_host

# Room for the multipart framing and the form fields around the file.
FORM_SLACK = 64 * 1024

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
        b"script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        b"frame-ancestors 'none'",
    ),
]
# Methods a cross-origin page may not send unless its origin is allowed.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class _BodyTooLarge(Exception):
    """Raised from ``receive`` once a streamed body passes the cap."""


async def _send_json(send: Send, status: int, detail: str) -> None:
    """Answer ``status`` with ``{"detail": detail}``, as the app's own errors look."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_413(send: Send, limit: int) -> None:
    await _send_json(send, 413, f"request body is larger than the limit of {limit:,} bytes")


class BodyLimitMiddleware:
    """Refuse HTTP request bodies over ``max_bytes`` with 413 (and ``{"detail": ...}``)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _send_413(send, self.max_bytes)
            return
        state = {"received": 0, "exceeded": False, "answered": False}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["exceeded"] = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Once the cap is passed, whatever the app answers (its form parser turns our
            # exception into a 400) is replaced by the 413.
            if state["exceeded"]:
                if message["type"] == "http.response.start" and not state["answered"]:
                    state["answered"] = True
                    await _send_413(send, self.max_bytes)
                return
            state["answered"] = state["answered"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not state["answered"]:
                await _send_413(send, self.max_bytes)


class SecurityHeadersMiddleware:
    """Add ``SECURITY_HEADERS`` (no sniffing, no framing, same-origin scripts only)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _header(scope: Scope, name: bytes) -> str | None:
    """A request header's value (latin-1, as HTTP defines it), or None when absent."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def host_of(host_header: str) -> str:
    """The host name of a Host header value: no port, no IPv6 brackets, lower case."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


class HostCheckMiddleware:
    """Answer 400 to a request whose Host header names none of ``allowed`` ("*": any).

    A request without a Host header (HTTP/1.0) passes: browsers always send one.
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(normalise_host(name) for name in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = _header(scope, b"host") if scope["type"] == "http" else None
        if host is None or "*" in self.allowed or host_of(host) in self.allowed:
            await self.app(scope, receive, send)
            return
        names = ", ".join(sorted(self.allowed))
        await _send_json(
            send,
            400,
            f"Host header {host!r} is not a name this server answers to ({names}); "
            f"start it with --allowed-host {host_of(host) or 'NAME'} to accept it",
        )


def same_origin(origin: str, host_header: str | None) -> bool:
    """True when ``origin`` (scheme://host[:port]) names the host and port the request went to."""
    netloc = origin.strip().lower().partition("://")[2].rstrip("/")
    return host_header is not None and netloc == host_header.strip().lower()


class OriginCheckMiddleware:
    """Answer 403 to a POST/PUT/PATCH/DELETE sent from a page of another origin.

    Browsers send ``Origin`` with such requests; a request whose origin is the server's own
    (same host and port) or in ``allowed`` ("*": any) passes, as does one without ``Origin``
    (not from a browser page: curl, scripts).
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(allowed)

    def _refuses(self, scope: Scope) -> str | None:
        """The offending Origin, or None when the request may go on."""
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS:
            return None
        origin = _header(scope, b"origin")
        if origin is None or "*" in self.allowed or origin.lower().rstrip("/") in self.allowed:
            return None
        return None if same_origin(origin, _header(scope, b"host")) else origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = self._refuses(scope)
        if origin is None:
            await self.app(scope, receive, send)
            return
        await _send_json(
            send,
            403,
            f"cross-origin {scope['method']} from {origin!r} refused; start the server with "
            f"--allow-origin {origin} to allow that site's pages",
        )
