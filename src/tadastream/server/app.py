"""FastAPI app: OpenAI-compatible speech endpoint, a WebSocket stream, voices and a demo page.

Every generation request goes through one :class:`~tadastream.server.engine.SpeechService`
(admission, then a stream in the shared batched engine, seeded per request). Streaming responses are driven by
:class:`SpeechResponse`, which watches for the client going away the whole time (while queued,
while the first chunk is computed, while streaming) and then stops generation within one step.
Errors are JSON ``{"error": {"message", "type", "code", "param"}}`` as OpenAI sends them; no
stack trace ever reaches a client. One JSON log line per request goes to ``tadastream.server``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hmac
import json
import logging
import secrets
import time
from importlib import resources
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from ..audio import AudioError, available_formats, encode_audio, float_to_pcm16, wav_header
from ..config import SAMPLE_RATE
from ..generation import TextInput
from .engine import (
    EngineError,
    SpeechJob,
    SpeechService,
    VoiceStore,
    check_seed,
    check_voice_name,
    inference_options,
    new_seed,
    voice_seconds,
)

logger = logging.getLogger("tadastream.server")

STREAMED_FORMATS = ("pcm", "wav")
SPEECH_FORMATS = ("pcm", "wav", "flac", "opus", "mp3", "ogg")
MEDIA_TYPES = {
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "opus": "audio/ogg",
    "ogg": "audio/ogg",
    "mp3": "audio/mpeg",
}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    501: "server_error",
    503: "server_overloaded",
}


@dataclasses.dataclass
class ServerSettings:
    """Limits and switches of one server; ``tadastream serve`` options map onto these fields."""

    model_id: str = "demo"
    max_streams: int = 4
    queue: int = 16
    queue_timeout: float = 30.0
    api_key: str | None = None
    max_input_chars: int = 4096
    max_body_bytes: int = 256 * 1024
    max_voice_bytes: int = 16 * 1024 * 1024
    max_voice_seconds: float = 60.0
    voices_dir: str | None = None
    ws_idle_timeout: float = 60.0


class SpeechRequest(BaseModel):
    """Body of ``POST /v1/audio/speech`` (OpenAI's fields plus ``seed`` and ``options``)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # accepted and ignored: this server serves one model
    input: str
    voice: str | dict[str, Any] | None = None
    response_format: str | None = None
    speed: float | None = None
    stream_format: Literal["audio", "sse"] = "audio"
    seed: int | None = None
    instructions: str | None = None  # accepted and ignored: TADA takes no style instructions
    options: dict[str, Any] | None = None


# -- errors -----------------------------------------------------------------------------------
def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "code": code, "param": param}
    }


def error_response(status: int, message: str, code: str | None = None, param: str | None = None, retry_after=0):
    headers = {"Retry-After": str(int(retry_after))} if retry_after else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(error_body(status, message, code, param), status_code=status, headers=headers)


def _engine_error_response(exc: EngineError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.code, exc.param, exc.retry_after)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    where = ".".join(loc) or "body"
    return f"{where}: {first.get('msg', 'invalid value')}", where


# -- auth, body limits, request logs (pure ASGI, so streaming and disconnects pass through) ---
def authorized(api_key: str | None, header: str | None, query_key: str | None = None) -> bool:
    if not api_key:
        return True
    given = None
    if header and header[:7].lower() == "bearer ":
        given = header[7:].strip()
    elif query_key:
        given = query_key
    return given is not None and hmac.compare_digest(given.encode(), api_key.encode())


