"""Request errors with their HTTP status; the app turns them into ``{"detail": message}``."""

from __future__ import annotations

from ssam.errors import SSAMError


class RequestError(SSAMError):
    """A request the server refuses; ``status`` is the HTTP status code to answer with."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class PayloadTooLarge(RequestError):
    """The upload, or the image in it, is over a configured limit (413)."""

    status = 413


class UnsupportedMedia(RequestError):
    """The upload is not a PNG, JPEG, DICOM or NIfTI file (415)."""

    status = 415


class Unprocessable(RequestError):
    """The request is well formed but cannot be served: corrupt image, bad labels (422)."""

    status = 422


class QueueFull(RequestError):
    """Every running and waiting slot is taken (429); ``retry_after`` in seconds."""

    status = 429

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class JobCancelled(SSAMError):
    """A job stopped at a slice batch because its request timed out or was withdrawn."""
