"""Auth, body limits and request logs, as pure ASGI middleware so streaming and disconnects pass through."""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse, Response

from .errors import error_response
from .settings import ServerSettings

logger = logging.getLogger("tadastream.server")

#: Beyond /v1/*, what needs the key when one is set: the API's schema and its docs page.
GUARDED_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect"})


def authorized(api_key: str | None, header: str | None, query_key: str | None = None) -> bool:
    """Whether the bearer ``header`` (or, for WebSockets, ``?api_key=``) matches; compared in constant time."""
    if not api_key:
        return True
    given = None
    if header and header[:7].lower() == "bearer ":
        given = header[7:].strip()
    elif query_key:
        given = query_key
    return given is not None and hmac.compare_digest(given.encode(), api_key.encode())


class _Sent:
    """What one request sent (status, bytes, time of the first byte), for its log line.

    After the body limit is hit, ``send_app`` mutes the app so that only our 413 goes out.
    """

    def __init__(self, send, request_id: str, echo_id: bool = True):
        self._send, self.request_id, self.echo_id = send, request_id, echo_id
        self.status: int | None = None
        self.bytes = 0
        self.first_byte: float | None = None
        self.too_large = False

    async def send(self, message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            if self.echo_id:
                headers = [*message.get("headers", []), (b"x-request-id", self.request_id.encode())]
                message = {**message, "headers": headers}
        elif kind == "websocket.accept":
            self.status = 101
        elif kind == "websocket.close" and self.status is None:
            self.status = 403
        elif kind in ("http.response.body", "websocket.send"):
            size = len(message.get("body") or message.get("bytes") or (message.get("text") or "").encode())
            if size and self.first_byte is None:
                self.first_byte = time.perf_counter()
            self.bytes += size
        await self._send(message)

    async def send_app(self, message) -> None:
        if not self.too_large:
            await self.send(message)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _proxy_request_id(scope) -> str | None:
    """The ``x-request-id`` a proxy in front (Ray Serve's, a load balancer) gave this request, if it is a
    plain token: logs on both sides then share one id."""
    for name, value in scope.get("headers") or ():
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.fullmatch(text) else None
    return None


class RequestGuard:
    """API key for /v1 HTTP routes, request body limits, and one JSON log line per request."""

    def __init__(self, app, settings: ServerSettings, observe: Callable[[dict[str, Any]], None] | None = None):
        self.app, self.settings, self.observe = app, settings, observe

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        given = _proxy_request_id(scope)
        log: dict[str, Any] = {"request_id": given or secrets.token_hex(6)}
        scope["tadastream.log"], scope["tadastream.start"] = log, start
        sent = _Sent(send, log["request_id"], echo_id=given is None)  # a proxy that named it, answers it
        try:
            if scope["type"] == "http":
                await self._http(scope, receive, sent)
            else:
                await self.app(scope, receive, sent.send_app)
        except Exception:
            sent.status = sent.status or 500
            raise
        finally:
            end = time.perf_counter()
            record = {
                "event": "request",
                "method": scope.get("method", "WS"),
                "path": scope.get("path", ""),
                "status": sent.status,
                "duration_ms": round((end - start) * 1000, 1),
                "ttfb_ms": None if sent.first_byte is None else round((sent.first_byte - start) * 1000, 1),
                "bytes_out": sent.bytes,
                "client": (scope.get("client") or (None,))[0],
                **log,
            }
            logger.info(json.dumps(record, default=str))
            if self.observe is not None:
                self.observe(record)

    async def _http(self, scope, receive, sent: _Sent) -> None:
        """Refuse a missing key (401) or a body over the limit (413, declared or counted), else run the app."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path, method = scope.get("path", ""), scope.get("method", "WS")

        async def reply(response: Response) -> None:
            await response(scope, receive, sent.send)

        guarded = path.startswith("/v1/") or path in GUARDED_PATHS
        if guarded and not authorized(self.settings.api_key, headers.get("authorization")):
            await reply(
                error_response(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", "invalid_api_key")
            )
            return
        limit = self.settings.max_body_bytes
        if path == "/v1/voices" and method == "POST":
            limit = self.settings.max_voice_bytes + 64 * 1024
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await reply(_too_large(limit))
            return
        received = 0

        async def receive_limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    sent.too_large = True
                    return {"type": "http.disconnect"}
            return message

        try:
            await self.app(scope, receive_limited, sent.send_app)
        except Exception:
            if not sent.too_large:
                raise
        if sent.too_large and sent.status is None:
            await reply(_too_large(limit))


def _too_large(limit: int) -> JSONResponse:
    return error_response(413, f"request body larger than {limit} bytes", "body_too_large")
