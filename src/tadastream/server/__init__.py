"""``tadastream serve``: an HTTP/WebSocket speech server around one loaded model.

Endpoints (``/v1/*``, the docs and ``/metrics`` need ``Authorization: Bearer KEY`` when ``--api-key``
is set; without a key, requests carrying an ``Origin`` other than the server's own or a
``--cors-origin``, and requests whose ``Host`` is not the bound address, a loopback name or an
``--allowed-host``, get 403: see :mod:`.access`):

* ``POST /v1/audio/speech``: OpenAI-compatible JSON body ``model`` (ignored), ``input``, ``voice``
  (name, OpenAI name = default voice, or omitted), ``response_format`` (pcm, wav, flac, opus,
  ogg, mp3, aac (ADTS), all encoded chunk by chunk as the audio is made; default mp3 as OpenAI, else
  wav),
  ``speed`` (0.25-4, maps to ``speed_up_factor``: two LLM passes, so later first audio),
  ``stream_format`` ("audio" or "sse": ``speech.audio.delta`` events carrying the format's bytes
  in base64 (pcm when no format is named), then ``speech.audio.done`` with usage and timings),
  plus ``seed``, ``options`` (InferenceOptions fields), ``min_first_chunk_ms`` (null: adaptive, the
  first chunk lasts until the next ones come; 0: at once), and ``timestamps`` (true: with SSE,
  ``speech.audio.timestamps`` events ``{"words": [{"word", "start", "end", "char_start",
  "char_end"}]}`` each before the delta that ends those words). Audio is 24 kHz mono; the ``x-seed``
  header gives the seed used. A client that reads nothing for ``--send-timeout`` seconds, or a
  request past ``--max-session-seconds``, is cut off and its slot freed.
* ``POST /v1/audio/speech/with-timestamps``: the same body; one JSON object ``{"audio"`` (the whole
  file, base64), ``"response_format", "sample_rate", "words", "characters"`` (``{"char", "start",
  "end", "index"}``), ``"timings"}``. Times are seconds of the audio; offsets index ``input``.
* ``WS /v1/audio/stream`` (key as ``Authorization`` header or ``?api_key=``): send a config
  ``{"voice", "seed", "speed", "options", "timestamps", "min_first_chunk_ms"}``; receive
  ``{"type": "ready", "sample_rate": 24000, "encoding": "pcm_s16le", "seed"}``; send
  ``{"type": "text", "text": ...}`` any number of times,
  then ``{"type": "end"}``. Generation starts on the first text message (that is when a stream
  slot is taken): each message is a piece of the text, spoken as soon as it is settled (a word is
  held back until the whitespace after it, or ``end``, arrives), so binary PCM16 frames can come
  before ``end``; the audio is the same, bit for bit, as for the whole text sent at once with the
  same seed. With ``"timestamps": true``, ``{"type": "timestamps", "words": [...]}`` messages (as
  in SSE; offsets index the text sent so far) come before the binary frame that ends those words.
  Then ``{"type": "audio.done", "samples"}`` and ``{"type": "result",
  "time_to_first_audio", "time_to_playable_audio", "stall_count", "stall_time", "total_time",
  "queue_time", "audio_seconds", "real_time_factor", "seed", "cancelled"}``, and the server closes
  (1000). ``{"type": "cancel"}`` stops generation after the current step (the two final messages
  still come; before any text it just closes); a disconnect
  stops it too. Errors (an empty or whitespace-only text, found at ``end``; text over the limit;
  no word for ``--ws-idle-timeout`` s (whitespace-only pieces and a wait in the queue do not
  count); audio left unread for ``--send-timeout`` s; a session past ``--max-session-seconds``):
  ``{"type": "error", "status" (the HTTP status of the same refusal), "retry_after" (when busy),
  "error": {...}}`` then a close (1008; 1003 for a malformed message; 1013 when busy).
* ``GET /v1/voices``, ``POST /v1/voices`` (multipart ``name`` + ``file`` = a ``.voice`` file, or
  ``audio`` + ``transcript`` when the server has an encoder), ``GET /v1/voices/{name}`` (metadata;
  ``?download=true``: the file), ``DELETE /v1/voices/{name}``; names ignore case.
* ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus; :mod:`.metrics`), ``/docs``
  and ``/redoc`` (assets served locally; with a key, a login form sets a docs cookie: :mod:`.docs`),
  and a demo page at ``/``.

Same seed, same audio: each stream carries its own RNG state (see :mod:`.service`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from ..optionsets import (
    OptionError,
    add_admission_arguments,
    add_model_arguments,
    add_process_arguments,
    adder,
    configure_logging,
    option_namespace,
)
from .settings import ServerSettings

__all__ = ["add_serve_arguments", "create_app", "main", "run_server"]

LOOPBACK = ("127.0.0.1", "::1", "localhost")
# what the server cannot start without (python-multipart, PyAV and the rest of the extra only add features)
SERVER_PACKAGES = ("fastapi", "uvicorn", "prometheus_client")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser``; options it already has (a shared ``--model``) are kept."""

    add = adder(parser)
    add_model_arguments(parser)
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; set --api-key before exposing)")
    add("--port", type=int, default=8000)
    add("--voices", metavar="DIR", default=None, help="folder of NAME.voice files; enables POST /v1/voices")
    add("--default-voice", metavar="NAME", default=None, help="voice used when a request names none")
    add("--encoder", metavar="ID|DIR", default=None, help="codec encoder for WAV voice uploads (optional)")
    add("--max-streams", type=int, default=4, help="generations at once (default 4)")
    add("--queue", type=int, default=16, help="requests that may wait for a stream; more get 429 (default 16)")
    add("--queue-timeout", type=float, default=30.0, help="seconds a request may wait before a 503 (default 30)")
    add_admission_arguments(parser, refused="429")
    add(
        "--api-key",
        default=os.environ.get("TADASTREAM_API_KEY"),
        help="require this bearer key on /v1 (default: $TADASTREAM_API_KEY)",
    )
    add(
        "--cors-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. https://app.example.com, or *) call the API; repeatable",
    )
    add(
        "--allowed-host",
        action="append",
        default=None,
        metavar="NAME",
        help="a further host name clients may reach the server by (besides --host and loopback names); repeatable",
    )
    add(
        "--metrics-public",
        action="store_true",
        help="serve /metrics without the API key (for a scraper inside a trusted network)",
    )
    add("--max-input-chars", type=int, default=4096, help="longest input text (default 4096)")
    add(
        "--body-timeout",
        type=float,
        default=15.0,
        help="seconds a request body may take to arrive; slower ones get 408 (default 15)",
    )
    add(
        "--send-timeout",
        type=float,
        default=30.0,
        help="seconds a client may leave audio unread before its stream is stopped and the slot freed (default 30)",
    )
    add(
        "--max-session-seconds",
        type=float,
        default=1800.0,
        help="longest a request or WebSocket session may hold a stream slot; 0 for no cap (default 1800)",
    )
    add(
        "--ws-idle-timeout",
        type=float,
        default=60.0,
        help="seconds a WebSocket may stay open without sending a word; a wait in the queue (--queue-timeout)"
        " does not count (default 60)",
    )
    add("--max-voice-mb", type=float, default=16.0, help="largest voice upload in MiB (default 16)")
    add("--max-voice-seconds", type=float, default=60.0, help="longest voice prompt in seconds (default 60)")
    add_process_arguments(parser)


