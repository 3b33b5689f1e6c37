"""ASGI middleware: a hard cap on request bodies, and security headers on every response.

The body cap answers 413 from the ``Content-Length`` header before reading anything, and
counts streamed (chunked) bodies as they arrive; the upload handler checks the file's exact
size again against the configured limit.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class _BodyTooLarge(Exception):
    """Raised from ``receive`` once a streamed body passes the cap."""


async def _send_413(send: Send, limit: int) -> None:
    body = json.dumps(
        {"detail": f"request body is larger than the limit of {limit:,} bytes"}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
