"""``POST /v1/audio/speech``: the request body, its checks, and the response that streams the audio.

:class:`SpeechResponse` watches for the client going away the whole time (while queued, while
the first chunk is computed, while streaming) and then stops generation within one step.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from ..audio import AudioError, available_formats, encode_audio, float_to_pcm16, wav_header
from ..config import SAMPLE_RATE
from ..generation import InferenceOptions
from .errors import EngineError, engine_error_response, error_response
from .service import SpeechJob, check_seed, check_text, inference_options, new_seed
from .settings import ServerSettings
from .voices import check_voice_name

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


class SpeechRequest(BaseModel):
    """Body of ``POST /v1/audio/speech`` (OpenAI's fields plus ``seed`` and ``options``)."""

    # strict: true is not a seed or a speed, "no" is not false; ints still pass for floats
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None  # accepted and ignored: this server serves one model
    input: str
    voice: str | dict[str, Any] | None = None
    response_format: str | None = None
    speed: float | None = None
    stream_format: Literal["audio", "sse"] = "audio"
    seed: int | None = None
    instructions: str | None = None  # accepted and ignored: TADA takes no style instructions
    options: dict[str, Any] | None = None


def require_json(request: Request) -> None:
    """415 for a body declared as anything but JSON (no Content-Type at all is read as JSON)."""
    declared = request.headers.get("content-type")
    kind = (declared or "application/json").split(";")[0].strip().lower()
    if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
        raise EngineError(
            415,
            f"the body is declared as {kind!r}: send JSON with Content-Type: application/json",
            "unsupported_media_type",
        )


def speech_formats() -> list[str]:
    """The response formats this install can produce (the encoders present), in a fixed order."""
    return [f for f in SPEECH_FORMATS if f in available_formats()]


def _response_format(body: SpeechRequest, formats: list[str]) -> str:
    """The checked format: pcm for SSE; else as asked, or mp3 (OpenAI's default) when it can, else wav."""
    if body.stream_format == "sse":
        fmt = body.response_format or "pcm"
        if fmt != "pcm":
            raise EngineError(
                400,
                "stream_format 'sse' sends base64 PCM16 deltas: use response_format 'pcm'",
                "unsupported_format",
                "response_format",
            )
        return fmt
    default_format = "mp3" if "mp3" in formats else "wav"
    fmt = (body.response_format or default_format).lower()
    if fmt not in formats:
        raise EngineError(
            400,
            f"response_format {fmt!r} is not supported; choose one of {', '.join(formats)}",
            "unsupported_format",
            "response_format",
        )
    return fmt


def speech_response(app: FastAPI, body: SpeechRequest, request: Request, formats: list[str]) -> SpeechResponse:
    """Check the request (raising EngineError 400) and log its choices; the audio is made while the response is sent."""
    settings: ServerSettings = app.state.settings
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
    check_text(text)
    fmt = _response_format(body, formats)
    voice = _voice_name(body.voice)
    seed = check_seed(body.seed) if body.seed is not None else new_seed()
    options = inference_options(body.options, body.speed, app.state.service.model)
    log.update(voice=voice or "default", format=fmt, seed=seed)
    return SpeechResponse(app, body, fmt, seed, options, voice)


def _voice_name(voice: str | dict[str, Any] | None) -> str | None:
    """The checked voice name: a string, or OpenAI's ``{"id": NAME}`` object."""
    if isinstance(voice, dict):
        if set(voice) != {"id"} or not isinstance(voice["id"], str):
            raise EngineError(400, 'voice objects are {"id": "<voice name>"}', "invalid_voice_name", "voice")
        voice = voice["id"]
    return check_voice_name(voice) if voice else None


class SpeechResponse(Response):
    """Admission, generation and streaming, all while watching for the client to disconnect.

    Nothing is sent until the first audio chunk exists, so queue and input errors (and a failure
    in the first step) still get a proper status and JSON body. pcm and wav then stream chunk by
    chunk (wav with a length-unknown header); other formats are encoded once generation ends.
    """

    def __init__(
        self, app: FastAPI, body: SpeechRequest, fmt: str, seed: int, options: InferenceOptions, voice: str | None
    ):
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
            self.job = await state.service.start(
                prompt, self.request.input, seed=self.seed, options=self.options, started=started
            )
            first = await self.job.next_chunk()
        except EngineError as exc:
            log["outcome"] = exc.code
            await engine_error_response(exc)(scope, None, send)
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
        tokens = len(self.app_state.service.model.tokenizer.encode(self.request.input, add_special_tokens=False))
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
    """One server-sent event carrying ``event`` as JSON."""
    return f"data: {json.dumps(event)}\n\n".encode()