def _options(args: argparse.Namespace | None, kwargs: dict[str, Any]) -> argparse.Namespace:
    return option_namespace(add_serve_arguments, args, kwargs)


def _load_encoder(opts: argparse.Namespace, model):
    if not opts.encoder:
        return None
    from ..codec.encoder import Encoder

    return Encoder.from_pretrained(opts.encoder, tokenizer=model.tokenizer).to(model.device).eval()


def server_settings(opts: argparse.Namespace) -> ServerSettings:
    """The server's limits for parsed ``serve`` options; ValueError naming the flag of one that cannot work."""
    return ServerSettings(
        model_id=opts.model if isinstance(opts.model, str) else "tada",
        max_streams=opts.max_streams,
        queue=opts.queue,
        queue_timeout=opts.queue_timeout,
        admission=opts.admission,
        realtime_margin=opts.realtime_margin,
        first_audio_boost=opts.first_audio_boost,
        api_key=opts.api_key or None,
        max_input_chars=opts.max_input_chars,
        max_body_bytes=max(256 * 1024, 8 * opts.max_input_chars),
        max_voice_bytes=int(opts.max_voice_mb * 1024 * 1024),
        max_voice_seconds=opts.max_voice_seconds,
        voices_dir=opts.voices,
        cors_origins=tuple(opts.cors_origin or ()),
        bind_host=opts.host,
        allowed_hosts=tuple(opts.allowed_host or ()),
        body_timeout=opts.body_timeout,
        metrics_public=opts.metrics_public,
        send_timeout=opts.send_timeout,
        max_session_seconds=opts.max_session_seconds,
        ws_idle_timeout=opts.ws_idle_timeout,
    )


