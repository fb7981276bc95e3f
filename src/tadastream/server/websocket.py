"""``WS /v1/audio/stream``: one utterance per connection; the package docstring gives the protocol.

Generation starts on the first text message: each message becomes a piece of a
:class:`~tadastream.generation.TextInput` that the stream takes as it needs, so audio starts
before ``end`` (and equals the audio of the whole text). One task reads the client's messages
(pieces, then ``cancel`` or a disconnect), another generates and sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect

from ..audio import float_to_pcm16
from ..config import SAMPLE_RATE
from ..generation import InferenceOptions, TextInput
from ..service import (
    RequestRefused,
    SpeechJob,
    SpeechService,
    check_first_chunk,
    check_input_length,
    check_piece,
    check_seed,
    check_timestamps,
    check_voice_name,
    inference_options,
    new_seed,
    speech_request,
)
from .errors import error_body
from .middleware import authorized
from .settings import ServerSettings

logger = logging.getLogger("tadastream.server")

_UNEXPECTED = "expected {'type': 'text' | 'end' | 'cancel'}"


class _ClientGone(Exception):
    """The client disconnected."""


def _stalled(settings: ServerSettings) -> RequestRefused:
    return RequestRefused(
        408, f"the client read nothing for {settings.send_timeout:g} s; the stream was stopped", "stalled"
    )


def close_code(exc: RequestRefused) -> int:
    """The close code for a refusal: 1013 when busy (try again later), 1003 for a malformed message, else 1008."""
    if exc.status in (429, 503):
        return 1013
    return 1003 if exc.code == "invalid_message" else 1008


async def websocket_session(app: FastAPI, ws: WebSocket) -> None:
    """Serve one WebSocket connection from accept to close."""
    await _Session(app, ws).run()


class _Session:
    """One connection: handshake, the first text, then a reader and a generator task side by side."""

    def __init__(self, app: FastAPI, ws: WebSocket):
        self.ws = ws
        self.settings: ServerSettings = app.state.settings
        self.service: SpeechService = app.state.service
        self.voices = app.state.voices
        self.log: dict[str, Any] = ws.scope.get("tadastream.log", {})
        self.started: float = ws.scope.get("tadastream.start", time.perf_counter())
        self.job: SpeechJob | None = None
        self.text: TextInput | None = None
        self.cancelled = False
        self.timestamps = False
        self.first_chunk_ms: float | None = None
        self._idle_deadline: float | None = 0.0  # event-loop time, set at accept; whitespace-only pieces do not move it
        self._idle_timer: asyncio.Timeout | None = None  # the pending receive's, so the deadline can move under it
        self._queued = False  # waiting for a stream slot: the idle clock stands still

    async def run(self) -> None:
        await self.ws.accept()
        self._active()
        try:
            header = self.ws.headers.get("authorization")
            if not authorized(self.settings.api_key, header, self.ws.query_params.get("api_key")):
                await self._fail(401, "missing or wrong API key (Authorization header or ?api_key=)", "invalid_api_key")
                return
            try:
                prompt, seed, options = await self._configure()
                self.text = await self._first_text()
            except RequestRefused as exc:
                await self._refuse(exc)
                return
            if self.text is not None:
                await self._speak(prompt, seed, options)
        except (_ClientGone, WebSocketDisconnect, OSError):
            self.log.setdefault("outcome", "disconnected")
        except Exception:
            logger.exception("WebSocket session failed (request %s)", self.log.get("request_id"))
            await self._fail(500, "internal error while generating audio", "internal_error", 1011)
        finally:
            if self.job is not None:
                self.job.finish()

    # -- before generation: no stream slot is held yet ----------------------------------------
    async def _configure(self) -> tuple[Any, int, InferenceOptions]:
        """Read and check the config message, resolve the voice, send ``ready``: (prompt, seed, options)."""
        config = await self._receive()
        voice = config.get("voice")
        if voice:
            check_voice_name(voice)
        seed = check_seed(config["seed"]) if config.get("seed") is not None else new_seed()
        options = inference_options(config.get("options"), config.get("speed"), self.service.model)
        self.timestamps = check_timestamps(self.service.model, config.get("timestamps", False))
        self.first_chunk_ms = check_first_chunk(config.get("min_first_chunk_ms"))
        if config.get("format", "pcm") != "pcm":
            raise RequestRefused(400, "the WebSocket streams raw PCM16: use format 'pcm'", "unsupported_format")
        prompt = await asyncio.to_thread(self.voices.resolve, voice)
        self.log.update(voice=voice or "default", seed=seed, format="pcm")
        await self.ws.send_json(
            {"type": "ready", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le", "channels": 1, "seed": seed}
        )
        return prompt, seed, options

    async def _first_text(self) -> TextInput | None:
        """The text, opened with its first piece; None (connection closed) when the client cancels first."""
        while True:
            message = await self._receive()
            kind = message.get("type")
            if kind == "text":
                return TextInput([self._text_piece(message, 0)])
            if kind == "end":
                raise RequestRefused(400, "no text was sent before 'end'", "empty_input")
            if kind == "cancel":
                self.log["outcome"] = "cancelled"
                await self.ws.close(1000)
                return None
            raise RequestRefused(400, _UNEXPECTED, "invalid_message")

    # -- generation: two tasks ----------------------------------------------------------------
    async def _speak(self, prompt, seed: int, options: InferenceOptions) -> None:
        """Generate and send while reading the client's messages; then the final messages, or the error."""
        work = asyncio.create_task(self._generate_and_send(prompt, seed, options))
        reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait({work, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():  # the reader failed (bad message, timeout, disconnect), or we were cancelled
                self._cancel()
                work.cancel()
            reader.cancel()
            await asyncio.gather(work, reader, return_exceptions=True)
        if not work.cancelled():
            error = work.exception()  # busy, the text was empty or too long, a stalled client, the cap, or a failure
        elif reader.done() and not reader.cancelled():
            error = reader.exception()  # what stopped generation early
        else:
            error = None
        if isinstance(error, RequestRefused):
            await self._refuse(error)
        elif work.cancelled():
            self.log["outcome"] = "disconnected"
        elif error is not None:
            raise error
        else:
            await self._finish()

    async def _generate_and_send(self, prompt, seed: int, options: InferenceOptions) -> None:
        speech = speech_request(self.text, prompt, options, seed, self.first_chunk_ms, "text")
        # a wait in the queue is the server's, not the client's (which may pace its text by the
        # audio), and --queue-timeout bounds it: the idle clock stops, and starts afresh with the slot
        self._wait_for_slot(True)
        try:
            self.job = await self.service.start(speech, self.started)
        finally:
            self._wait_for_slot(False)
        if self.cancelled:
            self.job.cancel()
        # --max-session-seconds bounds how long the slot is held, so its clock starts only now
        cap = self.settings.session_cap
        try:
            async with asyncio.timeout(cap):
                await self._send_audio()
        except TimeoutError:
            raise RequestRefused(
                408, f"the session reached its {cap:g} s limit; open a new one", "session_limit"
            ) from None

    async def _send_audio(self) -> None:
        """Send the job's chunks (each with the words it ends) until its end; raises when the client stalls."""
        while True:
            chunk = await self.job.next_chunk()
            try:
                async with asyncio.timeout(self.settings.send_timeout):
                    if self.timestamps and (words := self.job.new_words()):  # before the audio that ends them
                        await self.ws.send_json({"type": "timestamps", "words": words})
                    if chunk is None:
                        return
                    await self.ws.send_bytes(float_to_pcm16(chunk))
            except TimeoutError:
                raise _stalled(self.settings) from None

    async def _read(self) -> None:
        """Pieces until 'end' (or 'cancel'), then watch for 'cancel'; ends only by raising."""
        text = self.text
        while not text.ended:
            message = await self._receive()
            kind = message.get("type")
            if kind == "text":
                text.put(self._text_piece(message, text.chars))
            elif kind == "end":
                text.end()
            elif kind == "cancel":
                self._cancel()
            else:
                raise RequestRefused(400, _UNEXPECTED, "invalid_message")
        self.log["input_chars"] = text.chars
        while True:  # from here on anything but "cancel" is ignored; a disconnect ends at once
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise _ClientGone
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                if json.loads(message.get("text") or "null").get("type") == "cancel":
                    self._cancel()

    def _cancel(self) -> None:
        """Stop generating after the current step; the final messages still go out."""
        self.cancelled = True
        self.text.close()
        if self.job is not None:
            self.job.cancel()

    async def _finish(self) -> None:
        """``audio.done`` and ``result``, then a normal close."""
        timings = {**self.job.timings(), "cancelled": self.cancelled}
        self.log.update(timings)
        if self.cancelled:
            self.log["outcome"] = "cancelled"
        await self.ws.send_json({"type": "audio.done", "samples": self.job.samples})
        await self.ws.send_json({"type": "result", **timings})
        self.log.setdefault("outcome", "ok")
        await self.ws.close(1000)

    # -- messages and errors ------------------------------------------------------------------
    def _active(self) -> None:
        """The client did something: the idle clock starts again (none runs while waiting for a slot)."""
        loop = asyncio.get_running_loop()
        self._idle_deadline = None if self._queued else loop.time() + self.settings.ws_idle_timeout
        if self._idle_timer is not None and not self._idle_timer.expired():
            self._idle_timer.reschedule(self._idle_deadline)  # the reader is waiting under the old deadline

    def _wait_for_slot(self, waiting: bool) -> None:
        """Stop the idle clock while the request waits for a slot; start it afresh once that wait ends."""
        self._queued = waiting
        self._active()

    async def _receive(self) -> dict[str, Any]:
        """The next JSON object; raises RequestRefused for a bad message or silence, _ClientGone when the client left.

        Silence is ``ws_idle_timeout`` seconds without a message that counts as activity: a text
        piece of only whitespace does not, so a client cannot hold its slot by sending spaces. A
        wait for a stream slot is not silence.
        """
        try:
            async with asyncio.timeout_at(self._idle_deadline) as self._idle_timer:
                message = await self.ws.receive()
        except TimeoutError:
            timeout = self.settings.ws_idle_timeout
            raise RequestRefused(408, f"no words for {timeout:g} s; send text, 'end' or 'cancel'", "timeout") from None
        finally:
            self._idle_timer = None
        if message["type"] == "websocket.disconnect":
            raise _ClientGone
        if message.get("text") is None:
            raise RequestRefused(400, "send JSON text messages, not binary", "invalid_message")
        try:
            data = json.loads(message["text"])
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise RequestRefused(400, "messages must be JSON objects", "invalid_message")
        piece = data.get("text")
        if data.get("type") != "text" or not isinstance(piece, str) or piece.strip():
            self._active()
        return data

    def _text_piece(self, message: dict[str, Any], length: int) -> str:
        """The message's text, checked to keep the whole text (``length`` so far) within the limit."""
        piece = message.get("text")
        if not isinstance(piece, str):
            raise RequestRefused(400, "a text message needs a string 'text'", "invalid_message")
        check_piece(piece, "text")
        check_input_length(length + len(piece), self.settings.max_input_chars, "text")
        return piece

    async def _fail(
        self,
        status: int,
        message: str,
        code: str,
        close: int = 1008,
        retry_after: float = 0,
        param: str | None = None,
    ) -> None:
        """Free the slot, then send an ``error`` message and close; the client may be gone or not reading.

        The message carries the HTTP ``status`` the same refusal gets over HTTP (and ``retry_after``
        seconds when busy), so clients apply one retry rule to both."""
        self.log["outcome"] = code
        if self.job is not None:
            self.job.finish()
        if code in ("stalled", "session_limit", "timeout"):
            freed = "; its slot is free again" if self.job is not None else ""
            logger.warning("WebSocket %s closed: %s%s", self.log.get("request_id"), message, freed)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.settings.send_timeout):
                extra = {"retry_after": int(retry_after)} if retry_after else {}
                await self.ws.send_json(
                    {"type": "error", "status": status, **extra, **error_body(status, message, code, param)}
                )
                await self.ws.close(close)

    async def _refuse(self, exc: RequestRefused) -> None:
        await self._fail(exc.status, exc.message, exc.code, close_code(exc), exc.retry_after, exc.param)
