"""Access (key, or Origin and Host), body limits and deadlines, and request logs, as pure ASGI middleware
so streaming and disconnects pass through."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse, Response

from ..audio import complete_wav
from .access import AccessRules
from .docs import DOCS_PAGES, cookie_authorized, login_page
from .errors import error_body, error_response
from .settings import ServerSettings

logger = logging.getLogger("tadastream.server")

#: Beyond /v1/*, what needs the key when one is set: the API's schema and its docs pages (and
#: /metrics, unless --metrics-public).
GUARDED_PATHS = frozenset({"/openapi.json", "/docs", "/redoc"})


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

    After the body limit or deadline is hit, ``send_app`` mutes the app so that only our error goes out.
    """

    def __init__(self, send, request_id: str, echo_id: bool = True):
        self._send, self.request_id, self.echo_id = send, request_id, echo_id
        self.status: int | None = None
        self.bytes = 0
        self.first_byte: float | None = None
        self.too_large = self.too_slow = False
        self.muted = False  # set with too_large / too_slow: only our 413 / 408 goes out

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
        if not self.muted:
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
    """Who may call (key, or Origin and Host without one), body limits and deadlines, and one JSON
    log line per request."""

    def __init__(self, app, settings: ServerSettings, observe: Callable[[dict[str, Any]], None] | None = None):
        self.app, self.settings, self.observe = app, settings, observe
        self.rules = (
            None if settings.api_key else AccessRules(settings.bind_host, settings.allowed_hosts, settings.cors_origins)
        )
        self.guarded = GUARDED_PATHS if settings.metrics_public else GUARDED_PATHS | {"/metrics"}

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        given = _proxy_request_id(scope)
        log: dict[str, Any] = {"request_id": given or secrets.token_hex(6)}
        scope["tadastream.log"], scope["tadastream.start"] = log, start
        if scope.get("http_version") == "1.0":
            send = _WholeBody(send).send  # HTTP/1.0 has no chunked framing: send a Content-Length
        sent = _Sent(send, log["request_id"], echo_id=given is None)  # a proxy that named it, answers it
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            refusal = self.rules.refusal(headers) if self.rules is not None else None
            if refusal is not None:
                log["outcome"] = refusal.code
                if scope["type"] == "http":
                    await error_response(403, refusal.message, refusal.code)(scope, receive, sent.send)
                else:
                    await _refuse_websocket(receive, sent, 403, refusal.message, refusal.code)
            elif scope["type"] == "http":
                await self._http(scope, receive, sent, headers)
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

    def _authorized(self, path: str, headers: dict[str, str]) -> bool:
        if not (path.startswith("/v1/") or path in self.guarded):
            return True
        if authorized(self.settings.api_key, headers.get("authorization")):
            return True
        return path in DOCS_PAGES and cookie_authorized(self.settings.api_key or "", headers.get("cookie"))

    async def _http(self, scope, receive, sent: _Sent, headers: dict[str, str]) -> None:
        """Refuse a missing key (401), a body over the limit (413, declared or counted) or one too
        slow to arrive (408), else run the app."""
        path, method = scope.get("path", ""), scope.get("method", "GET")

        async def reply(response: Response) -> None:
            await response(scope, receive, sent.send)

        if not self._authorized(path, headers):
            scope["tadastream.log"]["outcome"] = "invalid_api_key"
            if path in ("/docs", "/redoc") and method == "GET":
                await reply(login_page(path))
            else:
                await reply(
                    error_response(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", "invalid_api_key")
                )
            return
        limit = self.settings.max_body_bytes
        if path == "/v1/voices" and method == "POST":
            limit = self.settings.max_voice_bytes + 64 * 1024
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            scope["tadastream.log"]["outcome"] = "body_too_large"
            await reply(_too_large(limit))
            return
        size = int(declared) if declared is not None and declared.isdigit() else limit
        deadline = time.monotonic() + self.settings.body_timeout + size / BODY_MIN_RATE
        received, body_done = 0, False

        async def receive_limited():
            nonlocal received, body_done
            if body_done:  # after the body, receive() waits for a disconnect: no deadline then
                return await receive()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                sent.muted = sent.too_slow = True
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    sent.muted = sent.too_large = True
                    return {"type": "http.disconnect"}
            return message

        try:
            await self.app(scope, receive_limited, sent.send_app)
        except Exception:
            if not sent.muted:
                raise
        if sent.status is None and sent.too_large:
            scope["tadastream.log"]["outcome"] = "body_too_large"
            await reply(_too_large(limit))
        elif sent.status is None and sent.too_slow:
            scope["tadastream.log"]["outcome"] = "body_timeout"
            response = error_response(
                408, f"the request body did not arrive within {self.settings.body_timeout:g} s", "body_timeout"
            )
            response.headers["connection"] = "close"
            await reply(response)


#: Bytes per second a large body must keep up, beyond --body-timeout: a 16 MiB voice upload gets
#: 256 s more, a trickle of a few bytes a second is cut off.
BODY_MIN_RATE = 64 * 1024


class _WholeBody:
    """Sends a response as one body with ``Content-Length`` and ``Connection: close``: an HTTP/1.0
    client cannot read the chunked framing a streamed response would otherwise get."""

    def __init__(self, send):
        self._send = send
        self.start: dict[str, Any] | None = None
        self.parts: list[bytes] = []

    async def send(self, message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            has_length = any(name.lower() == b"content-length" for name, _ in message.get("headers", []))
            if has_length:
                headers = [(n, v) for n, v in message.get("headers", []) if n.lower() != b"connection"]
                await self._send({**message, "headers": [*headers, (b"connection", b"close")]})
            else:
                self.start = message
            return
        if kind != "http.response.body" or self.start is None:
            await self._send(message)
            return
        self.parts.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(self.parts)
        if (b"content-type", b"audio/wav") in self.start.get("headers", []):
            body = complete_wav(body)
        headers = [
            (n, v) for n, v in self.start.get("headers", []) if n.lower() not in (b"transfer-encoding", b"connection")
        ]
        headers += [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await self._send({**self.start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})


async def _refuse_websocket(receive, sent: _Sent, status: int, message: str, code: str) -> None:
    """Refuse a handshake so that any client sees why: accept, send the ``error`` message the
    session's own refusals send, and close with 1008 and the message as the close reason."""
    if (await receive())["type"] != "websocket.connect":
        return
    await sent.send({"type": "websocket.accept"})
    await sent.send(
        {
            "type": "websocket.send",
            "text": json.dumps({"type": "error", "status": status, **error_body(status, message, code)}),
        }
    )
    reason = message.encode()[:123].decode("utf-8", "ignore")  # a close frame holds 123 bytes of reason
    await sent.send({"type": "websocket.close", "code": 1008, "reason": reason})
    sent.status = status


def _too_large(limit: int) -> JSONResponse:
    return error_response(413, f"request body larger than {limit} bytes", "body_too_large")
