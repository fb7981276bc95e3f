"""Generation options, with the reference's (hume-tada 0.1.9) defaults, validated before any work."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal

from ..limits import FLOAT_RANGES, MAX_FIRST_CHUNK_MS
from ..text import is_blank, nothing_to_say, unpaired_surrogate


class GenerationInputError(ValueError):
    """Bad input to generate(); the message says how to fix it."""


class TextTooLongError(GenerationInputError):
    """The text does not fit one generation; long-form generation (segments) speaks it.

    ``positions`` the text needs with the voice prompt, ``limit`` the model's: front ends word
    their own advice from them.
    """

    def __init__(self, positions: int, limit: int):
        super().__init__(
            f"text too long for one generation: {positions} positions with the voice prompt, the model allows"
            f" {limit}; speak it in segments (long form)"
        )
        self.positions, self.limit = positions, limit


class EmptyTextError(GenerationInputError):
    """The text has nothing to speak: empty, or only whitespace, punctuation, emoji and symbols."""


def check_speakable(text: str) -> None:
    """Refuse text without a letter or digit (:class:`EmptyTextError`), before any work."""
    if is_blank(text):
        raise EmptyTextError(nothing_to_say())


def check_encodable(text: str) -> None:
    """Refuse text no tokenizer can read (a lone surrogate, e.g. JSON's ``"\\ud800"``)."""
    at = unpaired_surrogate(text)
    if at is not None:
        raise GenerationInputError(
            f"text holds an unpaired UTF-16 surrogate at character {at}: send valid Unicode (UTF-8) text"
        )


def check_min_first_chunk_ms(value: object) -> float | None:
    """``value`` as a number of milliseconds, or None (adaptive); GenerationInputError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise GenerationInputError(f"min_first_chunk_ms must be a number of milliseconds or None, got {value!r:.40}")
    if not 0 <= value <= MAX_FIRST_CHUNK_MS:  # compared as given: NaN fails, and no int is too large to float
        raise GenerationInputError(
            f"min_first_chunk_ms must be between 0 and {MAX_FIRST_CHUNK_MS:g} (or None: adaptive), got {value!r:.40}"
        )
    return float(value)


@dataclass
class InferenceOptions:
    text_do_sample: bool = True
    text_temperature: float = 0.6
    text_top_k: int = 0
    text_top_p: float = 0.9
    text_repetition_penalty: float = 1.1
    acoustic_cfg_scale: float = 1.6
    duration_cfg_scale: float = 1.0
    cfg_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    noise_temperature: float = 0.9
    num_flow_matching_steps: int = 10
    time_schedule: Literal["uniform", "cosine", "logsnr"] = "logsnr"
    num_acoustic_candidates: int = 1
    scorer: Literal["spkr_verification", "likelihood", "duration_median"] = "likelihood"
    spkr_verification_weight: float = 1.0
    speed_up_factor: float | None = None
    negative_condition_source: Literal["negative_step_output", "prompt", "zero"] = "negative_step_output"
    text_only_logit_scale: float = 0.0

    _CHOICES = {
        "cfg_schedule": ("constant", "linear", "cosine"),
        "time_schedule": ("uniform", "cosine", "logsnr"),
        "scorer": ("spkr_verification", "likelihood", "duration_median"),
        "negative_condition_source": ("negative_step_output", "prompt", "zero"),
    }

    #: Fields by kind, and the range a float may take (beyond it the noise or the guidance overflows
    #: to inf/NaN mid-generation instead of failing here).
    _BOOLS = ("text_do_sample",)
    _INTS = ("text_top_k", "num_flow_matching_steps", "num_acoustic_candidates")
    _FLOAT_RANGES = FLOAT_RANGES

    def _check_types(self) -> None:
        for name in self._BOOLS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise GenerationInputError(f"{name} must be true or false, got {value!r}")
        for name in self._INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise GenerationInputError(f"{name} must be an integer, got {value!r}")
        for name, (low, high) in self._FLOAT_RANGES.items():
            value = getattr(self, name)
            if value is None and name == "speed_up_factor":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise GenerationInputError(f"{name} must be a number, got {value!r}")
            if not low <= value <= high:  # NaN fails this too
                raise GenerationInputError(f"{name}={value!r} is outside [{low:g}, {high:g}]")

    def validate(self) -> InferenceOptions:
        self._check_types()
        for name, allowed in self._CHOICES.items():
            if getattr(self, name) not in allowed:
                raise GenerationInputError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.num_flow_matching_steps < 1 or self.num_acoustic_candidates < 1:
            raise GenerationInputError("num_flow_matching_steps and num_acoustic_candidates must be at least 1")
        if self.text_do_sample and self.text_temperature <= 0:
            raise GenerationInputError("text_temperature must be > 0 when text_do_sample is True")
        if not 0.0 <= self.text_top_p <= 1.0 or self.text_top_k < 0:
            raise GenerationInputError("text_top_p must be in [0, 1] and text_top_k >= 0")
        if self.noise_temperature < 0 or self.text_only_logit_scale < 0:
            raise GenerationInputError("noise_temperature and text_only_logit_scale must be >= 0")
        if self.speed_up_factor is not None and not self.speed_up_factor > 0:
            raise GenerationInputError("speed_up_factor must be a positive number (or None)")
        return self

    @property
    def guided(self) -> bool:
        """Whether each step runs a guidance row (classifier-free guidance on its own output)."""
        return self.acoustic_cfg_scale != 1.0 and self.negative_condition_source == "negative_step_output"

    @property
    def text_only(self) -> bool:
        """Whether each step runs a text-only row whose logits are mixed into the text sample."""
        return self.text_only_logit_scale > 0.0
