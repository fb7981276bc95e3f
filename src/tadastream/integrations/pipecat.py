"""Pipecat TTS service that speaks through a running ``tadastream serve``, streaming text in and audio out.

:class:`TadaTTSService` is a :class:`~pipecat.services.tts_service.WebsocketTTSService` on the
server's ``/v1/audio/stream`` WebSocket. The server speaks one utterance per connection, so each
Pipecat turn context (one LLM reply, or one ``TTSSpeakFrame``) gets a connection of its own: it is
opened when the reply starts (so the handshake overlaps the LLM's first token), fed the LLM's
tokens as they arrive (the server holds a word back only until the whitespace after it), ended
with ``end`` when the reply ends, and closed by the server once the audio is out. Word times from
the server go to Pipecat's word-timestamp machinery, so the conversation context receives only the
words that were played; an interruption sends ``cancel``, which stops generation on the server.

A word is handed to Pipecat only with the audio chunk that completes it. So when a reply fails
(a refused key or voice, an unreachable server, an error or a lost connection part-way), the
context receives the words whose audio arrived before the failure and nothing of the rest, instead
of Pipecat's usual end-of-reply fill-in of every untimed word.

Usage::

    tts = TadaTTSService(base_url="http://127.0.0.1:8000", voice="alice", seed=1234)
    pipeline = Pipeline([transport.input(), stt, user_agg, llm, tts, transport.output(), assistant_agg])
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..scripts import spaceless

try:
    from loguru import logger
    from pipecat.audio.utils import create_stream_resampler
    from pipecat.frames.frames import (
        AggregatedTextProgressFrame,
        EndFrame,
        ErrorFrame,
        Frame,
        InterruptionFrame,
        TTSAudioRawFrame,
        TTSStoppedFrame,
        TTSTextFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection
    from pipecat.services.settings import TTSSettings
    from pipecat.services.tts_service import TextAggregationMode, WebsocketTTSService
    from pipecat.utils.errors import ErrorCategory
    from pipecat.utils.types import NOT_GIVEN, NotGiven
    from websockets.asyncio.client import ClientConnection
    from websockets.exceptions import ConnectionClosed, WebSocketException
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('tadastream.integrations.pipecat needs Pipecat: pip install "tadastream[pipecat]"') from exc

__all__ = ["TadaTTSService", "TadaTTSSettings", "stream_url"]

SERVER_SAMPLE_RATE = 24000
# Slack when matching a word's end (seconds, rounded by the server) against the audio received.
_WORD_END_SLACK = 0.005

# Refusals caused by the service's settings: they recur on every utterance until the settings change.
_SETTINGS_CODES = {
    "invalid_voice_name",
    "voice_not_found",
    "voice_mismatch",
    "invalid_seed",
    "invalid_speed",
    "invalid_option",
    "invalid_first_chunk",
    "unsupported_format",
}


def stream_url(base_url: str) -> str:
    """The ``/v1/audio/stream`` WebSocket URL for a server's base URL (http(s) or ws(s), with or without ``/v1``)."""
    parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"base_url must be an http(s):// or ws(s):// URL of a tadastream server, got {base_url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1/audio/stream"):
        path = (path if path.endswith("/v1") else f"{path}/v1") + "/audio/stream"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _category(error: dict[str, Any]) -> ErrorCategory:
    """Pipecat's category for a server refusal; permanent ones (key, settings) stop the service being used."""
    kind, code = error.get("type"), error.get("code")
    if kind == "authentication_error" or code == "invalid_api_key":
        return ErrorCategory.AUTHENTICATION
    if kind == "permission_error":
        return ErrorCategory.AUTHORIZATION
    if kind in ("rate_limit_error", "server_overloaded"):
        return ErrorCategory.RATE_LIMIT
    if code in _SETTINGS_CODES:
        return ErrorCategory.INVALID_REQUEST
    if kind in ("invalid_request_error", "not_found_error"):
        return ErrorCategory.APPLICATION  # this reply's text was refused (too long, empty); the next may pass
    if kind == "timeout_error":
        return ErrorCategory.UNKNOWN  # a stalled or over-long session: nothing wrong with the service
    return ErrorCategory.SERVER


