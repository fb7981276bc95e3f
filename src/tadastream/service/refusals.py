"""A request the service refuses: :class:`RequestRefused`, with the HTTP status and the error code
every front end (HTTP, WebSocket, Wyoming, Ray) reports it by."""

from __future__ import annotations


class RequestRefused(Exception):
    """A request the service refuses, and why: ``status`` (an HTTP status), ``code`` (a stable
    machine-readable reason), ``param`` (the field at fault) and ``retry_after`` (seconds, when busy)."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None, retry_after: float = 0):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.retry_after = status, message, code, param, retry_after
