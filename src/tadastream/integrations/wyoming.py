"""``tadastream wyoming``: the Wyoming protocol (Home Assistant's voice services), served in-process.

A Wyoming TTS server in the manner of wyoming-piper, built on the ``wyoming`` package's own classes
(``pip install "tadastream[wyoming]"``), around one loaded model: every synthesis is a stream in
the shared batched engine of a :class:`~tadastream.server.service.SpeechService` (admission,
per-request seeds), so several clients are served at once. Events, per connection:

* ``describe`` -> ``info``: one TTS program, ``supports_synthesize_streaming``, whose voices are
  ``default`` (the model's voice, or ``--default-voice``) and every ``NAME.voice`` in ``--voices``.
* ``synthesize`` (``text``, optional ``voice.name``) -> ``audio-start`` (24000 Hz, 16-bit, mono),
  ``audio-chunk`` events sent as the audio is made (at most ``--samples-per-chunk`` samples each),
  ``audio-stop``.
* ``synthesize-start`` (optional ``voice.name``), ``synthesize-chunk`` (``text``) any number of
  times, ``synthesize-stop`` -> ``audio-start``, ``audio-chunk`` events, ``audio-stop``, then
  ``synthesize-stopped``. Pieces feed one generation as they arrive (a word is spoken once the
  whitespace after it, or the stop, has come), so audio starts before the stop; it is the audio of
  the whole text sent at once with the same seed. After a ``synthesize-start``, plain
  ``synthesize`` events on that connection are the copy of the text that streaming clients send
  for backward compatibility (Home Assistant sends it before ``synthesize-stop``) and are ignored,
  as wyoming-piper does.
* Errors (unknown voice, text too long, all streams busy, no new text for ``--idle-timeout`` s in
  a stream, audio left unread for ``--send-timeout`` s): an ``error`` event (``text``, ``code``),
  then the server closes the connection, so a client waiting for audio is not left hanging.
* Events are read with limits of their own (``tcp://`` and ``unix://``): an event whose header
  declares more than ``--max-event-bytes`` in all (header line, ``data_length``,
  ``payload_length``) is refused from its header, before any of its body is read (``error``,
  code ``event_too_large``); one begun but not finished within ``--event-timeout`` s is dropped
  (``error``, code ``timeout``); a header that is not a Wyoming event is ``bad_event``. Each
  closes the connection. A client that leaves mid-event or mid-synthesis is one line in the log.
  (``stdio://`` is read by the ``wyoming`` package itself: its peer is the process that started
  this one.)

Requests on one connection run in order, in a task of their own, while the connection is read: a
client that disconnects (its end of the socket closes) stops its generation at once and frees the
engine slot. Wyoming has no word-timestamp event: only audio is sent.

This module imports no ``wyoming`` until a server is built, so the CLI can take its options
(:func:`add_wyoming_arguments`) without the extra installed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ..config import SAMPLE_RATE
from ..optionsets import (
    OptionError,
    add_model_arguments,
    add_process_arguments,
    adder,
    configure_logging,
    option_namespace,
)
from ..scripts import canonical_language

if TYPE_CHECKING:
    from wyoming.info import Info
    from wyoming.server import AsyncEventHandler

    from ..server.service import SpeechService
    from ..server.voices import VoiceStore

__all__ = ["WyomingTTS", "add_wyoming_arguments", "build_wyoming", "run_wyoming", "wyoming_options"]

logger = logging.getLogger("tadastream.wyoming")

DEFAULT_URI = "tcp://127.0.0.1:10200"
SAMPLE_WIDTH = 2  # bytes: PCM16
CHANNELS = 1
#: The largest event a client may send. A TTS client sends text only (``synthesize`` with at most
#: ``--max-input-chars`` characters, ~16 KiB of UTF-8 at 4096) and no audio payload: 1 MiB leaves
#: room for any legitimate event while a declared gigabyte is refused before it is buffered.
DEFAULT_MAX_EVENT_BYTES = 1 << 20
#: Seconds a client has to finish an event once its first byte has come.
DEFAULT_EVENT_TIMEOUT = 15.0
MIN_MAX_EVENT_BYTES = 1024  # below this even a describe with its header could be refused
INSTALL_HINT = 'the Wyoming server needs the wyoming package: pip install "tadastream[wyoming]"'


def add_wyoming_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``wyoming`` options to ``parser``; options it already has (a shared ``--model``) are kept.

    Names and defaults follow ``tadastream serve`` wherever the meaning is the same.
    """

    add = adder(parser)
    add("--uri", default=DEFAULT_URI, help=f"where to listen: tcp://HOST:PORT, unix://PATH or stdio:// ({DEFAULT_URI})")
    add_model_arguments(parser)
    add("--voices", metavar="DIR", default=None, help="folder of NAME.voice files, offered as voices NAME")
    add("--default-voice", metavar="NAME", default=None, help="voice used when a request names none")
    add(
        "--languages",
        default=None,
        metavar="LANG[,LANG...]",
        help="languages of the voices whose file records none, for Home Assistant's voice picker"
        " (default: those the checkpoint speaks)",
    )
    add("--max-streams", type=int, default=4, help="generations at once (default 4)")
    add("--queue", type=int, default=16, help="requests that may wait for a stream; more get an error (default 16)")
    add("--queue-timeout", type=float, default=30.0, help="seconds a request may wait for a stream (default 30)")
    add("--max-input-chars", type=int, default=4096, help="longest text of one request (default 4096)")
    add(
        "--seed",
        type=int,
        default=None,
        help="seed every request with this, for reproducible audio (default: a new random seed per request)",
    )
    add(
        "--samples-per-chunk",
        type=int,
        default=1024,
        help="most samples in one audio-chunk event (default 1024, as wyoming-piper)",
    )
    add(
        "--send-timeout",
        type=float,
        default=30.0,
        help="seconds a client may leave audio unread before its synthesis is stopped and the slot freed (default 30)",
    )
    add(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="seconds a streamed synthesis may wait for more text or synthesize-stop before it is stopped (default 60)",
    )
    add(
        "--max-event-bytes",
        type=int,
        default=DEFAULT_MAX_EVENT_BYTES,
        metavar="BYTES",
        help="largest event a client may send (header, data and payload together); a larger declared size is"
        f" refused before it is read and the connection closed (default {DEFAULT_MAX_EVENT_BYTES}, 1 MiB)",
    )
    add(
        "--event-timeout",
        type=float,
        default=DEFAULT_EVENT_TIMEOUT,
        metavar="SECONDS",
        help="seconds a client has to finish sending an event it has begun; a stalled one is dropped and the"
        f" connection closed (default {DEFAULT_EVENT_TIMEOUT:g})",
    )
    add_process_arguments(parser)


