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

from ..audio import AudioError, StreamEncoder, available_formats
from ..config import SAMPLE_RATE
from ..generation import InferenceOptions
from ..service import (
    RequestRefused,
    SpeechJob,
    check_first_chunk,
    check_input_length,
    check_seed,
    check_text,
    check_timestamps,
    check_voice_name,
    inference_options,
    new_seed,
    speech_request,
)
from .errors import error_response, refusal_response
from .settings import ServerSettings

logger = logging.getLogger("tadastream.server")

SPEECH_FORMATS = ("pcm", "wav", "flac", "opus", "mp3", "ogg", "aac")
MEDIA_TYPES = {
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "opus": "audio/ogg",
    "ogg": "audio/ogg",
    "mp3": "audio/mpeg",
    "aac": "audio/aac",
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
    timestamps: bool = False  # SSE: speech.audio.timestamps events with the words' times
    min_first_chunk_ms: float | None = None  # None: adaptive (playback that starts on it does not pause)


def require_json(request: Request) -> None:
    """415 for a body declared as anything but JSON (no Content-Type at all is read as JSON)."""
    declared = request.headers.get("content-type")
    kind = (declared or "application/json").split(";")[0].strip().lower()
    if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
        raise RequestRefused(
            415,
            f"the body is declared as {kind!r}: send JSON with Content-Type: application/json",
            "unsupported_media_type",
        )


def speech_formats() -> list[str]:
    """The response formats this install can produce (the encoders present), in a fixed order."""
    return [f for f in SPEECH_FORMATS if f in available_formats()]


def _response_format(body: SpeechRequest, formats: list[str]) -> str:
    """The checked format: as asked; else pcm for SSE (OpenAI's choice) and mp3 (else wav) for audio."""
    if body.response_format is None:
        return "pcm" if body.stream_format == "sse" else ("mp3" if "mp3" in formats else "wav")
    fmt = body.response_format.lower()
    if fmt not in formats:
        raise RequestRefused(
            400,
            f"response_format {fmt!r} is not supported; choose one of {', '.join(formats)}",
            "unsupported_format",
            "response_format",
        )
    return fmt


def speech_response(
    app: FastAPI, body: SpeechRequest, request: Request, formats: list[str], captioned: bool = False
) -> SpeechResponse:
    """Check the request (raising RequestRefused 400) and log its choices; the audio is made while the response
    is sent: streamed, or with ``captioned`` as one JSON object with the words' times."""
    settings: ServerSettings = app.state.settings
    log = request.scope.get("tadastream.log", {})
    text = body.input
    log.update(input_chars=len(text), stream_format=body.stream_format)
    check_text(text)
    check_input_length(len(text), settings.max_input_chars)
    check_timestamps(app.state.service.model, body.timestamps)
    if body.timestamps and body.stream_format != "sse" and not captioned:
        raise RequestRefused(
            400,
            "timestamps come as SSE events: add stream_format 'sse', or POST /v1/audio/speech/with-timestamps",
            "invalid_request_error",
            "timestamps",
        )
    if captioned and body.stream_format == "sse":
        raise RequestRefused(
            400,
            "with-timestamps answers in one JSON object: leave out stream_format",
            "invalid_request_error",
            "stream_format",
        )
    fmt = _response_format(body, formats)
    voice = _voice_name(body.voice)
    seed = check_seed(body.seed) if body.seed is not None else new_seed()
    options = inference_options(body.options, body.speed, app.state.service.model)
    check_first_chunk(body.min_first_chunk_ms)
    log.update(voice=voice or "default", format=fmt, seed=seed)
    kind = CaptionedSpeechResponse if captioned else SpeechResponse
    return kind(app, body, fmt, seed, options, voice)


def _voice_name(voice: str | dict[str, Any] | None) -> str | None:
    """The checked voice name: a string, or OpenAI's ``{"id": NAME}`` object."""
    if isinstance(voice, dict):
        if set(voice) != {"id"} or not isinstance(voice["id"], str):
            raise RequestRefused(400, 'voice objects are {"id": "<voice name>"}', "invalid_voice_name", "voice")
        voice = voice["id"]
    return check_voice_name(voice) if voice else None


class _Stalled(Exception):
    """The client stopped reading: a write waited longer than the send timeout."""


class SpeechResponse(Response):
    """Admission, generation and streaming, all while watching for the client to disconnect.

    Nothing is sent until the first audio chunk is made and encoded, so queue and input errors
    (and a failure in the first step) still get a proper status and JSON body. Every format then
    streams chunk by chunk as it is made (:class:`~tadastream.audio.StreamEncoder`), as raw bytes
    or as SSE deltas carrying them in base64. A client that stops reading for ``send_timeout``
    seconds, or a request past ``max_session_seconds``, is cut off and its slot freed.
    """

    def __init__(
        self, app: FastAPI, body: SpeechRequest, fmt: str, seed: int, options: InferenceOptions, voice: str | None
    ):
        super().__init__(status_code=200)
        self.app_state = app.state
        self.settings: ServerSettings = app.state.settings
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

    #: Whether the response is the whole file at once, so its header can give the real length.
    whole_file = False

    async def _run(self, scope, send, log: dict[str, Any]) -> None:
        encoder = StreamEncoder(SAMPLE_RATE, self.fmt, whole_file=self.whole_file)
        try:
            head = await self._first_audio(scope, send, log, encoder)
            if head is not None:
                await self._stream_until_done(send, log, encoder, head)
        finally:
            encoder.close()

    async def _first_audio(self, scope, send, log: dict[str, Any], encoder: StreamEncoder) -> bytes | None:
        """Admission, the first chunk and its bytes; on failure the JSON error is sent and None returned."""
        state = self.app_state
        started = scope.get("tadastream.start", time.perf_counter())
        try:
            prompt = await asyncio.to_thread(state.voices.resolve, self.voice)
            speech = speech_request(
                self.request.input, prompt, self.options, self.seed, self.request.min_first_chunk_ms
            )
            self.job = await state.service.start(speech, started)
            return await self._encode(encoder, await self.job.next_chunk())
        except RequestRefused as exc:
            log["outcome"] = exc.code
            await refusal_response(exc)(scope, None, send)
        except AudioError:
            logger.exception("encoding %s failed (request %s)", self.fmt, log.get("request_id"))
            log["outcome"] = "encoding_failed"
            await error_response(500, f"could not encode the audio as {self.fmt}", "encoding_failed")(scope, None, send)
        except Exception:
            logger.exception("generation failed before any audio (request %s)", log.get("request_id"))
            log["outcome"] = "error"
            await error_response(500, "internal error while generating audio", "generation_failed")(scope, None, send)
        return None

    async def _stream_until_done(self, send, log: dict[str, Any], encoder: StreamEncoder, head: bytes) -> None:
        """Stream the audio within the send timeout and the session cap; either one cuts the response off."""
        try:
            async with asyncio.timeout_at(self._deadline()):
                await self._stream(self._timed(send), encoder, head)
        except _Stalled:
            self._cut_off(
                log, "stalled", f"the client read nothing for {self.settings.send_timeout:g} s (--send-timeout)"
            )
            return  # returning with the response unfinished makes the server close the connection
        except TimeoutError:
            cap = self.settings.max_session_seconds
            self._cut_off(log, "session_limit", f"held a stream slot for {cap:g} s (--max-session-seconds)")
            return
        except (asyncio.CancelledError, OSError):
            raise
        except Exception:
            logger.exception("generation failed mid-stream (request %s)", log.get("request_id"))
            log["outcome"] = "error"
            raise
        log.setdefault("outcome", "ok")

    def _cut_off(self, log: dict[str, Any], outcome: str, reason: str) -> None:
        """Stop generating (the slot is freed when the response ends) and say why in the log."""
        self.job.cancel()
        log["outcome"] = outcome
        logger.warning("request %s: %s; stream stopped, slot freed", log.get("request_id"), reason)

    def _deadline(self) -> float | None:
        """The event-loop time when this request's slot is taken back (None: no cap)."""
        cap = self.settings.session_cap
        if cap is None:
            return None
        held = time.perf_counter() - self.job.admitted
        return asyncio.get_running_loop().time() + cap - held

    def _timed(self, send):
        """``send`` that raises _Stalled when one write waits longer than the send timeout."""
        timeout = self.settings.send_timeout

        async def send_or_stall(message) -> None:
            try:
                async with asyncio.timeout(timeout):
                    await send(message)
            except TimeoutError:
                raise _Stalled from None

        return send_or_stall

    async def _encode(self, encoder: StreamEncoder, chunk: torch.Tensor | None) -> bytes:
        """The bytes ``chunk`` adds (the end of the file when it is None); compressed formats off the loop."""
        if chunk is None:
            return await asyncio.to_thread(encoder.finish)
        if self.fmt in ("pcm", "wav"):
            return encoder.encode(chunk)
        return await asyncio.to_thread(encoder.encode, chunk)

    async def _stream(self, send, encoder: StreamEncoder, head: bytes) -> None:
        """Headers, then every chunk's bytes as they come (SSE: as base64 deltas), then the end."""
        sse = self.request.stream_format == "sse"
        headers = [
            ("content-type", "text/event-stream" if sse else MEDIA_TYPES[self.fmt]),
            ("x-seed", str(self.seed)),
            ("x-sample-rate", str(SAMPLE_RATE)),
            ("cache-control", "no-store"),
            ("x-accel-buffering", "no"),
        ]
        raw = [(k.encode(), v.encode()) for k, v in headers]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        data = head
        timed = sse and self.request.timestamps
        while True:
            if timed and (words := self.job.new_words()):  # before the audio that ends them
                event = _sse({"type": "speech.audio.timestamps", "words": words})
                await send({"type": "http.response.body", "body": event, "more_body": True})
            if data:
                body = _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}) if sse else data
                await send({"type": "http.response.body", "body": body, "more_body": True})
            if encoder.closed:
                break
            data = await self._encode(encoder, await self.job.next_chunk())
        await send({"type": "http.response.body", "body": _sse(self._done_event()) if sse else b"", "more_body": False})

    def _done_event(self) -> dict[str, Any]:
        """SSE's last event: token usage (input text, output frames) and timings."""
        tokens = len(self.app_state.service.model.tokenizer.encode(self.request.input, add_special_tokens=False))
        result = getattr(self.job.stream, "result", None)
        frames = getattr(result, "time_before", None)
        out = int(frames.shape[-1]) if isinstance(frames, torch.Tensor) else self.job.chunks
        return {
            "type": "speech.audio.done",
            "usage": {"input_tokens": tokens, "output_tokens": out, "total_tokens": tokens + out},
            "timings": self.job.timings(),
        }


def _sse(event: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``event`` as JSON."""
    return f"data: {json.dumps(event)}\n\n".encode()


class CaptionedSpeechResponse(SpeechResponse):
    """``POST /v1/audio/speech/with-timestamps``: the whole file (base64) and every word's and
    character's time in one JSON object, as captioned-speech APIs answer. Same checks, limits and
    disconnect handling as the streamed response; nothing is sent until the audio is complete,
    so the file is complete too (WAV and FLAC headers give its length)."""

    whole_file = True

    async def _stream(self, send, encoder: StreamEncoder, head: bytes) -> None:
        parts = [head]
        while not encoder.closed:
            parts.append(await self._encode(encoder, await self.job.next_chunk()))
        result = self.job.stream.result
        words = [w.to_dict() for w in self.job.stream.words]
        characters = [c.to_dict() for c in (result.characters[0] if result and result.characters else [])]
        body = {
            "audio": base64.b64encode(b"".join(parts)).decode(),
            "response_format": self.fmt,
            "sample_rate": SAMPLE_RATE,
            "words": words,
            "characters": characters,
            "timings": self.job.timings(),
        }
        payload = json.dumps(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-seed", str(self.seed).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})
