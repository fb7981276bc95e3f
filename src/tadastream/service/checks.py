"""What every front end refuses, in the same words: seeds, options, texts and their length.

HTTP, the WebSocket, Wyoming and Ray check a request's fields here, so the same mistake gets the
same :class:`~tadastream.service.refusals.RequestRefused` (status, code, message) wherever it is made.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from ..generation import (
    EmptyTextError,
    GenerationInputError,
    InferenceOptions,
    SpeechRequest,
    Text,
    TextTooLongError,
)
from ..generation.options import check_encodable, check_min_first_chunk_ms
from ..limits import MAX_SEED, OPTION_LIMITS, SPEED_RANGE
from ..text import is_blank, nothing_to_say
from .refusals import RequestRefused


def new_seed() -> int:
    """A random seed for requests without one; it is reported back so the audio can be reproduced."""
    return secrets.randbelow(2**31)


def check_seed(seed: Any) -> int:
    """``seed`` if it is an integer a stream's RNG accepts; else RequestRefused 400."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise RequestRefused(400, f"seed must be an integer in [0, {MAX_SEED}]", "invalid_seed", "seed")
    return seed


def check_timestamps(model, wanted: Any, param: str = "timestamps") -> bool:
    """``wanted`` as a bool, refused (400) when it is not one or the model's tokenizer gives no offsets."""
    if not isinstance(wanted, bool):
        raise RequestRefused(400, f"{param} must be true or false", "invalid_request_error", param)
    if wanted and not getattr(model.tokenizer, "is_fast", False):
        raise RequestRefused(
            400, "this model's tokenizer gives no character offsets, so no timestamps", "unsupported", param
        )
    return wanted


def check_first_chunk(value: Any, param: str = "min_first_chunk_ms") -> float | None:
    """A request's ``min_first_chunk_ms``: None (adaptive) or milliseconds; else RequestRefused 400."""
    try:
        return check_min_first_chunk_ms(value)
    except GenerationInputError as exc:
        raise RequestRefused(400, str(exc), "invalid_first_chunk", param) from None


def check_text(text: str, param: str = "input") -> str:
    """A whole text: ``text`` if it has something to say and a tokenizer can read it; else RequestRefused 400."""
    if is_blank(text):
        raise RequestRefused(400, nothing_to_say(param, "send the words to speak"), "empty_input", param)
    return check_piece(text, param)


def check_piece(text: str, param: str = "input") -> str:
    """A piece of a text still arriving: ``text`` if a tokenizer can read it (see :func:`check_encodable`);
    else RequestRefused 400. Whether the whole has something to say is known only at its end."""
    try:
        check_encodable(text)
    except GenerationInputError as exc:
        raise RequestRefused(400, str(exc), "invalid_input", param) from None
    return text


def input_error(exc: GenerationInputError, param: str = "input") -> RequestRefused:
    """A generation's refusal of its text, in the words of a request's fields (400)."""
    if isinstance(exc, EmptyTextError):
        return RequestRefused(400, nothing_to_say(f"the {param}", "send the words to speak"), "empty_input", param)
    if isinstance(exc, TextTooLongError):
        message = (
            f"the {param} is too long for one streamed generation ({exc.positions} positions with the voice prompt,"
            f" the model allows {exc.limit}): send it over several requests"
        )
        return RequestRefused(400, message, "input_too_long", param)
    return RequestRefused(400, str(exc), "invalid_input", param)


def inference_options(options: dict[str, Any] | None, speed: float | None, model) -> InferenceOptions:
    """Build validated InferenceOptions from a request's ``options`` and ``speed``.

    ``speed`` maps to ``speed_up_factor`` (1.0 means unchanged); note that any other value makes
    generation run two LLM passes (the first settles durations), roughly doubling time to first audio.
    """
    options = dict(options or {})
    known = {f.name for f in dataclasses.fields(InferenceOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise RequestRefused(
            400,
            f"unknown option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}",
            "invalid_option",
            "options",
        )
    for name, cap in OPTION_LIMITS.items():
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value > cap):
            raise RequestRefused(400, f"{name} must be an integer <= {cap} on this server", "invalid_option", name)
    low, high = SPEED_RANGE
    if speed is not None:
        if isinstance(speed, bool) or not isinstance(speed, int | float) or not low <= speed <= high:
            raise RequestRefused(400, f"speed must be a number between {low} and {high}", "invalid_speed", "speed")
        if speed != 1.0:
            options["speed_up_factor"] = float(speed)
    factor = options.get("speed_up_factor")
    if factor is not None and (
        isinstance(factor, bool) or not isinstance(factor, int | float) or not low <= factor <= high
    ):
        message = f"speed_up_factor must be between {low} and {high}"
        raise RequestRefused(400, message, "invalid_option", "speed_up_factor")
    if options.get("scorer") == "spkr_verification" and model.acoustic_spkr_verf is None:
        raise RequestRefused(400, "scorer 'spkr_verification' is not loaded on this server", "invalid_option", "scorer")
    try:
        return InferenceOptions(**options).validate()
    except (GenerationInputError, TypeError) as exc:
        raise RequestRefused(400, f"invalid options: {exc}", "invalid_option", "options") from None


def check_input_length(length: int, limit: int, param: str = "input") -> None:
    """Refuse a text of ``length`` characters (so far, for one still arriving) past the front end's
    ``limit`` (RequestRefused 400 ``input_too_long``), before it reaches the model."""
    if length > limit:
        raise RequestRefused(
            400,
            f"the {param} is {length} characters; the limit is {limit}: send the rest in another request",
            "input_too_long",
            param,
        )


def speech_request(
    text: Text,
    voice: Any,
    options: InferenceOptions,
    seed: int,
    min_first_chunk_ms: float | None = None,
    param: str = "input",
) -> SpeechRequest:
    """The :class:`~tadastream.generation.SpeechRequest` of a request whose fields were checked one
    by one; whatever it still refuses is a RequestRefused 400 in the words of ``param``."""
    try:
        return SpeechRequest(text, voice=voice, options=options, seed=seed, min_first_chunk_ms=min_first_chunk_ms)
    except GenerationInputError as exc:
        raise input_error(exc, param) from None