def wyoming_options(args: argparse.Namespace | None = None, **kwargs: Any) -> argparse.Namespace:
    """Every ``wyoming`` option: the defaults, then ``args`` (other attributes ignored), then ``kwargs``."""
    return option_namespace(add_wyoming_arguments, args, kwargs)


def check_options(opts: argparse.Namespace) -> None:
    """Raise ValueError naming the flag for options that cannot work, before anything loads."""
    uri = urlparse(opts.uri)
    if uri.scheme not in ("tcp", "unix", "stdio"):
        raise ValueError(f"--uri {opts.uri}: use tcp://HOST:PORT, unix://PATH or stdio://")
    if uri.scheme == "tcp" and (uri.hostname is None or uri.port is None):
        raise ValueError(f"--uri {opts.uri}: a tcp:// address needs a host and a port, e.g. tcp://0.0.0.0:10200")
    integers = (
        ("max_streams", 1),
        ("queue", 0),
        ("max_input_chars", 1),
        ("samples_per_chunk", 1),
        ("max_event_bytes", MIN_MAX_EVENT_BYTES),
    )
    for name, low in integers:
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
    for name in ("send_timeout", "idle_timeout", "queue_timeout", "event_timeout"):
        value = getattr(opts, name)
        zero_ok = name == "queue_timeout"
        if isinstance(value, bool) or not isinstance(value, int | float) or not (value > 0 or zero_ok and value == 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a number of seconds > 0, got {value!r}")
    if opts.seed is not None:
        from ..server.errors import EngineError
        from ..server.service import check_seed

        try:
            check_seed(opts.seed)
        except EngineError as exc:
            raise ValueError(f"--seed: {exc.message}") from None
    if opts.voices is not None and not os.path.isdir(opts.voices):
        raise ValueError(f"--voices {opts.voices}: not a folder")
    if opts.languages is not None:
        _languages(opts.languages)


def _languages(spec: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """The languages of ``--languages`` (None: not given); ValueError for an unknown or empty list."""
    if spec is None:
        return None
    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else list(spec)) if p.strip()]
    if not parts:
        raise ValueError("--languages: name at least one language, e.g. en")
    try:
        return [canonical_language(p) for p in parts]
    except ValueError as exc:
        raise ValueError(f"--languages: {exc}") from None


