"""Web app and HTTP API: segment images by label name in a browser (``ssam serve``).

Modules: ``settings`` (limits), ``uploads`` (sniffing, temporary files, decoding), ``cache``
(embedding LRU), ``engine`` (cached inference), ``jobs`` (bounded queue), ``encoding`` and
``reports`` (response bodies), ``api`` and ``job_routes`` (routes), ``middleware``, ``app``
(``create_app``), ``server`` (uvicorn). FastAPI and uvicorn are core dependencies; they are
imported only when the app is built, so the other commands start without them.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    # FastAPI is imported only when the app is asked for (the other commands never need it).
    if name == "create_app":
        from ssam.web.app import create_app

        return create_app
    raise AttributeError(name)