@dataclass
class TadaTTSSettings(TTSSettings):
    """Runtime-updatable settings (``TTSUpdateSettingsFrame``); a change applies from the next connection.

    Parameters:
        voice: A voice name the server knows (``GET /v1/voices``), or None for its default voice.
        seed: Sampling seed: the same seed and text give the same audio. None: the server picks one.
        speed: Speaking rate, 0.25-4 (1 = natural). Other than 1 it delays the first audio.
        options: Server ``InferenceOptions`` fields, e.g. ``{"num_flow_matching_steps": 8}``.
        min_first_chunk_ms: Audio the first chunk holds: None (the server's adaptive default: it
            lasts until the next chunk comes, so playback and the word clock do not run ahead of
            the audio), 0 for the first samples at once, or milliseconds.
    """

    seed: int | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    speed: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    options: dict[str, Any] | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    min_first_chunk_ms: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


@dataclass(frozen=True)
class _TimedWord:
    """A word from a ``timestamps`` message, held until the audio that completes it has arrived."""

    text: str  # with its leading space when ``spaced``
    start: float  # seconds from the utterance's first sample
    end: float
    spaced: bool  # the text carries its own spacing (Pipecat must not add a space before it)


@dataclass(eq=False)
class _Utterance:
    """One connection: the audio context it feeds and where it stands."""

    context_id: str
    ws: ClientConnection | None = None
    reader: asyncio.Task | None = None
    in_rate: int = SERVER_SAMPLE_RATE
    resampler: Any = None
    flushed: bool = False  # `end` sent: the reply's text is all there
    closed: bool = False  # the connection is over: done, refused or lost
    cancelled: bool = False  # interrupted or discarded: whatever still arrives is dropped
    give_up_at: float = 0.0  # loop time at which a cancelled connection is closed if the server has not
    finished: bool = False  # the audio context was ended (or dropped) and the utterance forgotten
    words_end: int | None = None  # char_end of the last word timed: a word starting there follows it unspaced
    received: int = 0  # samples of audio received from the server (at ``in_rate``)
    unheard: list[_TimedWord] = field(default_factory=list)  # words timed whose audio has not all come yet