class WyomingTTS:
    """A loaded model offered over Wyoming: its speech service, its voices and the per-request limits.

    Build one with :func:`build_wyoming`; :meth:`serve` runs the server, :meth:`handler` is the
    ``wyoming`` handler factory for other ways of running it; :meth:`close` stops the engine.
    """

    def __init__(
        self,
        service: SpeechService,
        voices: VoiceStore,
        *,
        model_id: str = "tada",
        languages: list[str] | tuple[str, ...] | None = None,
        seed: int | None = None,
        samples_per_chunk: int = 1024,
        max_input_chars: int = 4096,
        send_timeout: float = 30.0,
        idle_timeout: float = 60.0,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        event_timeout: float = DEFAULT_EVENT_TIMEOUT,
    ):
        from ..server.service import inference_options

        self.service, self.voices = service, voices
        self.model_id = model_id
        #: Languages of the voices whose file records none: by default the checkpoint's.
        self.languages = list(languages) if languages else list(service.model.languages)
        self.seed = seed
        self.samples_per_chunk = samples_per_chunk
        self.max_input_chars = max_input_chars
        self.send_timeout = send_timeout
        self.idle_timeout = idle_timeout
        self.max_event_bytes = max_event_bytes
        self.event_timeout = event_timeout
        self.options = inference_options(None, None, service.model)  # the defaults, validated once

    def voice_names(self) -> list[str]:
        """``default`` first (always: a model without a prompt speaks in its own voice), then the files."""
        return list(self.voice_languages())

    def voice_languages(self) -> dict[str, list[str]]:
        """Each voice's languages, ``default`` first: the one its recording was made in where the voice
        records it, else :attr:`languages`."""
        listed = {v["id"]: v.get("language") for v in self.voices.list()}
        names = ["default"] + [name for name in listed if name != "default"]
        return {name: [listed[name]] if listed.get(name) else list(self.languages) for name in names}

    def info(self) -> Info:
        """The ``info`` answer to ``describe``, read afresh each time (voices may be added to the folder)."""
        from wyoming.info import Attribution, Info, TtsProgram, TtsVoice

        from .. import __version__

        by = Attribution(name="Hume AI (TADA), served by tadastream", url="https://github.com/HumeAI/tada")
        voices = [
            TtsVoice(
                name=name,
                description=f"{self.model_id}: {'default voice' if name == 'default' else name + '.voice'}",
                attribution=by,
                installed=True,
                version=None,
                languages=languages,
            )
            for name, languages in self.voice_languages().items()
        ]
        program = TtsProgram(
            name="tadastream",
            description=f"TADA text-to-speech ({self.model_id}), streamed as it is generated",
            attribution=by,
            installed=True,
            version=__version__,
            voices=voices,
            supports_synthesize_streaming=True,
        )
        return Info(tts=[program])

    def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> AsyncEventHandler:
        """A handler for one connection (the factory ``wyoming.server.AsyncServer.run`` takes)."""
        return _handler_class()(self, reader, writer)

    async def serve(self, uri: str = DEFAULT_URI) -> None:
        """Listen on ``uri`` until cancelled (or SIGTERM, in the main thread); open connections are then closed."""
        from wyoming.server import AsyncServer

        server = AsyncServer.from_uri(uri)
        logger.info("Wyoming server for %s on %s (voices: %s)", self.model_id, uri, ", ".join(self.voice_names()))
        try:
            await server.run(self.handler)
        finally:
            await server.stop()

    def close(self) -> None:
        """Stop the engine (every stream) and its threads."""
        self.service.shutdown()