class RequestGuard:
    """API key for /v1 HTTP routes, request body limits, and one JSON log line per request."""

    def __init__(self, app, settings: ServerSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        log: dict[str, Any] = {"request_id": secrets.token_hex(6)}
        scope["tadastream.log"], scope["tadastream.start"] = log, start
        state: dict[str, Any] = {"status": None, "bytes": 0, "first_byte": None, "too_large": False}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path, method = scope.get("path", ""), scope.get("method", "WS")

        async def send_tracked(message):
            kind = message["type"]
            if kind == "http.response.start":
                state["status"] = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", log["request_id"].encode())],
                }
            elif kind == "websocket.accept":
                state["status"] = 101
            elif kind == "websocket.close" and state["status"] is None:
                state["status"] = 403
            elif kind in ("http.response.body", "websocket.send"):
                size = len(message.get("body") or message.get("bytes") or (message.get("text") or "").encode())
                if size and state["first_byte"] is None:
                    state["first_byte"] = time.perf_counter()
                state["bytes"] += size
            await send(message)

        async def send_wrapped(message):
            if not state["too_large"]:  # once the body limit is hit, only our 413 goes out
                await send_tracked(message)

        async def reply(response: Response) -> None:
            await response(scope, receive, send_tracked)

        try:
            if scope["type"] == "http":
                if path.startswith("/v1/") and not authorized(self.settings.api_key, headers.get("authorization")):
                    await reply(
                        error_response(
                            401, "missing or wrong API key: send 'Authorization: Bearer KEY'", "invalid_api_key"
                        )
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
                            state["too_large"] = True
                            return {"type": "http.disconnect"}
                    return message

                try:
                    await self.app(scope, receive_limited, send_wrapped)
                except Exception:
                    if not state["too_large"]:
                        raise
                if state["too_large"] and state["status"] is None:
                    await reply(_too_large(limit))
            else:
                await self.app(scope, receive, send_wrapped)
        except Exception:
            state["status"] = state["status"] or 500
            raise
        finally:
            end = time.perf_counter()
            record = {
                "event": "request",
                "method": method,
                "path": path,
                "status": state["status"],
                "duration_ms": round((end - start) * 1000, 1),
                "ttfb_ms": None if state["first_byte"] is None else round((state["first_byte"] - start) * 1000, 1),
                "bytes_out": state["bytes"],
                "client": (scope.get("client") or (None,))[0],
                **log,
            }
            logger.info(json.dumps(record, default=str))


def _too_large(limit: int) -> JSONResponse:
    return error_response(413, f"request body larger than {limit} bytes", "body_too_large")


# -- the streaming speech response --------------------------------------------------------------
class SpeechResponse(Response):
    """Admission, generation and streaming, all while watching for the client to disconnect.

    Nothing is sent until the first audio chunk exists, so queue and input errors (and a failure
    in the first step) still get a proper status and JSON body. pcm and wav then stream chunk by
    chunk (wav with a length-unknown header); other formats are encoded once generation ends.
    """

    def __init__(self, app: FastAPI, body: SpeechRequest, fmt: str, seed: int, options, voice: str | None):
        super().__init__(status_code=200)
        self.app_state = app.state
        self.request, self.fmt, self.seed, self.options, self.voice = body, fmt, seed, options, voice
        self.job: SpeechJob | None = None
        self.disconnected = False

    async def __call__(self, scope, receive, send):
        log = scope.get("tadastream.log", {})
        finishing = False

        async def send_marked(message) -> None:
            nonlocal finishing
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finishing = True  # the server reports "disconnect" once the response is complete
            await send(message)

        work = asyncio.create_task(self._run(scope, send_marked, log))

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if finishing:
                return
            self.disconnected = True
            if self.job is not None:
                self.job.cancel()  # before anything else: the worker stops before its next step
            work.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await work
        except asyncio.CancelledError:
            if not self.disconnected:
                raise
        except OSError:  # the client went away while we were sending
            self.disconnected = True
        finally:
            watcher.cancel()
            if self.job is not None:
                log.update(self.job.timings())
                self.job.finish()
            if self.disconnected:
                log["outcome"] = "disconnected"

    async def _run(self, scope, send, log: dict[str, Any]) -> None:
        state = self.app_state
        started = scope.get("tadastream.start", time.perf_counter())
        try:
            prompt = await asyncio.to_thread(state.voices.resolve, self.voice)
            self.job = await state.engine.start(
                prompt, self.request.input, seed=self.seed, options=self.options, started=started
            )
            first = await self.job.next_chunk()
        except EngineError as exc:
            log["outcome"] = exc.code
            await _engine_error_response(exc)(scope, None, send)
            return
        except Exception:
            logger.exception("generation failed before any audio (request %s)", log.get("request_id"))
            log["outcome"] = "error"
            await error_response(500, "internal error while generating audio", "generation_failed")(scope, None, send)
            return
        headers = {
            "x-seed": str(self.seed),
            "x-sample-rate": str(SAMPLE_RATE),
            "cache-control": "no-store",
            "x-accel-buffering": "no",
        }
        try:
            if self.request.stream_format == "sse":
                await self._stream_sse(send, first, headers)
            elif self.fmt in STREAMED_FORMATS:
                await self._stream_raw(send, first, headers)
            else:
                await self._send_encoded(send, first, headers)
        except (asyncio.CancelledError, OSError):
            raise
        except Exception:
            logger.exception("generation failed mid-stream (request %s)", log.get("request_id"))
            log["outcome"] = "error"
            raise
        log.setdefault("outcome", "ok")

    async def _start(self, send, headers: dict[str, str], media_type: str, length: int | None = None) -> None:
        raw = [(b"content-type", media_type.encode())] + [(k.encode(), v.encode()) for k, v in headers.items()]
        if length is not None:
            raw.append((b"content-length", str(length).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": raw})

    async def _chunks(self, first: torch.Tensor | None):
        chunk = first
        while chunk is not None:
            yield chunk
            chunk = await self.job.next_chunk()

    async def _stream_raw(self, send, first, headers) -> None:
        await self._start(send, headers, MEDIA_TYPES[self.fmt])
        prefix = wav_header(SAMPLE_RATE) if self.fmt == "wav" else b""
        async for chunk in self._chunks(first):
            await send({"type": "http.response.body", "body": prefix + float_to_pcm16(chunk), "more_body": True})
            prefix = b""
        await send({"type": "http.response.body", "body": prefix, "more_body": False})

    async def _stream_sse(self, send, first, headers) -> None:
        await self._start(send, headers, "text/event-stream")
        async for chunk in self._chunks(first):
            event = {"type": "speech.audio.delta", "audio": base64.b64encode(float_to_pcm16(chunk)).decode()}
            await send({"type": "http.response.body", "body": _sse(event), "more_body": True})
        tokens = len(self.app_state.engine.model.tokenizer.encode(self.request.input, add_special_tokens=False))
        result = getattr(self.job.stream, "result", None)
        frames = getattr(result, "time_before", None)
        out = int(frames.shape[-1]) if isinstance(frames, torch.Tensor) else self.job.chunks
        done = {
            "type": "speech.audio.done",
            "usage": {"input_tokens": tokens, "output_tokens": out, "total_tokens": tokens + out},
            "timings": self.job.timings(),
        }
        await send({"type": "http.response.body", "body": _sse(done), "more_body": False})

    async def _send_encoded(self, send, first, headers) -> None:
        parts = [c async for c in self._chunks(first)]
        try:
            data = await asyncio.to_thread(encode_audio, torch.cat(parts), SAMPLE_RATE, self.fmt)
        except (AudioError, RuntimeError):  # nothing sent yet, so the client still gets a JSON error
            logger.exception("encoding %s failed", self.fmt)
            await error_response(500, f"could not encode the audio as {self.fmt}", "encoding_failed")(
                {"type": "http"}, None, send
            )
            return
        await self._start(send, headers, MEDIA_TYPES[self.fmt], len(data))
        await send({"type": "http.response.body", "body": data, "more_body": False})


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()


# -- the app ----------------------------------------------------------------------------------
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
    engine = SpeechService(
        model, max_streams=settings.max_streams, queue=settings.queue, queue_timeout=settings.queue_timeout
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        engine.shutdown()

    app = FastAPI(title="tadastream", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.engine = engine
    app.state.voices = VoiceStore(settings.voices_dir, default_voice, model)
    app.state.encoder = encoder
    formats = [f for f in SPEECH_FORMATS if f in available_formats()]
    default_format = "mp3" if "mp3" in formats else "wav"
    app.add_middleware(RequestGuard, settings=settings)

    @app.exception_handler(EngineError)
    async def _engine_error(_request, exc: EngineError):
        return _engine_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, _exc: Exception):
        rid = request.scope.get("tadastream.log", {}).get("request_id")
        return error_response(500, f"internal server error (request {rid})", "internal_error")

    page = resources.files("tadastream.server").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        csp = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'"
        return HTMLResponse(page, headers={"content-security-policy": csp, "cache-control": "no-cache"})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        adm = engine.admission
        return {
            "status": "ok",
            "model": settings.model_id,
            "sample_rate": SAMPLE_RATE,
            "streams": {"active": adm.active, "waiting": adm.waiting, "max": adm.max_active, "queue": adm.max_waiting},
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": settings.model_id, "object": "model", "created": 0, "owned_by": "tadastream"}],
        }

    @app.get("/v1/voices")
    async def list_voices() -> dict[str, Any]:
        return {"object": "list", "data": await asyncio.to_thread(app.state.voices.list)}

    @app.post("/v1/audio/speech")
    async def speech(body: SpeechRequest, request: Request) -> Response:
        log = request.scope.get("tadastream.log", {})
        text = body.input
        log.update(input_chars=len(text), stream_format=body.stream_format)
        if not text.strip():
            raise EngineError(400, "input is empty: send the text to speak", "empty_input", "input")
        if len(text) > settings.max_input_chars:
            raise EngineError(
                400,
                f"input is {len(text)} characters; the limit is {settings.max_input_chars}",
                "input_too_long",
                "input",
            )
        if body.stream_format == "sse":
            fmt = body.response_format or "pcm"
            if fmt != "pcm":
                raise EngineError(
                    400,
                    "stream_format 'sse' sends base64 PCM16 deltas: use response_format 'pcm'",
                    "unsupported_format",
                    "response_format",
                )
        else:
            fmt = (body.response_format or default_format).lower()
            if fmt not in formats:
                raise EngineError(
                    400,
                    f"response_format {fmt!r} is not supported; choose one of {', '.join(formats)}",
                    "unsupported_format",
                    "response_format",
                )
        voice = body.voice.get("id") if isinstance(body.voice, dict) else body.voice
        if voice:
            check_voice_name(voice)
        seed = check_seed(body.seed) if body.seed is not None else new_seed()
        options = inference_options(body.options, body.speed, model)
        log.update(voice=voice or "default", format=fmt, seed=seed)
        return SpeechResponse(app, body, fmt, seed, options, voice)

    @app.post("/v1/voices", status_code=201)
    async def upload_voice(request: Request) -> JSONResponse:
        return await _upload_voice(app, request)

    @app.websocket("/v1/audio/stream")
    async def stream_ws(websocket: WebSocket) -> None:
        await _websocket_session(app, websocket)

    return app


def _version() -> str:
    from .. import __version__

    return __version__


# -- voice upload -----------------------------------------------------------------------------
async def _upload_voice(app: FastAPI, request: Request) -> JSONResponse:
    """multipart: ``name`` + ``file`` (.voice) or ``audio`` (WAV) + ``transcript``; or raw .voice bytes
    with ``?name=`` and Content-Type application/octet-stream. ``overwrite=true`` replaces."""
    settings: ServerSettings = app.state.settings
    store: VoiceStore = app.state.voices
    if store.directory is None:
        raise EngineError(403, "voice uploads are disabled: start the server with --voices DIR", "uploads_disabled")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    audio_bytes = transcript = None
    if content_type == "application/octet-stream":
        name = request.query_params.get("name", "")
        overwrite = request.query_params.get("overwrite", "").lower() in ("1", "true", "yes")
        voice_bytes = await request.body()
    elif content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=2, max_fields=8, max_part_size=64 * 1024)
        except AssertionError:
            raise EngineError(
                501,
                "multipart uploads need python-multipart: pip install 'tadastream[server]'",
                "multipart_unavailable",
            ) from None
        name = str(form.get("name") or "")
        overwrite = str(form.get("overwrite") or "").lower() in ("1", "true", "yes")
        upload, audio_upload = form.get("file"), form.get("audio")
        voice_bytes = await upload.read() if hasattr(upload, "read") else None
        if audio_upload is not None and hasattr(audio_upload, "read"):
            audio_bytes = await audio_upload.read()
            transcript = str(form.get("transcript") or "")
        await form.close()
    else:
        raise EngineError(
            415,
            "send multipart/form-data (name + file, or name + audio + transcript) "
            "or application/octet-stream with ?name=",
            "unsupported_media_type",
        )
    check_voice_name(name)
    if voice_bytes is None and audio_bytes is None:
        raise EngineError(
            400, "send a .voice file as 'file', or a WAV as 'audio' with its 'transcript'", "missing_file", "file"
        )
    for data in (voice_bytes, audio_bytes):
        if data is not None and len(data) > settings.max_voice_bytes:
            raise EngineError(413, f"the upload is larger than {settings.max_voice_bytes} bytes", "voice_too_large")
    if voice_bytes is not None:
        voice = await asyncio.to_thread(store.parse, voice_bytes, max_seconds=settings.max_voice_seconds)
    else:
        voice, voice_bytes = await _encode_voice(app, audio_bytes, transcript)
    await asyncio.to_thread(store.save, name, voice_bytes, overwrite=overwrite)
    body = {"id": name, "object": "voice", "source": "file", "seconds": round(voice_seconds(voice), 3)}
    return JSONResponse(body, status_code=201)


async def _encode_voice(app: FastAPI, audio_bytes: bytes, transcript: str | None):
    from ..audio import check_prompt_audio, load_audio, to_mono

    encoder = app.state.encoder
    settings: ServerSettings = app.state.settings
    if encoder is None:
        raise EngineError(
            415,
            "this server has no codec encoder, so it cannot turn audio into a voice: run "
            "`tadastream encode-voice` and upload the .voice file as 'file'",
            "encoder_unavailable",
            "audio",
        )
    if not transcript or not transcript.strip():
        raise EngineError(400, "send the 'transcript' of the audio with it", "missing_transcript", "transcript")
    try:
        audio, rate = load_audio(audio_bytes)
        audio = to_mono(audio)
        check_prompt_audio(audio, rate)
    except AudioError as exc:
        raise EngineError(400, str(exc), "invalid_audio", "audio") from None
    seconds = audio.shape[-1] / rate
    if seconds > settings.max_voice_seconds:
        raise EngineError(
            413,
            f"the audio is {seconds:.1f} s long; the limit is {settings.max_voice_seconds:g} s",
            "voice_too_long",
            "audio",
        )

    def encode(generator: torch.Generator):
        with torch.inference_mode():
            return encoder(audio, text=transcript.strip(), sample_rate=rate, generator=generator)

    try:
        # The encoder draws noise: from a generator seeded for this upload (seed 0), never the global one.
        voice = await asyncio.wrap_future(app.state.engine.run(encode))
    except ValueError as exc:  # AudioError, TranscriptError: the message says what to fix
        raise EngineError(400, f"could not encode this audio: {exc}", "encoding_failed", "audio") from None
    app.state.voices.check(voice, settings.max_voice_seconds)
    data = await asyncio.to_thread(_voice_bytes, voice)
    return voice, data


def _voice_bytes(voice) -> bytes:
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "v.voice")
        voice.save(path)
        with open(path, "rb") as handle:
            return handle.read()


# -- WebSocket --------------------------------------------------------------------------------
class _WsClosed(Exception):
    pass


def _ws_close_code(exc: EngineError) -> int:
    if exc.status in (429, 503):
        return 1013  # busy: try again later
    return 1003 if exc.code == "invalid_message" else 1008


async def _websocket_session(app: FastAPI, ws: WebSocket) -> None:
    """One utterance per connection; see the package docstring for the protocol.

    Generation starts on the first text message: each message becomes a piece of a
    :class:`~tadastream.generation.TextInput` that the stream takes as it needs, so audio
    starts before ``end`` (and equals the audio of the whole text). One task reads the client's
    messages (pieces, then ``cancel`` or a disconnect), another generates and sends.
    """
    settings: ServerSettings = app.state.settings
    log = ws.scope.get("tadastream.log", {})
    started = ws.scope.get("tadastream.start", time.perf_counter())
    await ws.accept()
    job: SpeechJob | None = None

    async def fail(status: int, message: str, code: str, close_code: int = 1008) -> None:
        log["outcome"] = code
        with contextlib.suppress(Exception):
            await ws.send_json({"type": "error", **error_body(status, message, code)})
            await ws.close(close_code)

    async def refuse(exc: EngineError) -> None:
        await fail(exc.status, exc.message, exc.code, _ws_close_code(exc))

    async def receive(timeout: float | None) -> dict[str, Any]:
        """The next JSON object; raises EngineError for a bad message, _WsClosed when the client left."""
        try:
            message = await asyncio.wait_for(ws.receive(), timeout)
        except TimeoutError:
            raise EngineError(408, f"no message within {timeout:g} s", "timeout") from None
        if message["type"] == "websocket.disconnect":
            raise _WsClosed
        if message.get("text") is None:
            raise EngineError(400, "send JSON text messages, not binary", "invalid_message")
        try:
            data = json.loads(message["text"])
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise EngineError(400, "messages must be JSON objects", "invalid_message")
        return data

    def text_piece(message: dict[str, Any], length: int) -> str:
        piece = message.get("text")
        if not isinstance(piece, str):
            raise EngineError(400, "a text message needs a string 'text'", "invalid_message")
        if length + len(piece) > settings.max_input_chars:
            raise EngineError(400, f"input exceeds {settings.max_input_chars} characters", "input_too_long")
        return piece

    unexpected = "expected {'type': 'text' | 'end' | 'cancel'}"
    try:
        header = ws.headers.get("authorization")
        if not authorized(settings.api_key, header, ws.query_params.get("api_key")):
            await fail(401, "missing or wrong API key (Authorization header or ?api_key=)", "invalid_api_key")
            return
        try:
            config = await receive(settings.ws_idle_timeout)
            voice = config.get("voice")
            if voice:
                check_voice_name(voice)
            seed = check_seed(config["seed"]) if config.get("seed") is not None else new_seed()
            options = inference_options(config.get("options"), config.get("speed"), app.state.engine.model)
            if config.get("format", "pcm") != "pcm":
                raise EngineError(400, "the WebSocket streams raw PCM16: use format 'pcm'", "unsupported_format")
            prompt = await asyncio.to_thread(app.state.voices.resolve, voice)
            log.update(voice=voice or "default", seed=seed, format="pcm")
            await ws.send_json(
                {"type": "ready", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le", "channels": 1, "seed": seed}
            )
            while True:  # no slot is taken before the first text message
                message = await receive(settings.ws_idle_timeout)
                kind = message.get("type")
                if kind == "text":
                    text = TextInput([text_piece(message, 0)])
                    break
                if kind == "end":
                    raise EngineError(400, "no text was sent before 'end'", "empty_input")
                if kind == "cancel":
                    log["outcome"] = "cancelled"
                    await ws.close(1000)
                    return
                raise EngineError(400, unexpected, "invalid_message")
        except EngineError as exc:
            await refuse(exc)
            return
        flags = {"cancel": False}

        def cancel() -> None:
            flags["cancel"] = True
            text.close()
            if job is not None:
                job.cancel()

        async def generate_and_send() -> None:
            nonlocal job
            job = await app.state.engine.start(prompt, text, seed=seed, options=options, started=started)
            if flags["cancel"]:
                job.cancel()
            while (chunk := await job.next_chunk()) is not None:
                await ws.send_bytes(float_to_pcm16(chunk))

        async def read() -> None:
            """Pieces until 'end' (or 'cancel'), then watch for 'cancel'; ends only by raising."""
            while not text.ended:
                message = await receive(settings.ws_idle_timeout)
                kind = message.get("type")
                if kind == "text":
                    text.put(text_piece(message, text.chars))
                elif kind == "end":
                    text.end()
                elif kind == "cancel":
                    cancel()
                else:
                    raise EngineError(400, unexpected, "invalid_message")
            log["input_chars"] = text.chars
            while True:  # from here on anything but "cancel" is ignored; a disconnect ends at once
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    raise _WsClosed
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    if json.loads(message.get("text") or "null").get("type") == "cancel":
                        cancel()

        work = asyncio.create_task(generate_and_send())
        reader = asyncio.create_task(read())
        try:
            await asyncio.wait({work, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():  # the reader failed (bad message, timeout, disconnect), or we were cancelled
                cancel()
                work.cancel()
            reader.cancel()
            await asyncio.gather(work, reader, return_exceptions=True)
        if not work.cancelled() and work.exception() is not None:
            error = work.exception()
            if isinstance(error, EngineError):  # busy, or the text was empty or too long
                await refuse(error)
                return
            raise error
        if work.cancelled():
            error = reader.exception() if reader.done() and not reader.cancelled() else None
            if isinstance(error, EngineError):
                await refuse(error)
                return
            log["outcome"] = "disconnected"
            return
        timings = {**job.timings(), "cancelled": flags["cancel"]}
        log.update(timings)
        if flags["cancel"]:
            log["outcome"] = "cancelled"
        await ws.send_json({"type": "audio.done", "samples": job.samples})
        await ws.send_json({"type": "result", **timings})
        log.setdefault("outcome", "ok")
        await ws.close(1000)
    except _WsClosed:
        log.setdefault("outcome", "disconnected")
    except (WebSocketDisconnect, OSError):
        log.setdefault("outcome", "disconnected")
    except Exception:
        logger.exception("WebSocket session failed (request %s)", log.get("request_id"))
        await fail(500, "internal error while generating audio", "internal_error", 1011)
    finally:
        if job is not None:
            job.finish()
