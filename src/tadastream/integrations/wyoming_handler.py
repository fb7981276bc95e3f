"""One Wyoming connection: :class:`TadaEventHandler`, a ``wyoming`` AsyncEventHandler.

This module imports the ``wyoming`` package at its top, so :mod:`tadastream.integrations.wyoming`
imports it only when a server is built (its options and ``--help`` work without the extra). The
events it answers, its limits and its errors are described there.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from typing import Any

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.server import AsyncEventHandler
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from ..audio import float_to_pcm16
from ..config import SAMPLE_RATE
from ..generation import TextInput
from ..service import RequestRefused, SpeechJob, check_input_length, check_piece, check_text, new_seed, speech_request

__all__ = ["TadaEventHandler"]

logger = logging.getLogger("tadastream.wyoming")  # the service's logger: one name for its log lines

SAMPLE_WIDTH = 2  # bytes: PCM16
CHANNELS = 1


class TadaEventHandler(AsyncEventHandler):
    """One connection: events are read here; syntheses run one after another in a worker task,
    so reading goes on during one and a disconnect stops it at once."""

    def __init__(self, tts: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):  # tts: a WyomingTTS
        super().__init__(reader, writer)
        self.tts = tts
        self.pending: asyncio.Queue = asyncio.Queue()  # work for the worker, in arrival order
        self.worker: asyncio.Task | None = None
        self.text: TextInput | None = None  # the streamed text, from synthesize-start to synthesize-stop
        self.streamed = False  # a synthesize-start came: plain synthesize events are its compat copy
        self.last_words = 0.0  # event-loop time of the last piece with a word in it (the idle clock)
        self.speaking = False  # an utterance is under way (for the log when the client leaves)
        self.gone = False  # the client's leaving has been logged (once per connection)

    # -- reading (the run loop) ---------------------------------------------------------------
    async def run(self) -> None:
        """Read and handle events until the client leaves, an event is refused or handle_event says stop.

        Replaces ``AsyncEventHandler.run`` so events are read by :meth:`_read_event`, with limits,
        and so nothing escapes: the ``wyoming`` server never awaits this task, and an exception
        left in it would surface later as "Task exception was never retrieved"."""
        self._is_running = True
        try:
            while self._is_running:
                event = await self._read_event()
                if event is None or not await self.handle_event(event):
                    break
        except OSError as exc:  # the client left while an answer (info) was being written
            self._left(f"connection lost ({_reason(exc)})")
        except Exception:  # a bug: logged here, with its traceback, rather than lost in the task
            logger.exception("Wyoming connection failed")
        finally:
            await self.disconnect()
            self.writer.close()

    async def _read_event(self) -> Event | None:
        """The next event; None when the connection is to close (the client left, or a refusal was sent).

        Idle time between events is not limited (a streamed synthesis has ``--idle-timeout``); once
        an event's first byte has come, the whole of it must come within ``event_timeout`` s, and its
        declared size is checked against ``max_event_bytes`` before its body is read."""
        try:
            begun = await self._read_header_line()
            if begun is None:
                return None
            line, deadline = begun
            header, data_length, payload_length = _parse_header(line, self.tts.max_event_bytes)
            data, payload = await self._read_body(header, data_length, payload_length, deadline)
        except (RequestRefused, ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError, OSError) as exc:
            await self._unreadable(exc)  # (TimeoutError is an OSError)
        else:
            return Event(type=header["type"], data=data, payload=payload)
        return None

    async def _read_header_line(self) -> tuple[bytes, float] | None:
        """(an event's header line, the event-loop time its whole event must have come by); blank lines
        between events are skipped; None when the client left before another event began."""
        reader, loop = self.reader, asyncio.get_running_loop()
        line = b""
        while not line.strip():  # blank lines between events are skipped
            line = await reader.read(1)
            if not line:
                return None
            deadline = loop.time() + self.tts.event_timeout
            if line != b"\n":
                async with asyncio.timeout_at(deadline):
                    line += await reader.readuntil(b"\n")
        return line, deadline

    async def _read_body(
        self, header: dict, data_length: int, payload_length: int, deadline: float
    ) -> tuple[dict, bytes | None]:
        """(the event's data: the header's, updated from its data bytes; its payload), read by ``deadline``."""
        reader = self.reader
        data = header.get("data") or {}
        async with asyncio.timeout_at(deadline):
            if data_length:
                body = json.loads(await reader.readexactly(data_length))
                if not isinstance(body, dict):
                    raise RequestRefused(400, "an event's data must be a JSON object", "bad_event")
                data = {**data, **body}
            payload = await reader.readexactly(payload_length) if payload_length else None
        return data, payload

    async def _unreadable(self, exc: Exception) -> None:
        """An event that could not be read: a refusal is sent (the connection then closes), a client
        that left is one line in the log."""
        if isinstance(exc, RequestRefused):
            await self._report(exc)
        elif isinstance(exc, ValueError):  # data that is not JSON
            await self._report(RequestRefused(400, "an event's data must be a JSON object", "bad_event"))
        elif isinstance(exc, asyncio.LimitOverrunError):  # no newline within the stream's buffer limit (64 KiB)
            await self._report(
                RequestRefused(413, "an event header line is too long; send data with data_length", "bad_event")
            )
        elif isinstance(exc, TimeoutError):
            message = f"an event was begun but not finished within {self.tts.event_timeout:g} s (--event-timeout)"
            await self._report(RequestRefused(408, message, "timeout"))
        elif isinstance(exc, asyncio.IncompleteReadError):
            if self._is_running:  # else stop() ended the stream: the server is shutting down
                expected = f"{exc.expected} bytes" if exc.expected is not None else "a header line"
                self._left(f"client left mid-event ({len(exc.partial)} bytes of {expected} came)")
        else:  # ConnectionResetError and the like (an OSError): the client is gone
            during = " mid-synthesis" if self.speaking else ""
            self._left(f"client left{during} ({_reason(exc)})")

    async def handle_event(self, event: Event) -> bool:
        try:
            fields = self._fields(event)
            if Describe.is_type(event.type):
                await self.write_event(self.tts.info().event())
            elif Synthesize.is_type(event.type):
                if self.streamed:
                    logger.debug("ignored a synthesize event: the copy of the streamed text")
                else:
                    self._queue(functools.partial(self._speak, fields.text, fields.voice))
            elif SynthesizeStart.is_type(event.type):
                self._open(fields.voice)
            elif SynthesizeChunk.is_type(event.type):
                self._feed(fields)
            elif SynthesizeStop.is_type(event.type):
                self._stop_text()
        except RequestRefused as exc:
            await self._report(exc)
            return False  # closes the connection; disconnect() stops the worker
        return True

    def _fields(self, event: Event) -> Any:
        """The fields of a synthesize (outside a stream: a Synthesize), synthesize-start (a
        SynthesizeStart) or synthesize-chunk (its text) event, None for the others; a malformed
        event is the client's error (``bad_event``), not ours."""
        try:
            if Synthesize.is_type(event.type) and not self.streamed:
                request = Synthesize.from_event(event)
                if not isinstance(request.text, str):
                    raise TypeError("text must be a string")
                return request
            if SynthesizeStart.is_type(event.type):
                return SynthesizeStart.from_event(event)
            if SynthesizeChunk.is_type(event.type):
                piece = SynthesizeChunk.from_event(event).text
                if not isinstance(piece, str):
                    raise TypeError("text must be a string")
                return piece
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            why = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise RequestRefused(400, f"malformed {event.type} event: {why}", "bad_event") from None
        return None

    def _open(self, voice) -> None:
        if self.text is not None:
            raise RequestRefused(400, "synthesize-start came before the open stream's synthesize-stop", "bad_event")
        self.streamed = True
        self.text = TextInput()
        self._queue(functools.partial(self._speak, self.text, voice))

    def _feed(self, piece: str) -> None:
        text = self.text
        if text is None:
            raise RequestRefused(400, "synthesize-chunk outside a stream: send synthesize-start first", "bad_event")
        check_piece(piece, "text")
        check_input_length(text.chars + len(piece), self.tts.max_input_chars, "text")
        if piece.strip():
            self.last_words = asyncio.get_running_loop().time()
        if not text.ended:  # else closed for idling or by a failure: the error is on its way
            text.put(piece)

    def _stop_text(self) -> None:
        if self.text is None:  # a stop with no stream: answer it, so the client does not wait
            self._queue(functools.partial(self._send, SynthesizeStopped().event()))
            return
        self.text.end()
        self.text = None

    async def disconnect(self) -> None:
        """The client left (or the connection is closing): stop generating, free the slot."""
        if self.text is not None:
            self.text.close()
        worker = self.worker
        if worker is not None and not worker.done():
            if self.speaking:
                self._left("client left mid-synthesis: generation stopped, slot freed")
            worker.cancel()
            await asyncio.wait({worker})

    def _left(self, what: str) -> None:
        """Log the client's leaving in one line, once: the reader and the worker may both see it."""
        if not self.gone:
            self.gone = True
            logger.info("%s; connection closed", what)

    # -- the worker -----------------------------------------------------------------------------
    def _queue(self, work) -> None:
        self.pending.put_nowait(work)
        if self.worker is None:
            self.worker = asyncio.create_task(self._work(), name="tadastream wyoming synthesis")

    async def _work(self) -> None:
        while True:
            work = await self.pending.get()
            try:
                await work()
            except ConnectionError as exc:  # the client left while audio was being sent; disconnect() follows
                self._left(f"client left mid-synthesis ({_reason(exc)}): generation stopped, slot freed")
                return
            except RequestRefused as exc:
                await self._report(exc)
                await self.stop()
                return
            except Exception:
                logger.exception("Wyoming synthesis failed")
                await self._report(RequestRefused(500, "internal error while generating audio", "internal_error"))
                await self.stop()
                return

    async def _speak(self, text: str | TextInput, voice) -> None:
        """One utterance: audio-start, chunks as they are made, audio-stop (+ synthesize-stopped when streamed)."""
        tts, started = self.tts, time.perf_counter()
        streamed = isinstance(text, TextInput)
        name = voice.name if voice is not None else None
        prompt = await asyncio.to_thread(tts.voices.resolve, name)  # RequestRefused for an unknown voice
        if not streamed:
            check_text(text, "text")
            check_input_length(len(text), tts.max_input_chars, "text")
        seed = tts.seed if tts.seed is not None else new_seed()
        job: SpeechJob | None = None
        watchdog: asyncio.Task | None = None
        self.speaking = True
        try:
            job = await tts.service.start(speech_request(text, prompt, tts.options, seed, param="text"), started)
            # the idle clock starts once a slot is held: a wait in the queue is the server's, not the
            # client's (a client may pace its text by the audio), and --queue-timeout bounds it
            watchdog = asyncio.create_task(self._watch_idle(text)) if streamed else None
            await self._send(AudioStart(rate=SAMPLE_RATE, width=SAMPLE_WIDTH, channels=CHANNELS).event())
            sent = await self._send_audio(job)
            if watchdog is not None and watchdog.done() and watchdog.result():
                raise RequestRefused(
                    408, f"no new text for {tts.idle_timeout:g} s; send synthesize-stop to finish", "timeout"
                )
            await self._send(AudioStop(timestamp=sent * 1000 // SAMPLE_RATE).event())
            if streamed:
                await self._send(SynthesizeStopped().event())
            if job is not None and job.samples:
                _log_spoken(job, text, name, seed)
        finally:
            self.speaking = False
            if watchdog is not None:
                watchdog.cancel()
            if job is not None:
                job.finish()  # cancels what is still running and frees the slot

    async def _send_audio(self, job: SpeechJob | None) -> int:
        """Send ``job``'s audio as it is made, in audio-chunk events of at most ``samples_per_chunk``
        samples; returns the samples sent."""
        sent = 0
        chunk_bytes = self.tts.samples_per_chunk * SAMPLE_WIDTH * CHANNELS
        while job is not None and (chunk := await self._next_chunk(job)) is not None:
            pcm = float_to_pcm16(chunk)
            for at in range(0, len(pcm), chunk_bytes):
                piece = pcm[at : at + chunk_bytes]
                event = AudioChunk(
                    rate=SAMPLE_RATE,
                    width=SAMPLE_WIDTH,
                    channels=CHANNELS,
                    audio=piece,
                    timestamp=sent * 1000 // SAMPLE_RATE,
                ).event()
                await self._send(event)
                sent += len(piece) // (SAMPLE_WIDTH * CHANNELS)
        return sent

    @staticmethod
    async def _next_chunk(job: SpeechJob):
        try:
            return await job.next_chunk()
        except RequestRefused as exc:
            if exc.code == "empty_input":  # a stream stopped with no words: nothing to say
                return None
            raise

    async def _watch_idle(self, text: TextInput) -> bool:
        """Close ``text`` (stopping its generation) when no word came for ``idle_timeout`` s since this
        started (its slot was granted) or since the last word; True if it did."""
        loop = asyncio.get_running_loop()
        self.last_words = loop.time()
        while not text.ended:
            left = self.last_words + self.tts.idle_timeout - loop.time()
            if left <= 0:
                text.close()
                return True
            await asyncio.sleep(left)
        return False

    async def _send(self, event: Event) -> None:
        try:
            async with asyncio.timeout(self.tts.send_timeout):
                await self.write_event(event)
        except TimeoutError:
            raise RequestRefused(
                408, f"the client read nothing for {self.tts.send_timeout:g} s; synthesis stopped", "stalled"
            ) from None

    async def _report(self, exc: RequestRefused) -> None:
        """Send an ``error`` event; the client may be gone or not reading, so failures are ignored."""
        logger.warning("Wyoming request refused (%s): %s", exc.code, exc.message)
        try:
            async with asyncio.timeout(self.tts.send_timeout):
                await self.write_event(Error(text=exc.message, code=exc.code).event())
        except (TimeoutError, OSError, RuntimeError):
            pass


def _log_spoken(job: SpeechJob, text: str | TextInput, name: str | None, seed: int) -> None:
    """The log line of an utterance spoken: its text's length, voice and seed, and its timings."""
    streamed = isinstance(text, TextInput)
    t = job.timings()
    logger.info(
        "spoke %d chars (%s, voice %s, seed %d): %.2f s of audio, first after %s s, playable after"
        " %s s (%d stall(s)), RTF %s",
        text.chars if streamed else len(text),
        "streamed" if streamed else "one-shot",
        name or "default",
        seed,
        t["audio_seconds"],
        t["time_to_first_audio"],
        t["time_to_playable_audio"],
        t["stall_count"],
        t["real_time_factor"],
    )


# -- reading events ------------------------------------------------------------------------------
def _declared_length(header: dict, key: str) -> int:
    """``data_length`` or ``payload_length`` of an event header: a count of bytes, 0 when absent."""
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestRefused(400, f"the event header's {key} must be a count of bytes, got {value!r}", "bad_event")
    return value


def _parse_header(line: bytes, max_event_bytes: int) -> tuple[dict, int, int]:
    """An event header line: (header, data_length, payload_length); RequestRefused when it is not a Wyoming
    header (``bad_event``) or declares more than ``max_event_bytes`` in all (``event_too_large``)."""
    try:
        header = json.loads(line)
    except ValueError:
        raise RequestRefused(400, "an event header must be one line of JSON", "bad_event") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise RequestRefused(400, 'an event header must be a JSON object with a "type"', "bad_event")
    if not isinstance(header.get("data", {}), dict):
        raise RequestRefused(400, "an event's data must be a JSON object", "bad_event")
    data_length, payload_length = _declared_length(header, "data_length"), _declared_length(header, "payload_length")
    total = len(line) + data_length + payload_length
    if total > max_event_bytes:
        raise RequestRefused(
            413,
            f"a {header['type'][:64]!r} event of {total} bytes exceeds the server's limit of {max_event_bytes}"
            " (--max-event-bytes)",
            "event_too_large",
        )
    return header, data_length, payload_length


def _reason(exc: BaseException) -> str:
    """An OS error in a few words for the log (``[Errno 104] Connection reset by peer``)."""
    return str(exc) or type(exc).__name__