def build_wyoming(args: argparse.Namespace | None = None, **kwargs: Any) -> WyomingTTS:
    """Load the model (through :func:`tadastream.loading.load_model`) and voices for these options.

    Options as :func:`wyoming_options` takes them (``build_wyoming(model="demo", seed=7)``); raises
    ValueError for a bad option or checkpoint, EngineError for a missing ``--default-voice``.
    """
    from ..loading import load_model_from_options
    from ..server.service import SpeechService
    from ..server.voices import VoiceStore

    opts = wyoming_options(args, **kwargs)
    check_options(opts)
    model, default_voice = load_model_from_options(opts)
    if opts.default_voice:
        default_voice = VoiceStore(opts.voices, None, model).resolve(opts.default_voice)
    service = SpeechService(model, max_streams=opts.max_streams, queue=opts.queue, queue_timeout=opts.queue_timeout)
    return WyomingTTS(
        service,
        VoiceStore(opts.voices, default_voice, model),
        model_id=opts.model if isinstance(opts.model, str) else "tada",
        languages=_languages(opts.languages),
        seed=opts.seed,
        samples_per_chunk=opts.samples_per_chunk,
        max_input_chars=opts.max_input_chars,
        send_timeout=opts.send_timeout,
        idle_timeout=opts.idle_timeout,
        max_event_bytes=opts.max_event_bytes,
        event_timeout=opts.event_timeout,
    )


def _require_wyoming() -> None:
    try:
        import wyoming.server  # noqa: F401
    except ImportError:
        raise ImportError(INSTALL_HINT) from None


def run_wyoming(args: argparse.Namespace) -> int:
    """Load the model and serve Wyoming until interrupted; returns 0 once stopped (``tadastream wyoming``).

    Before loading anything, raises ImportError (no ``wyoming`` package: the message says
    ``pip install "tadastream[wyoming]"``) or OptionError (a bad option); ValueError when the
    checkpoint or ``--default-voice`` cannot be used.
    """
    from ..server.errors import EngineError

    _require_wyoming()
    opts = wyoming_options(args)
    try:
        check_options(opts)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    configure_logging(opts.log_level)
    try:
        tts = build_wyoming(opts)
    except EngineError as exc:
        raise ValueError(f"--default-voice {opts.default_voice}: {exc.message}") from None
    try:
        asyncio.run(tts.serve(opts.uri))
    except KeyboardInterrupt:
        logger.info("stopped")
    finally:
        tts.close()
    return 0


# -- reading events ------------------------------------------------------------------------------
def _declared_length(header: dict, key: str) -> int:
    """``data_length`` or ``payload_length`` of an event header: a count of bytes, 0 when absent."""
    from ..server.errors import EngineError

    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EngineError(400, f"the event header's {key} must be a count of bytes, got {value!r}", "bad_event")
    return value


def _parse_header(line: bytes, max_event_bytes: int) -> tuple[dict, int, int]:
    """An event header line: (header, data_length, payload_length); EngineError when it is not a Wyoming
    header (``bad_event``) or declares more than ``max_event_bytes`` in all (``event_too_large``)."""
    from ..server.errors import EngineError

    try:
        header = json.loads(line)
    except ValueError:
        raise EngineError(400, "an event header must be one line of JSON", "bad_event") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise EngineError(400, 'an event header must be a JSON object with a "type"', "bad_event")
    if not isinstance(header.get("data", {}), dict):
        raise EngineError(400, "an event's data must be a JSON object", "bad_event")
    data_length, payload_length = _declared_length(header, "data_length"), _declared_length(header, "payload_length")
    total = len(line) + data_length + payload_length
    if total > max_event_bytes:
        raise EngineError(
            413,
            f"a {header['type'][:64]!r} event of {total} bytes exceeds the server's limit of {max_event_bytes}"
            " (--max-event-bytes)",
            "event_too_large",
        )
    return header, data_length, payload_length


def _reason(exc: BaseException) -> str:
    """An OS error in a few words for the log (``[Errno 104] Connection reset by peer``)."""
    return str(exc) or type(exc).__name__