def build_app(opts: argparse.Namespace):
    """The app for parsed ``serve`` options: load the model, voices and encoder."""
    from ..service import VoiceStore
    from .app import create_app

    settings = server_settings(opts)  # checked before the model loads: a bad flag fails in a second
    from ..loading import load_model_from_options  # the one loader every entry point uses

    model, default_voice = load_model_from_options(opts)
    if opts.default_voice:
        default_voice = VoiceStore(opts.voices, None, model).resolve(opts.default_voice)
    return create_app(model, settings=settings, default_voice=default_voice, encoder=_load_encoder(opts, model))


def _require_server() -> None:
    """ImportError saying how to install the server's packages, checked before anything loads."""
    for name in SERVER_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ImportError(f'the server needs the {name} package: pip install "tadastream[server]"') from None


def run_server(args: argparse.Namespace | None = None, **kwargs: Any) -> int:
    """Load the model and serve until interrupted; returns 0 (an exit status) when stopped.

    ``args`` comes from a parser set up by :func:`add_serve_arguments` (other attributes, such as
    a CLI's handler, are ignored); keyword arguments override it (``run_server(model="demo",
    port=8001)``; ``model`` may also be an already loaded model). Raises OptionError for a bad
    option and ImportError for a missing server package before anything loads (usage errors, as for
    ``wyoming`` and ``ray``); loading errors propagate.
    """
    _require_server()
    import uvicorn

    opts = _options(args, kwargs)
    try:
        server_settings(opts)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    configure_logging(opts.log_level)
    log = logging.getLogger("tadastream.server")
    if opts.host not in LOOPBACK and not opts.api_key:
        log.warning("listening on %s without --api-key: anyone who can reach it can use it", opts.host)
    app = build_app(opts)
    from ..loading import choose_dtype

    model = app.state.service.model
    _dtype, why = choose_dtype(opts.dtype, model.device, opts.quantize)
    log.info(
        "serving %s on http://%s:%d (%s, on %s)", app.state.settings.model_id, opts.host, opts.port, why, model.device
    )
    uvicorn.run(
        app,
        host=opts.host,
        port=opts.port,
        log_level=opts.log_level,
        access_log=False,  # the app logs one JSON line per request itself
        ws_max_size=max(1 << 16, 8 * opts.max_input_chars),
        timeout_graceful_shutdown=5,
    )
    return 0


def create_app(*args: Any, **kwargs: Any):
    """See :func:`tadastream.server.app.create_app` (imported lazily: FastAPI is optional)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """``python -m tadastream.server [options]``."""
    parser = argparse.ArgumentParser(prog="tadastream serve", description="Serve TADA speech over HTTP/WebSocket")
    add_serve_arguments(parser)
    opts = parser.parse_args(argv)
    try:
        return run_server(opts)
    except OptionError as exc:  # as `tadastream serve` says it: one line, the usage status
        print(f"error: {exc}", file=sys.stderr)
        return 2
