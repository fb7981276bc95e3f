"""FastAPI app: OpenAI-compatible speech endpoint, a WebSocket stream, voices and a demo page.

Every generation request goes through one :class:`~tadastream.service.speech.SpeechService`
(admission, then a stream in the shared batched engine, seeded per request). This module wires
the parts together; each lives in its own module: errors (:mod:`.errors`), auth, body limits
and request logs (:mod:`.middleware`), the speech endpoint (:mod:`.speech`), the WebSocket
session (:mod:`.websocket`) and voices (:mod:`.voices`). Errors are JSON
``{"error": {"message", "type", "code", "param"}}`` as OpenAI sends them; no stack trace ever
reaches a client. One JSON log line per request goes to ``tadastream.server``.
"""

from __future__ import annotations

import contextlib
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import SAMPLE_RATE
from ..service import RequestRefused, SpeechService, VoiceStore
from .docs import add_docs_routes
from .errors import error_response, refusal_response, validation_message
from .metrics import ServerMetrics, add_metrics_route
from .middleware import RequestGuard
from .settings import ServerSettings
from .speech import SpeechRequest, require_json, speech_formats, speech_response
from .voice_routes import add_voice_routes
from .websocket import websocket_session

__all__ = ["ServerSettings", "create_app"]

_FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#345"/>'
    b'<path d="M3 8h2l1-4 2 8 2-6 1 2h2" stroke="#fff" fill="none" stroke-width="1.4"/></svg>'
)


def create_app(
    model,
    *,
    settings: ServerSettings | None = None,
    default_voice: Any | None = None,
    encoder: Any | None = None,
) -> FastAPI:
    """Build the app around a loaded model.

    ``default_voice`` (an EncoderOutput) is used when a request names no voice; ``encoder``, if
    given, is called as ``encoder(audio, text=transcript, sample_rate=sr, generator=g)`` (a
    :class:`~tadastream.codec.encoder.Encoder`) to turn uploaded WAV files into voices; without it
    only ``.voice`` uploads are accepted.
    """
    settings = settings or ServerSettings()
    service = SpeechService.from_options(model, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        service.shutdown()

    app = FastAPI(title="tadastream", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.service = service
    app.state.voices = VoiceStore(settings.voices_dir, default_voice, model)
    app.state.encoder = encoder
    formats = speech_formats()
    app.state.metrics = ServerMetrics(service, app.state.voices)
    app.add_middleware(RequestGuard, settings=settings, observe=app.state.metrics.observe_request)
    if settings.cors_origins:  # outermost: a preflight is answered before the key is asked for
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "HEAD", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Seed", "X-Request-Id"],
            max_age=600,
        )
    _add_error_handlers(app)

    page = resources.files("tadastream.server").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        csp = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'"
        return HTMLResponse(page, headers={"content-security-policy": csp, "cache-control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(_FAVICON, media_type="image/svg+xml", headers={"cache-control": "max-age=86400"})

    @app.head("/health", include_in_schema=False)
    async def health_head() -> Response:  # load balancers probe with HEAD
        return Response(status_code=200, media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        adm = service.admission
        return {
            "status": "ok",
            "model": settings.model_id,
            "sample_rate": SAMPLE_RATE,
            "streams": {"active": adm.active, "waiting": adm.waiting, "max": adm.max_active, "queue": adm.max_waiting},
            "admission": adm.snapshot(),
            "engine": service.engine.stats(),
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": settings.model_id, "object": "model", "created": 0, "owned_by": "tadastream"}],
        }

    @app.post("/v1/audio/speech", dependencies=[Depends(require_json)])
    async def speech(body: SpeechRequest, request: Request) -> Response:
        return speech_response(app, body, request, formats)

    @app.post("/v1/audio/speech/with-timestamps", dependencies=[Depends(require_json)])
    async def speech_with_timestamps(body: SpeechRequest, request: Request) -> Response:
        return speech_response(app, body, request, formats, captioned=True)

    add_voice_routes(app)
    add_docs_routes(app, settings.api_key)
    add_metrics_route(app)

    @app.websocket("/v1/audio/stream")
    async def stream_ws(websocket: WebSocket) -> None:
        await websocket_session(app, websocket)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's JSON body; an unexpected one names the request id instead of a trace."""

    def outcome(request: Request, code: str) -> None:  # the log line's and the metrics' outcome
        request.scope.get("tadastream.log", {}).setdefault("outcome", code)

    @app.exception_handler(RequestRefused)
    async def _engine_error(request: Request, exc: RequestRefused):
        outcome(request, exc.code)
        return refusal_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        outcome(request, "invalid_request")
        message, param = validation_message(exc)
        return error_response(400, message, "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, _exc: Exception):
        rid = request.scope.get("tadastream.log", {}).get("request_id")
        return error_response(500, f"internal server error (request {rid})", "internal_error")


def _version() -> str:
    from .. import __version__

    return __version__