# -- one connection -----------------------------------------------------------------------------
@functools.cache
def _handler_class() -> type:
    """The connection handler, defined on first use: it subclasses ``wyoming``'s AsyncEventHandler."""
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.error import Error
    from wyoming.event import Event
    from wyoming.info import Describe
    from wyoming.server import AsyncEventHandler
    from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

    from ..audio import float_to_pcm16
    from ..generation import TextInput
    from ..server.errors import EngineError
    from ..server.service import SpeechJob, check_piece, check_text, new_seed

    class TadaEventHandler(AsyncEventHandler):
        """One connection: events are read here; syntheses run one after another in a worker task,
        so reading goes on during one and a disconnect stops it at once."""

        def __init__(self, tts: WyomingTTS, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            super().__init__(reader, writer)
            self.tts = tts
            self.pending: asyncio.Queue = asyncio.Queue()  # work for the worker, in arrival order
            self.worker: asyncio.Task | None = None
            self.text: TextInput | None = None  # the streamed text, from synthesize-start to synthesize-stop
            self.streamed = False  # a synthesize-start came: plain synthesize events are its compat copy
            self.last_words = 0.0  # event-loop time of the last piece with a word in it (the idle clock)
            self.speaking = False  # an utterance is under way (for the log when the client leaves)
            self.gone = False  # the client's leaving has been logged (once per connection)

        # -- reading (the run loop) ---------------------------------------------------------
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
            reader, tts, loop = self.reader, self.tts, asyncio.get_running_loop()
            try:
                line = b""
                while not line.strip():  # blank lines between events are skipped
                    line = await reader.read(1)
                    if not line:
                        return None
                    deadline = loop.time() + tts.event_timeout
                    if line != b"\n":
                        async with asyncio.timeout_at(deadline):
                            line += await reader.readuntil(b"\n")
                header, data_length, payload_length = _parse_header(line, tts.max_event_bytes)
                data = header.get("data") or {}
                async with asyncio.timeout_at(deadline):
                    if data_length:
                        body = json.loads(await reader.readexactly(data_length))
                        if not isinstance(body, dict):
                            raise EngineError(400, "an event's data must be a JSON object", "bad_event")
                        data = {**data, **body}
                    payload = await reader.readexactly(payload_length) if payload_length else None
            except EngineError as exc:
                await self._report(exc)
            except ValueError:  # data that is not JSON
                await self._report(EngineError(400, "an event's data must be a JSON object", "bad_event"))
            except asyncio.LimitOverrunError:  # no newline within the stream's buffer limit (64 KiB)
                await self._report(
                    EngineError(413, "an event header line is too long; send data with data_length", "bad_event")
                )
            except TimeoutError:
                message = f"an event was begun but not finished within {tts.event_timeout:g} s (--event-timeout)"
                await self._report(EngineError(408, message, "timeout"))
            except asyncio.IncompleteReadError as exc:
                if self._is_running:  # else stop() ended the stream: the server is shutting down
                    expected = f"{exc.expected} bytes" if exc.expected is not None else "a header line"
                    self._left(f"client left mid-event ({len(exc.partial)} bytes of {expected} came)")
            except OSError as exc:  # ConnectionResetError and the like: the client is gone
                during = " mid-synthesis" if self.speaking else ""
                self._left(f"client left{during} ({_reason(exc)})")
            else:
                return Event(type=header["type"], data=data, payload=payload)
            return None

        async def handle_event(self, event: Event) -> bool:
            try:
                try:  # the event's fields; a malformed one is the client's error, not ours
                    if Synthesize.is_type(event.type) and not self.streamed:
                        request = Synthesize.from_event(event)
                        if not isinstance(request.text, str):
                            raise TypeError("text must be a string")
                    elif SynthesizeStart.is_type(event.type):
                        start = SynthesizeStart.from_event(event)
                    elif SynthesizeChunk.is_type(event.type):
                        piece = SynthesizeChunk.from_event(event).text
                        if not isinstance(piece, str):
                            raise TypeError("text must be a string")
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    why = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
                    raise EngineError(400, f"malformed {event.type} event: {why}", "bad_event") from None
                if Describe.is_type(event.type):
                    await self.write_event(self.tts.info().event())
                elif Synthesize.is_type(event.type):
                    if self.streamed:
                        logger.debug("ignored a synthesize event: the copy of the streamed text")
                    else:
                        self._queue(functools.partial(self._speak, request.text, request.voice))
                elif SynthesizeStart.is_type(event.type):
                    self._open(start.voice)
                elif SynthesizeChunk.is_type(event.type):
                    self._feed(piece)
                elif SynthesizeStop.is_type(event.type):
                    self._stop_text()
            except EngineError as exc:
                await self._report(exc)
                return False  # closes the connection; disconnect() stops the worker
            return True

        def _open(self, voice) -> None:
            if self.text is not None:
                raise EngineError(400, "synthesize-start came before the open stream's synthesize-stop", "bad_event")
            self.streamed = True
            self.text = TextInput()
            self._queue(functools.partial(self._speak, self.text, voice))

        def _feed(self, piece: str) -> None:
            text = self.text
            if text is None:
                raise EngineError(400, "synthesize-chunk outside a stream: send synthesize-start first", "bad_event")
            check_piece(piece, "text")
            if text.chars + len(piece) > self.tts.max_input_chars:
                raise EngineError(400, f"the text exceeds {self.tts.max_input_chars} characters", "input_too_long")
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

        # -- the worker -----------------------------------------------------------------------
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
                except EngineError as exc:
                    await self._report(exc)
                    await self.stop()
                    return
                except Exception:
                    logger.exception("Wyoming synthesis failed")
                    await self._report(EngineError(500, "internal error while generating audio", "internal_error"))
                    await self.stop()
                    return

        async def _speak(self, text: str | TextInput, voice) -> None:
            """One utterance: audio-start, chunks as they are made, audio-stop (+ synthesize-stopped when streamed)."""
            tts, started = self.tts, time.perf_counter()
            streamed = isinstance(text, TextInput)
            name = voice.name if voice is not None else None
            prompt = await asyncio.to_thread(tts.voices.resolve, name)  # EngineError for an unknown voice
            if not streamed:
                check_text(text, "text")
                if len(text) > tts.max_input_chars:
                    raise EngineError(400, f"the text exceeds {tts.max_input_chars} characters", "input_too_long")
            seed = tts.seed if tts.seed is not None else new_seed()
            job: SpeechJob | None = None
            watchdog = asyncio.create_task(self._watch_idle(text)) if streamed else None
            self.speaking = True
            try:
                job = await tts.service.start(prompt, text, seed=seed, options=tts.options, started=started)
                await self._send(AudioStart(rate=SAMPLE_RATE, width=SAMPLE_WIDTH, channels=CHANNELS).event())
                sent = 0
                while job is not None and (chunk := await self._next_chunk(job)) is not None:
                    pcm = float_to_pcm16(chunk)
                    step = tts.samples_per_chunk * SAMPLE_WIDTH * CHANNELS
                    for at in range(0, len(pcm), step):
                        piece = pcm[at : at + step]
                        event = AudioChunk(
                            rate=SAMPLE_RATE,
                            width=SAMPLE_WIDTH,
                            channels=CHANNELS,
                            audio=piece,
                            timestamp=sent * 1000 // SAMPLE_RATE,
                        ).event()
                        await self._send(event)
                        sent += len(piece) // (SAMPLE_WIDTH * CHANNELS)
                if watchdog is not None and watchdog.done() and watchdog.result():
                    raise EngineError(
                        408, f"no new text for {tts.idle_timeout:g} s; send synthesize-stop to finish", "timeout"
                    )
                await self._send(AudioStop(timestamp=sent * 1000 // SAMPLE_RATE).event())
                if streamed:
                    await self._send(SynthesizeStopped().event())
                if job is not None and job.samples:
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
            finally:
                self.speaking = False
                if watchdog is not None:
                    watchdog.cancel()
                if job is not None:
                    job.finish()  # cancels what is still running and frees the slot

        @staticmethod
        async def _next_chunk(job: SpeechJob):
            try:
                return await job.next_chunk()
            except EngineError as exc:
                if exc.code == "empty_input":  # a stream stopped with no words: nothing to say
                    return None
                raise

        async def _watch_idle(self, text: TextInput) -> bool:
            """Close ``text`` (stopping its generation) when no word came for ``idle_timeout`` s; True if it did."""
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
                raise EngineError(
                    408, f"the client read nothing for {self.tts.send_timeout:g} s; synthesis stopped", "stalled"
                ) from None

        async def _report(self, exc: EngineError) -> None:
            """Send an ``error`` event; the client may be gone or not reading, so failures are ignored."""
            logger.warning("Wyoming request refused (%s): %s", exc.code, exc.message)
            try:
                async with asyncio.timeout(self.tts.send_timeout):
                    await self.write_event(Error(text=exc.message, code=exc.code).event())
            except (TimeoutError, OSError, RuntimeError):
                pass

    return TadaEventHandler
