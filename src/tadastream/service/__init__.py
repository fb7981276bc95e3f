"""The speech service every front end shares, free of any web framework.

HTTP and the WebSocket (:mod:`tadastream.server`), Wyoming (:mod:`tadastream.integrations.wyoming`)
and Ray Serve (:mod:`tadastream.deploy.ray`) all speak through one :class:`SpeechService`: one
batched engine, admission to its slots, the voices by name (:class:`VoiceStore`), and the checks
that refuse a request the same way wherever it comes from (:class:`RequestRefused`).
"""

from .checks import (
    check_first_chunk,
    check_input_length,
    check_piece,
    check_seed,
    check_text,
    check_timestamps,
    inference_options,
    input_error,
    new_seed,
    speech_request,
)
from .refusals import RequestRefused
from .speech import Admission, SpeechJob, SpeechService
from .voices import VoiceStore, check_voice_name, voice_seconds

__all__ = [
    "Admission",
    "RequestRefused",
    "SpeechJob",
    "SpeechService",
    "VoiceStore",
    "check_first_chunk",
    "check_input_length",
    "check_piece",
    "check_seed",
    "check_text",
    "check_timestamps",
    "inference_options",
    "input_error",
    "new_seed",
    "speech_request",
    "voice_seconds",
    "check_voice_name",
]
