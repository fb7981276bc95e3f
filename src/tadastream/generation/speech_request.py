"""What to speak, as one typed value: :class:`SpeechRequest`, checked when it is made.

Every front end (``generate()``, the command line, the server, Wyoming) builds one and hands it
down unchanged: the drivers and the planner read its fields, none of them re-checks or re-spells
them. :class:`TextLayout` holds the knobs that place the text in the LLM's input (hume-tada's
``generate()`` keywords of the same names).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

import torch

from ..limits import MAX_SEED
from .options import GenerationInputError, InferenceOptions, check_encodable, check_min_first_chunk_ms, check_speakable
from .rng import StreamRng
from .text_input import TextInput

if TYPE_CHECKING:
    from ..codec.encoder import EncoderOutput

__all__ = ["SEGMENT_CHARS", "SpeechRequest", "Text", "TextLayout"]

#: A whole text, or one still arriving: a :class:`TextInput` any thread fills, or an iterable or
#: async iterable of string pieces (characters, words, an LLM's tokens).
Text = Union[str, TextInput, Iterable[str], AsyncIterable[str]]  # noqa: UP007 - a runtime alias

#: Default longest long-form segment, in characters: a few sentences, so the first audio comes as
#: soon as for a short text, and each generation stays well inside what the model speaks reliably.
SEGMENT_CHARS = 400
#: The fewest characters a long-form segment may be cut to (a clause, at least).
MIN_SEGMENT_CHARS = 20


@dataclass(frozen=True)
class TextLayout:
    """Where the text sits in the LLM's input: the voice prompt's last ``num_transition_steps``
    frames are spoken anew, ``num_extra_steps`` steps run past the text (else end tokens close
    it), the Llama 3 chat turns carry ``system_prompt`` and ``user_turn_prompt``, and
    ``normalize_text`` rewrites the text as the model was trained to read it."""

    num_transition_steps: int = 5
    num_extra_steps: int = 0
    system_prompt: str | None = None
    user_turn_prompt: str | None = None
    use_text_in_prompt: bool = False
    normalize_text: bool = True

    def __post_init__(self) -> None:
        for name in ("num_transition_steps", "num_extra_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise GenerationInputError(f"{name} must be a whole number >= 0, got {value!r:.40}")
        for name in ("system_prompt", "user_turn_prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise GenerationInputError(f"{name} must be a string or None, got {type(value).__name__}")
        for name in ("use_text_in_prompt", "normalize_text"):
            if not isinstance(getattr(self, name), bool):
                raise GenerationInputError(f"{name} must be True or False, got {getattr(self, name)!r:.40}")


@dataclass(frozen=True)
class SpeechRequest:
    """One text to speak and everything that shapes it, checked on creation (a bad field raises
    :class:`GenerationInputError` whose message says how to fix it, before any model work).

    - ``text``: a string, or text still arriving (:data:`Text`); ``voice``: the encoded voice
      prompt (None: speak without one).
    - ``options``: sampling and flow matching (:class:`InferenceOptions`; speed is its
      ``speed_up_factor``), kept as a validated copy; ``layout``: :class:`TextLayout`.
    - ``seed``: the stream draws from generators seeded with it; None forks torch's global ones,
      so ``torch.manual_seed(s)`` before the call reproduces the reference.
    - ``long_form``: ``None`` speaks a string that does not fit one generation in segments of at
      most ``segment_chars`` characters, ``True`` always, ``False`` never.
    - ``min_first_chunk_ms``: how much audio a stream's first chunk holds (None: adaptive; see
      :class:`~tadastream.playback.FirstChunkHold`); ``window_size``: the most frames one
      streaming decoder call takes. Neither changes the audio.

    Word timestamps come with every result whose tokenizer gives character offsets; a front end
    decides whether to send them.
    """

    text: Text
    voice: EncoderOutput | None = None
    options: InferenceOptions = field(default_factory=InferenceOptions)
    layout: TextLayout = field(default_factory=TextLayout)
    seed: int | None = None
    long_form: bool | None = None
    segment_chars: int = SEGMENT_CHARS
    min_first_chunk_ms: float | None = None
    window_size: int = 100

    def __post_init__(self) -> None:
        _check_text(self.text, self.long_form)
        if not isinstance(self.options, InferenceOptions):
            raise GenerationInputError(f"options must be InferenceOptions, got {type(self.options).__name__}")
        if not isinstance(self.layout, TextLayout):
            raise GenerationInputError(f"layout must be a TextLayout, got {type(self.layout).__name__}")
        # a copy, so a caller changing its options afterwards cannot unsettle a running stream
        object.__setattr__(self, "options", dataclasses.replace(self.options).validate())
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED
        ):
            raise GenerationInputError(f"seed must be an integer in [0, {MAX_SEED}] or None, got {self.seed!r:.40}")
        if self.long_form is not None and not isinstance(self.long_form, bool):
            raise GenerationInputError(f"long_form must be True, False or None, got {self.long_form!r:.40}")
        chars = self.segment_chars
        if isinstance(chars, bool) or not isinstance(chars, int) or chars < MIN_SEGMENT_CHARS:
            raise GenerationInputError(
                f"segment_chars must be a whole number >= {MIN_SEGMENT_CHARS}, got {chars!r:.40}"
            )
        object.__setattr__(self, "min_first_chunk_ms", check_min_first_chunk_ms(self.min_first_chunk_ms))
        window = self.window_size
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise GenerationInputError(
                f"window_size (streaming_cnn_window_size) must be at least 1 frame, got {window!r:.40}"
            )

    def with_voice(self, voice: EncoderOutput | None) -> SpeechRequest:
        """This request in ``voice`` (known only once loaded or encoded), without checking the
        rest again; the plan checks the voice against the model."""
        speech = copy.copy(self)
        object.__setattr__(speech, "voice", voice)
        return speech

    @property
    def whole(self) -> bool:
        """The text is a string, known in full now (else it arrives in pieces)."""
        return isinstance(self.text, str)

    def rng(self, device: torch.device | str) -> StreamRng:
        """The generators this request draws from (a fresh fork of the global ones without a seed)."""
        return StreamRng.from_seed(self.seed, device) if self.seed is not None else StreamRng.fork_global(device)


def _check_text(text: object, long_form: bool | None) -> None:
    if isinstance(text, str):
        check_speakable(text)
        check_encodable(text)
        return
    if isinstance(text, bytes | bytearray):
        raise GenerationInputError("text is bytes: decode it to a string first (e.g. data.decode('utf-8'))")
    if not isinstance(text, TextInput) and not hasattr(text, "__iter__") and not hasattr(text, "__aiter__"):
        raise GenerationInputError(
            f"text must be a string, a TextInput, or an iterable / async iterable of string pieces, got"
            f" {type(text).__name__}"
        )
    if long_form:
        raise GenerationInputError("long_form=True needs the whole text as a string; pieces are one generation")
