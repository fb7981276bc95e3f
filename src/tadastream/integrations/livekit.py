"""A LiveKit Agents TTS plugin for a running ``tadastream serve``.

``stream()`` uses the server's WebSocket (``/v1/audio/stream``): each piece of text the LLM
produces is sent the moment it arrives, and the server starts speaking as soon as its words
settle, so the agent's first audio does not wait for the whole reply. Word timings come back
as LiveKit ``TimedString`` objects (``TTSCapabilities.aligned_transcript``), which LiveKit uses to
show the transcript in sync with playback. An interruption (the stream closed early) sends
``cancel`` and closes the socket, so the server stops generating within one step and frees its
slot. ``synthesize()`` is one ``POST /v1/audio/speech`` (see :class:`ChunkedStream`).

Usage::

    from livekit.agents import AgentSession
    from tadastream.integrations.livekit import TTS

    session = AgentSession(tts=TTS(base_url="http://127.0.0.1:8000", voice="narrator"), ...)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

try:
    import aiohttp
    from livekit.agents import (
        DEFAULT_API_CONNECT_OPTIONS,
        APIConnectionError,
        APIConnectOptions,
        APIError,
        APIStatusError,
        APITimeoutError,
        tts,
        utils,
    )
    from livekit.agents.types import TimedString
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError('the LiveKit plugin needs LiveKit Agents: pip install "tadastream[livekit]"') from exc

__all__ = ["TTS", "ChunkedStream", "SynthesizeStream"]

SAMPLE_RATE = 24000
NUM_CHANNELS = 1
DEFAULT_BASE_URL = "http://127.0.0.1:8000"

# WebSocket error messages carry the OpenAI error type, not the HTTP status: map it back so
# LiveKit's retry rules (4xx final, 408/429/5xx retried) apply as they do for HTTP.
_STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "timeout_error": 408,
    "rate_limit_error": 429,
    "server_error": 500,
    "server_overloaded": 503,
}


@dataclass
class _Options:
    base_url: str
    api_key: str | None
    voice: str | None
    seed: int | None
    speed: float | None
    options: dict[str, Any] | None = field(default=None)
    word_timestamps: bool = True
    min_first_chunk_ms: float | None = None

    def config(self) -> dict[str, Any]:
        """The WebSocket config message (also the shared part of the HTTP body)."""
        return {
            "voice": self.voice,
            "seed": self.seed,
            "speed": self.speed,
            "options": dict(self.options) if self.options else None,
            "timestamps": self.word_timestamps,
            "min_first_chunk_ms": self.min_first_chunk_ms,
        }

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


class TTS(tts.TTS):
    """TADA speech from a ``tadastream serve`` server: true text streaming, word-aligned transcripts."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        voice: str | None = None,
        seed: int | None = None,
        speed: float | None = None,
        options: dict[str, Any] | None = None,
        word_timestamps: bool = True,
        min_first_chunk_ms: float | None = None,
        http_session: aiohttp.ClientSession | None = None,
    ) -> None:
        """Create the plugin.

        Args:
            base_url: the server, e.g. ``http://127.0.0.1:8000`` (a trailing ``/v1`` is accepted);
                default ``$TADASTREAM_BASE_URL``, else ``http://127.0.0.1:8000``.
            api_key: the server's ``--api-key``; default ``$TADASTREAM_API_KEY`` (none: no key sent).
            voice: a voice name the server knows (``GET /v1/voices``); None for its default voice.
            seed: fixes the randomness, so the same text gives the same audio; None: a new seed each time.
            speed: 0.25-4 (1 = as the voice speaks); any other value costs a second LLM pass.
            options: extra ``InferenceOptions`` fields passed as is (e.g. ``{"num_flow_matching_steps": 8}``).
            word_timestamps: ask for word timings (an aligned transcript); turn off only for a server
                whose model cannot give them (a tokenizer without character offsets refuses them).
            min_first_chunk_ms: audio the first chunk holds: None (the server adapts it so that
                playback starting on it does not pause), 0 for the first samples at once, or milliseconds.
            http_session: an aiohttp session to use; default LiveKit's job session, or one of our own
                outside a job (closed by :meth:`aclose`).
        """
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=word_timestamps),
            sample_rate=SAMPLE_RATE,
            num_channels=NUM_CHANNELS,
        )
        url = (base_url or os.environ.get("TADASTREAM_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        url = url.removesuffix("/v1")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {url!r}")
        self._opts = _Options(
            base_url=url,
            api_key=api_key or os.environ.get("TADASTREAM_API_KEY") or None,
            voice=voice,
            seed=seed,
            speed=speed,
            options=dict(options) if options else None,
            word_timestamps=word_timestamps,
            min_first_chunk_ms=min_first_chunk_ms,
        )
        self._session = http_session
        self._owns_session = False
        self._streams: weakref.WeakSet[SynthesizeStream] = weakref.WeakSet()

    @property
    def model(self) -> str:
        return "tada"

    @property
    def provider(self) -> str:
        return "tadastream"

    def update_options(
        self,
        *,
        voice: str | None = None,
        seed: int | None = None,
        speed: float | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        """Change settings for utterances started from now on (None leaves a setting as it is)."""
        if voice is not None:
            self._opts.voice = voice
        if seed is not None:
            self._opts.seed = seed
        if speed is not None:
            self._opts.speed = speed
        if options is not None:
            self._opts.options = dict(options)

    def _ensure_session(self) -> aiohttp.ClientSession:
        """LiveKit's shared session inside a job; outside one (scripts, tests) a session of our own."""
        if self._session is None or self._session.closed:
            try:
                self._session = utils.http_context.http_session()
                self._owns_session = False
            except RuntimeError:
                self._session = aiohttp.ClientSession()
                self._owns_session = True
        return self._session

    def synthesize(self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> ChunkedStream:
        return ChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> SynthesizeStream:
        stream = SynthesizeStream(tts=self, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    async def aclose(self) -> None:
        """Close open streams (stopping their generation on the server) and our own session, if any."""
        for stream in list(self._streams):
            await stream.aclose()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None


class ChunkedStream(tts.ChunkedStream):
    """One-shot synthesis over HTTP.

    ``POST /v1/audio/speech`` with ``stream_format: "sse"`` rather than the WebSocket: the whole
    text is known, so one request does it (no handshake round trip, no second task to feed text),
    errors arrive as plain HTTP statuses before any audio (so LiveKit's retry rules apply), and the
    SSE events carry word timings alongside the pcm, as the WebSocket does.
    """

    def __init__(self, *, tts: TTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._tts: TTS = tts
        self._opts = replace(tts._opts)

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        body = {**self._opts.config(), "input": self.input_text, "response_format": "pcm", "stream_format": "sse"}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._conn_options.timeout)
        try:
            async with self._tts._ensure_session().post(
                f"{self._opts.base_url}/v1/audio/speech", json=body, headers=self._opts.headers(), timeout=timeout
            ) as res:
                if res.status != 200:
                    raise _status_error(res.status, await res.text(), res.headers.get("x-request-id"))
                output_emitter.initialize(
                    request_id=res.headers.get("x-request-id") or utils.shortuuid(),
                    sample_rate=SAMPLE_RATE,
                    num_channels=NUM_CHANNELS,
                    mime_type="audio/pcm",
                )
                try:
                    await self._read_events(res, output_emitter)
                except BaseException:
                    res.close()  # not back to the pool: dropping the connection stops generation on the server
                    raise
            # no flush() here: the base class ends the segment, and a flush first would add a 10 ms silent frame
        except TimeoutError:
            raise APITimeoutError() from None
        except aiohttp.ClientError as exc:
            raise APIConnectionError(f"tadastream server unreachable at {self._opts.base_url}: {exc}") from exc

    async def _read_events(self, res: aiohttp.ClientResponse, output_emitter: tts.AudioEmitter) -> None:
        """Audio deltas and word timings until ``speech.audio.done``."""
        words = _WordAligner()
        words.add_text(self.input_text)
        async for event in _sse_events(res.content):
            kind = event.get("type")
            if kind == "speech.audio.timestamps":
                output_emitter.push_timed_transcript(words.timed(event.get("words", [])))
            elif kind == "speech.audio.delta":
                output_emitter.push(base64.b64decode(event.get("audio") or event.get("delta") or ""))
            elif kind == "speech.audio.done":
                usage = event.get("usage") or {}
                self._set_token_usage(
                    input_tokens=usage.get("input_tokens", 0), output_tokens=usage.get("output_tokens", 0)
                )
                if rest := words.rest():
                    output_emitter.push_timed_transcript(rest)
                return
            elif kind == "error":
                raise _message_error(event)
        raise APIConnectionError("the server ended the speech stream before speech.audio.done")


class SynthesizeStream(tts.SynthesizeStream):
    """One utterance over one WebSocket: text goes out piece by piece as LiveKit pushes it.

    ``flush()`` / ``end_input()`` send ``end``; closing the stream early sends ``cancel`` and
    closes the socket, which stops generation on the server.
    """

    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._tts: TTS = tts
        self._opts = replace(tts._opts)
        self.seed: int | None = None
        """The seed the server used (known once connected): reuse it to reproduce the audio."""

    async def aclose(self) -> None:
        await super().aclose()
        self._tts._streams.discard(self)

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        request_id = utils.shortuuid()
        output_emitter.initialize(
            request_id=request_id,
            sample_rate=SAMPLE_RATE,
            num_channels=NUM_CHANNELS,
            mime_type="audio/pcm",
            stream=True,
        )
        ws = await self._connect()
        state = _Utterance(request_id)
        try:
            await self._handshake(ws)
            sender = asyncio.create_task(self._send_text(ws, output_emitter, state), name="tadastream.send")
            receiver = asyncio.create_task(self._receive(ws, output_emitter, state), name="tadastream.recv")
            try:
                # the receiver ends the utterance; a sender failure (socket gone) must surface too
                done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()
                await receiver
            finally:
                await utils.aio.cancel_and_wait(sender, receiver)
        finally:
            await self._hang_up(ws, state)

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        url = self._opts.base_url.replace("http", "ws", 1) + "/v1/audio/stream"
        try:
            async with asyncio.timeout(self._conn_options.timeout):
                return await self._tts._ensure_session().ws_connect(url, headers=self._opts.headers())
        except aiohttp.WSServerHandshakeError as exc:
            raise _status_error(exc.status, exc.message, None) from exc
        except TimeoutError:
            raise APITimeoutError(f"no WebSocket to {url} within {self._conn_options.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise APIConnectionError(f"tadastream server unreachable at {url}: {exc}") from exc

    async def _handshake(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Send the config and wait for ``ready`` (the voice is resolved and the options checked by then)."""
        await ws.send_str(json.dumps(self._opts.config()))
        try:
            async with asyncio.timeout(self._conn_options.timeout):
                msg = await ws.receive()
        except TimeoutError:
            raise APITimeoutError("the server did not answer the config with 'ready'") from None
        message = _json(msg)
        if message.get("type") == "error":
            raise _message_error(message)
        if message.get("type") != "ready":
            raise APIConnectionError(f"expected 'ready' from the server, got {msg.type.name}: {msg.data!r:.200}")
        if message.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE or message.get("encoding") != "pcm_s16le":
            raise APIError(f"unexpected audio format from the server: {message}", retryable=False)
        self.seed = message.get("seed")

    async def _send_text(
        self, ws: aiohttp.ClientWebSocketResponse, emitter: tts.AudioEmitter, state: _Utterance
    ) -> None:
        """Forward pieces as they come; the first flush (or the end of input) sends ``end``.

        Leading whitespace-only pieces are held until a word comes, so an utterance that never gets
        one is cancelled rather than sent (the server refuses an empty text with an error).
        """
        held = ""
        async for data in self._input_ch:  # read at each attempt: a retry replays the input into a new channel
            if isinstance(data, self._FlushSentinel):
                break
            if not state.text and not data.strip():
                held += data
                continue
            if not state.text:
                emitter.start_segment(segment_id=state.segment_id)
                self._mark_started()
            piece, held = held + data, ""
            state.words.add_text(piece)
            state.text = True
            await ws.send_str(json.dumps({"type": "text", "text": piece}))
        state.ended = True
        await ws.send_str(json.dumps({"type": "end" if state.text else "cancel"}))

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse, emitter: tts.AudioEmitter, state: _Utterance) -> None:
        """Audio and word timings as they come, until ``result`` (or the server's close for no text)."""
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                emitter.push(msg.data)
                continue
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                if state.ended and not state.text:
                    return  # nothing was said: the server closed on our cancel
                raise APIConnectionError(f"the server closed the stream early (code {ws.close_code})")
            message = _json(msg)
            kind = message.get("type")
            if kind == "timestamps":
                emitter.push_timed_transcript(state.words.timed(message.get("words", [])))
            elif kind == "audio.done":
                if rest := state.words.rest():
                    emitter.push_timed_transcript(rest)
            elif kind == "result":
                state.finished = True
                if state.text:
                    emitter.end_segment()
                return
            elif kind == "error":
                raise _message_error(message)

    async def _hang_up(self, ws: aiohttp.ClientWebSocketResponse, state: _Utterance) -> None:
        """Close the socket; unfinished (an interruption or an error), ``cancel`` first so generation stops."""
        if not state.finished and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.send_str(json.dumps({"type": "cancel"}))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await ws.close()


class _WordAligner:
    """Turns the server's word timings into TimedStrings that add up to exactly the text sent.

    Each word's string runs from the end of the previous word to its own ``char_end`` (offsets
    into the concatenated pieces), so spaces and punctuation survive and LiveKit's transcript is
    the text as written.
    """

    def __init__(self) -> None:
        self._text = ""
        self._pos = 0

    def add_text(self, piece: str) -> None:
        self._text += piece

    def timed(self, words: list[dict[str, Any]]) -> list[TimedString]:
        out = []
        for word in words:
            start, end = float(word["start"]), float(word["end"])
            char_end = word.get("char_end")
            if isinstance(char_end, int) and self._pos < char_end <= len(self._text):
                text, self._pos = self._text[self._pos : char_end], char_end
            else:  # no (usable) offsets: the word itself, spaced
                text = (" " if out or self._pos else "") + str(word.get("word", ""))
            out.append(TimedString(text, start_time=start, end_time=end))
        return out

    def rest(self) -> TimedString | None:
        """Text after the last timed word, untimed, when it holds more than whitespace.

        None when no word was timed at all (a server without timestamps): LiveKit then falls back
        to the text it pushed, paced by its own estimate, which beats the whole text at the end.
        """
        if not self._pos:
            return None
        rest, self._pos = self._text[self._pos :], len(self._text)
        return TimedString(rest) if rest.strip() else None


@dataclass
class _Utterance:
    """What one WebSocket attempt has done so far."""

    segment_id: str
    words: _WordAligner = field(default_factory=_WordAligner)
    text: bool = False  # a piece with a word was sent
    ended: bool = False  # 'end' (or, with no text, 'cancel') was sent
    finished: bool = False  # the server's 'result' came


async def _sse_events(content: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The JSON payloads of server-sent events; split by hand, as an audio delta can outgrow aiohttp's line limit."""
    buffer = b""
    async for chunk in content.iter_any():
        buffer += chunk
        while (cut := buffer.find(b"\n\n")) >= 0:
            event, buffer = buffer[:cut], buffer[cut + 2 :]
            data = b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
            if data and data != b"[DONE]":
                yield json.loads(data)


def _json(msg: aiohttp.WSMessage) -> dict[str, Any]:
    if msg.type != aiohttp.WSMsgType.TEXT:
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            raise APIConnectionError(f"the server closed the stream (code {msg.data})")
        raise APIConnectionError(f"unexpected WebSocket message {msg.type.name}")
    try:
        message = json.loads(msg.data)
    except ValueError:
        raise APIConnectionError(f"the server sent something that is not JSON: {msg.data!r:.200}") from None
    return message if isinstance(message, dict) else {}


def _message_error(message: dict[str, Any]) -> APIStatusError:
    """An ``error`` message (WebSocket or SSE) as the APIStatusError LiveKit's retry logic expects."""
    error = message.get("error") or {}
    status = _STATUS_OF_TYPE.get(error.get("type"), 500)
    text = f"tadastream: {error.get('message', 'unknown error')} ({error.get('code')})"
    return APIStatusError(text, status_code=status, body=error)


def _status_error(status: int, body: str, request_id: str | None) -> APIStatusError:
    """An HTTP error response as an APIStatusError, with the server's message when it sent JSON."""
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        error = {"message": body[:200]}
    text = f"tadastream: {error.get('message', 'error')} ({error.get('code')})"
    return APIStatusError(text, status_code=status, request_id=request_id, body=error)
