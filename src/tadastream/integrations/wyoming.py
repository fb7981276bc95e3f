"""``tadastream wyoming``: the Wyoming protocol (Home Assistant's voice services), served in-process.

A Wyoming TTS server in the manner of wyoming-piper, built on the ``wyoming`` package's own classes
(``pip install "tadastream[wyoming]"``), around one loaded model: every synthesis is a stream in
the shared batched engine of a :class:`~tadastream.service.speech.SpeechService` (admission,
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
  a stream once it holds a slot, audio left unread for ``--send-timeout`` s): an ``error`` event
  (``text``, ``code``), then the server closes the connection, so a client waiting for audio is
  not left hanging.
  Admission is ``tadastream serve``'s (``--admission``, ``--realtime-margin``): a request it
  refuses where the HTTP server answers 429 or 503 gets the same ``code`` (``queue_full``,
  ``queue_timeout``) and words, which say when to retry (Wyoming has no Retry-After).
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
(:func:`add_wyoming_arguments`) without the extra installed; the connection handler, which
subclasses ``wyoming``'s own, is in :mod:`tadastream.integrations.wyoming_handler`, imported then.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ..limits import check_admission
from ..optionsets import (
    OptionError,
    add_admission_arguments,
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

    from ..service import SpeechService, VoiceStore

__all__ = ["WyomingTTS", "add_wyoming_arguments", "build_wyoming", "run_wyoming", "wyoming_options"]

logger = logging.getLogger("tadastream.wyoming")

DEFAULT_URI = "tcp://127.0.0.1:10200"
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
    add_admission_arguments(parser, refused="an error event")
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
        help="seconds a streamed synthesis may wait for more text or synthesize-stop before it is stopped; counted"
        " from when it starts generating, so a wait in the queue (--queue-timeout) does not count (default 60)",
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
    check_admission(opts.admission, opts.realtime_margin, opts.first_audio_boost)
    if opts.seed is not None:
        from ..service import RequestRefused, check_seed

        try:
            check_seed(opts.seed)
        except RequestRefused as exc:
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
        from ..service import inference_options

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
        from .wyoming_handler import TadaEventHandler  # imports wyoming: only once a server runs

        return TadaEventHandler(self, reader, writer)

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
    ValueError for a bad option or checkpoint, RequestRefused for a missing ``--default-voice``.
    """
    from ..loading import load_model_from_options
    from ..service import SpeechService, VoiceStore

    opts = wyoming_options(args, **kwargs)
    check_options(opts)
    model, default_voice = load_model_from_options(opts)
    if opts.default_voice:
        default_voice = VoiceStore(opts.voices, None, model).resolve(opts.default_voice)
    service = SpeechService.from_options(model, opts)
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
    from ..service import RequestRefused

    _require_wyoming()
    opts = wyoming_options(args)
    try:
        check_options(opts)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    configure_logging(opts.log_level)
    try:
        tts = build_wyoming(opts)
    except RequestRefused as exc:
        raise ValueError(f"--default-voice {opts.default_voice}: {exc.message}") from None
    try:
        asyncio.run(tts.serve(opts.uri))
    except KeyboardInterrupt:
        logger.info("stopped")
    finally:
        tts.close()
    return 0