class TadaTTSService(WebsocketTTSService):
    """TADA speech from a ``tadastream serve`` server, with word timestamps and true text streaming.

    Text is streamed token by token by default (``TextAggregationMode.TOKEN``): the server holds a
    word only until the whitespace after it, so sentence buffering would add latency for nothing,
    and the audio equals that of the whole reply sent at once with the same seed. Audio comes as
    ``TTSAudioRawFrame`` at the pipeline's output rate (resampled from 24 kHz when it differs).

    Event handlers (besides those of ``TTSService``): ``on_connection_error`` when the server
    cannot be reached.
    """

    Settings = TadaTTSSettings
    _settings: TadaTTSSettings

    def __init__(
        self,
        *,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        voice: str | None = None,
        seed: int | None = None,
        speed: float | None = None,
        options: dict[str, Any] | None = None,
        min_first_chunk_ms: float | None = None,
        settings: TadaTTSSettings | None = None,
        sample_rate: int | None = None,
        text_aggregation_mode: TextAggregationMode = TextAggregationMode.TOKEN,
        open_timeout: float = 10.0,
        cancel_timeout: float = 2.0,
        **kwargs: Any,
    ) -> None:
        """Create the service.

        Args:
            base_url: The server, e.g. ``http://127.0.0.1:8000`` (``ws://``, ``https://``, a ``/v1`` suffix work too).
            api_key: The server's ``--api-key``, sent as a bearer token; None when it has none.
            voice: Voice name on the server (any name it serves, not only OpenAI's); None for its default.
            seed: Sampling seed for reproducible audio; None lets the server pick one per utterance.
            speed: Speaking rate, 0.25-4; None leaves it natural.
            options: Extra server ``InferenceOptions``; None for the server's defaults.
            min_first_chunk_ms: Audio the first chunk holds; None: adaptive (see the settings).
            settings: Settings that override the arguments above (Pipecat's usual way to pass them).
            sample_rate: Output rate; None follows the pipeline's ``audio_out_sample_rate``.
            text_aggregation_mode: ``TOKEN`` (default) streams LLM tokens as they come; ``SENTENCE``
                sends whole sentences, which only adds latency with this server.
            open_timeout: Seconds to connect and get the server's ``ready``.
            cancel_timeout: Seconds to wait for the server to wind down after ``cancel`` before closing.
            **kwargs: Passed to ``WebsocketTTSService`` (e.g. ``text_transforms``, ``skip_text_types``).
        """
        store = self.Settings(
            model=None,
            voice=voice,
            language=None,
            seed=seed,
            speed=speed,
            options=options,
            min_first_chunk_ms=min_first_chunk_ms,
        )
        if settings is not None:
            store.apply_update(settings)
        kwargs.setdefault("reconnect_on_error", False)  # the server closes after every utterance by design
        # SENTENCE mode: a trailing space settles a sentence's last word at once (the server holds a
        # word until the whitespace after it); TOKEN mode keeps the LLM's own spacing.
        kwargs.setdefault("append_trailing_space", True)
        super().__init__(
            text_aggregation_mode=text_aggregation_mode,
            push_text_frames=False,  # TTSTextFrames come from the server's word times, as the words play
            push_start_frame=True,
            push_stop_frames=False,  # pushed when the server closes the utterance's connection
            pause_frame_processing=False,  # every audio frame carries its context
            sample_rate=sample_rate,
            settings=store,
            **kwargs,
        )
        self._url = stream_url(base_url)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._open_timeout = open_timeout
        self._cancel_timeout = cancel_timeout
        self._utterances: dict[str, _Utterance] = {}
        self._word_times = True  # asked of the server until it says its model cannot time words
        # Contexts whose reply failed: the text not timed by then was never spoken (see _apply_force_complete).
        self._failed: set[str] = set()

    def can_generate_metrics(self) -> bool:
        """TTFB and usage metrics are meaningful: audio arrives per context."""
        return True

    # -- connections ---------------------------------------------------------------------------
    async def _connect_websocket(self) -> None:
        """Open a new connection (the server speaks one utterance per connection) as ``self._websocket``."""
        self._websocket = await self._websocket_connect(
            self._url, additional_headers=self._headers, open_timeout=self._open_timeout
        )

    async def _disconnect_websocket(self) -> None:
        """Close every utterance's connection: the pipeline is ending or being cancelled."""
        for utterance in list(self._utterances.values()):
            utterance.cancelled = True
            await self._close(utterance)  # its reader sees the close and ends
            if utterance.reader is not None and not utterance.reader.done():
                await self.cancel_task(utterance.reader)
            self._forget(utterance)
        self._websocket = None

    async def _disconnect(self) -> None:
        await super()._disconnect()
        await self._disconnect_websocket()

    async def _receive_messages(self) -> None:
        """Read the newest connection to its end; each connection normally has a reader task of its own."""
        for utterance in list(self._utterances.values()):
            if utterance.ws is self._websocket and utterance.reader is None:
                await self._read(utterance)

    def _config(self) -> dict[str, Any]:
        s = self._settings
        return {
            "voice": s.voice,
            "seed": s.seed,
            "speed": s.speed,
            "options": s.options,
            "timestamps": self._word_times,
            "min_first_chunk_ms": s.min_first_chunk_ms,
        }

    async def _open(self, context_id: str) -> _Utterance:
        """Connect, send the config and wait for ``ready``; a failure is reported and leaves a closed utterance."""
        utterance = _Utterance(context_id)
        self._utterances[context_id] = utterance
        self._forget_failures()
        try:
            await self._connect_websocket()
            utterance.ws = self._websocket
            async with asyncio.timeout(self._open_timeout):
                with contextlib.suppress(ConnectionClosed):  # a refusal (wrong key) may close before we send
                    await utterance.ws.send(json.dumps(self._config()))
                reply = json.loads(await utterance.ws.recv())
            if not isinstance(reply, dict):
                raise ValueError(f"unexpected reply {reply!r}")
            if reply.get("type") == "error":
                error = reply.get("error") or {}
                if self._word_times and error.get("param") == "timestamps":
                    # A model without character offsets: speak anyway; the context then gets each
                    # reply's text when its audio ends (and none of it if interrupted).
                    logger.warning(f"{self}: the server cannot time words ({error.get('message')}); going on without")
                    self._word_times = False
                    await self._close(utterance)
                    return await self._open(context_id)
                await self._refused(error)
                utterance.closed = True
            elif reply.get("type") != "ready" or reply.get("encoding", "pcm_s16le") != "pcm_s16le":
                await self.push_error(f"{self}: unexpected reply from the tadastream server: {reply}")
                utterance.closed = True
            else:
                utterance.in_rate = int(reply.get("sample_rate") or SERVER_SAMPLE_RATE)
                if utterance.in_rate != self.sample_rate:  # chunks come in bursts: keep the filter state between them
                    utterance.resampler = create_stream_resampler(clear_after_secs=None)
        except asyncio.CancelledError:  # interrupted while connecting
            utterance.closed = utterance.cancelled = True
            await self._close(utterance)
            self._forget(utterance)
            raise
        except (OSError, TimeoutError, WebSocketException, ValueError) as exc:  # ValueError: not a JSON object
            await self._report_error(
                ErrorFrame(f"{self}: cannot speak through {self._url}: {exc or type(exc).__name__}", exception=exc)
            )
            utterance.closed = True
        if utterance.closed or utterance.cancelled:  # refused, failed, or interrupted while connecting
            if not utterance.cancelled:
                self._fail(utterance)
            utterance.closed = True
            await self._close(utterance)
        else:
            utterance.reader = self.create_task(self._read(utterance), name=f"{self}::read")
        return utterance

    async def _close(self, utterance: _Utterance) -> None:
        if utterance.ws is not None:
            with contextlib.suppress(Exception):
                await utterance.ws.close()

    async def _refused(self, error: dict[str, Any]) -> None:
        message = error.get("message") or "the server refused the request"
        code = error.get("code")
        await self.push_error(
            f"{self}: tadastream server refused: {message}" + (f" ({code})" if code else ""),
            category=_category(error),
        )

    # -- receiving ----------------------------------------------------------------------------
    def _live(self, utterance: _Utterance) -> bool:
        """Whether what arrives on this connection still belongs to a context that will play."""
        return not utterance.cancelled and self.audio_context_available(utterance.context_id)

    async def _read(self, utterance: _Utterance) -> None:
        """Audio and word times into the utterance's audio context until the server closes the connection."""
        ws, context_id = utterance.ws, utterance.context_id
        loop = asyncio.get_running_loop()
        done = False
        try:
            while True:
                try:
                    async with asyncio.timeout(1.0):
                        message = await ws.recv()  # cancelling recv loses nothing
                except TimeoutError:
                    if utterance.cancelled and loop.time() >= utterance.give_up_at:
                        break
                    if self._live(utterance):  # the server may be queueing or slow: the context is not over
                        self._refresh_audio_context(context_id)
                    continue
                if isinstance(message, bytes):
                    await self._audio(utterance, message)
                    continue
                try:
                    data = json.loads(message)
                except ValueError:
                    logger.warning(f"{self}: ignoring a message that is not JSON: {message[:200]!r}")
                    continue
                kind = data.get("type") if isinstance(data, dict) else None
                if kind == "timestamps":
                    if self._live(utterance):
                        utterance.unheard += self._timed_words(data, utterance)
                elif kind == "result":
                    done = True
                    logger.debug(f"{self}: utterance {context_id} done: {data}")
                    if self._live(utterance):  # the audio is all out: every word timed was spoken
                        await self._release_words(utterance, None)
                elif kind == "error":
                    done = True
                    if not utterance.cancelled:
                        self._fail(utterance)
                        await self._refused(data.get("error") or {})
        except ConnectionClosed as exc:
            if not done and not utterance.cancelled:  # closed (even cleanly) before its result: a failure
                self._fail(utterance)
                await self._report_error(
                    ErrorFrame(f"{self}: lost the tadastream server mid-utterance: {exc}", exception=exc)
                )
        finally:
            utterance.closed = True
            await self._close(utterance)
            await self._finish(utterance)

    def _timed_words(self, message: dict[str, Any], utterance: _Utterance) -> list[_TimedWord]:
        """The words of a timestamps message, each with its start and end (seconds from the utterance's
        first sample) and whether it carries its own spacing.

        Pipecat puts a space between words; for Chinese or Japanese words, or where the text had no
        space between two words, the message's words come with the spacing written before each instead,
        so Pipecat's context holds the text as written.
        """
        words: list[tuple[str, float, float, bool]] = []  # (word, start, end, follows the previous one unspaced)
        for word in message.get("words") or ():
            try:
                text, start = " ".join(str(word["word"]).split()), float(word["start"])
                end = float(word.get("end", start))
            except (KeyError, TypeError, ValueError, AttributeError):
                logger.warning(f"{self}: ignoring a malformed word time: {word!r}")
                continue
            glued = utterance.words_end is not None and word.get("char_start") == utterance.words_end
            char_end = word.get("char_end")
            utterance.words_end = char_end if isinstance(char_end, int) else None
            words.append((text, start, max(start, end), glued))
        if not any(glued or spaceless(text) for text, _, _, glued in words):
            return [_TimedWord(text, start, end, False) for text, start, end, _ in words]
        return [
            _TimedWord(("" if glued or k == 0 else " ") + text, start, end, True)
            for k, (text, start, end, glued) in enumerate(words)
        ]

    async def _release_words(self, utterance: _Utterance, heard_until: float | None) -> None:
        """Hand Pipecat the held words whose audio ends by ``heard_until`` seconds (None: all of them)."""
        ready = 0
        for word in utterance.unheard:
            if heard_until is not None and word.end > heard_until + _WORD_END_SLACK:
                break
            ready += 1
        released, utterance.unheard = utterance.unheard[:ready], utterance.unheard[ready:]
        for spaced, run in itertools.groupby(released, key=lambda w: w.spaced):  # one call per spacing
            await self.add_word_timestamps(
                [(w.text, w.start) for w in run], utterance.context_id, includes_inter_frame_spaces=spaced
            )

    async def _audio(self, utterance: _Utterance, pcm: bytes) -> None:
        if not self._live(utterance):
            return
        # The words this chunk completes go first, as the server sent them: ahead of their sound.
        utterance.received += len(pcm) // 2
        await self._release_words(utterance, utterance.received / utterance.in_rate)
        if utterance.resampler is not None:
            pcm = await utterance.resampler.resample(pcm, utterance.in_rate, self.sample_rate)
        if pcm:
            frame = TTSAudioRawFrame(pcm, self.sample_rate, 1, context_id=utterance.context_id)
            await self.append_to_audio_context(utterance.context_id, frame)

    async def _finish(self, utterance: _Utterance) -> None:
        """End the audio context once the connection is over and the reply has ended (or was cancelled)."""
        if utterance.finished or not utterance.closed or not (utterance.flushed or utterance.cancelled):
            return
        self._forget(utterance)
        context_id = utterance.context_id
        if self._live(utterance):
            if utterance.resampler is not None and (tail := await utterance.resampler.flush()):
                await self.append_to_audio_context(context_id, TTSAudioRawFrame(tail, self.sample_rate, 1, context_id))
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)

    def _fail(self, utterance: _Utterance) -> None:
        """The reply failed: words whose audio never came are dropped, and the context keeps what was heard."""
        if utterance.unheard:
            logger.debug(f"{self}: {len(utterance.unheard)} word(s) timed but never heard in {utterance.context_id}")
        utterance.unheard.clear()
        self._failed.add(utterance.context_id)

    def _forget_failures(self) -> None:
        """Forget failed contexts that are over: no connection, no audio context, not the current turn."""
        self._failed = {
            c
            for c in self._failed
            if c in self._utterances or c == self._turn_context_id or self.audio_context_available(c)
        }

    def _forget(self, utterance: _Utterance) -> None:
        utterance.finished = True
        if self._utterances.get(utterance.context_id) is utterance:
            del self._utterances[utterance.context_id]

    # -- sending ------------------------------------------------------------------------------
    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Send a piece of the reply; its audio and word times arrive on the connection's reader task.

        Args:
            text: The next piece (an LLM token, or a sentence in ``SENTENCE`` mode).
            context_id: The turn's context: one connection per context.

        Yields:
            None: the audio is delivered out of band.
        """
        utterance = self._utterances.get(context_id) or await self._open(context_id)
        if utterance.ws is not None and not (utterance.closed or utterance.flushed or utterance.cancelled):
            try:
                await utterance.ws.send(json.dumps({"type": "text", "text": text}))
                await self.start_tts_usage_metrics(text)
            except ConnectionClosed:
                pass  # the reader reports why the connection ended
        yield None

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The reply is complete: send ``end`` so the server speaks its last word and closes.

        Args:
            context_id: The context whose text is complete; None for the active one.
        """
        context_id = context_id or self.get_active_audio_context_id()
        utterance = self._utterances.get(context_id) if context_id else None
        if utterance is None or utterance.flushed:
            return
        utterance.flushed = True
        if utterance.ws is not None and not utterance.closed:
            with contextlib.suppress(ConnectionClosed):
                await utterance.ws.send(json.dumps({"type": "end"}))
        await self._finish(utterance)

    async def _cancel(self, utterance: _Utterance) -> None:
        """Stop generation on the server; the reader drains and closes (within ``cancel_timeout``)."""
        if not utterance.cancelled:
            utterance.cancelled = True
            utterance.give_up_at = asyncio.get_running_loop().time() + self._cancel_timeout
            if utterance.ws is not None and not utterance.closed:
                with contextlib.suppress(ConnectionClosed):
                    await utterance.ws.send(json.dumps({"type": "cancel"}))
        if utterance.reader is None:  # refused or failed: nothing is reading this connection
            utterance.closed = True
            await self._close(utterance)
        await self._finish(utterance)

    # -- Pipecat hooks ------------------------------------------------------------------------
    async def stop(self, frame: EndFrame) -> None:
        """End the pipeline after the audio: a reply still being written is ended first, so it can finish.

        The base class waits for every audio context to play out before it flushes the open turn,
        and the connection keeps its context alive while the server waits for more text.
        """
        turn = self._turn_context_id
        if turn is not None and turn in self._utterances:
            await self._push_sequencer_frames(await self._aggregated_frame_sequencer.finalize(turn), turn)
        for utterance in list(self._utterances.values()):
            if self.audio_context_available(utterance.context_id):
                await self.flush_audio(utterance.context_id)
            else:
                await self._cancel(utterance)
        await super().stop(frame)

    async def _apply_force_complete(self, context_id: str) -> None:
        """At a context's end Pipecat sends every word not yet timed into the context, for services that
        drop word times. Here every word is timed once its audio arrives, so after a failure those words
        were never spoken: they are left out, and only what follows them (skipped text) goes on."""
        if context_id not in self._failed:
            await super()._apply_force_complete(context_id)
            return
        frames = self._aggregated_frame_sequencer.force_complete(context_id, self._word_timestamp_tracker.last_pts)
        unspoken = (TTSTextFrame, AggregatedTextProgressFrame)
        kept = [f for f in frames if not (isinstance(f, unspoken) and f.context_id == context_id)]
        if len(kept) < len(frames):
            logger.debug(f"{self}: the failed reply {context_id} left its unspoken words out of the context")
        await self._push_word_frames(kept)

    async def on_turn_context_created(self, context_id: str) -> None:
        """Open the turn's connection now, so the handshake overlaps the LLM's time to first token."""
        await super().on_turn_context_created(context_id)
        if context_id not in self._utterances:
            await self._open(context_id)

    async def on_turn_context_completed(self) -> None:
        """Flush the turn (base class); a turn that spoke nothing (only tool calls) just drops its connection."""
        context_id = self._turn_context_id
        spoke = context_id is not None and self.audio_context_available(context_id)
        await super().on_turn_context_completed()
        if context_id is not None and not spoke and context_id in self._utterances:
            await self._cancel(self._utterances[context_id])

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """Barge-in: stop generating the interrupted reply on the server."""
        await self.stop_all_metrics()
        utterance = self._utterances.get(context_id)
        if utterance is not None:
            await self._cancel(utterance)
        await super().on_audio_context_interrupted(context_id)

    async def _handle_interruption(self, frame: InterruptionFrame, direction: FrameDirection) -> None:
        await super()._handle_interruption(frame, direction)
        # Connections opened for a reply that had not spoken yet have no audio context to interrupt.
        for utterance in list(self._utterances.values()):
            context = self._tts_contexts.get(utterance.context_id)
            if self.audio_context_available(utterance.context_id) or (context and not context.interruptible):
                continue
            await self._cancel(utterance)

    async def _update_settings(self, delta: TadaTTSSettings) -> dict[str, Any]:
        """Apply a settings delta; mid-reply, the rest of the reply moves to a new connection that uses it."""
        changed = await super()._update_settings(delta)
        old = self._turn_context_id
        if changed and old is not None and old in self._utterances:
            await self._push_sequencer_frames(await self._aggregated_frame_sequencer.finalize(old), old)
            if self.audio_context_available(old):
                await self.flush_audio(old)
            else:
                await self._cancel(self._utterances[old])
            self._turn_context_id = None
            self._turn_context_id = self.create_context_id()
        return changed
