"""Exact word and character times, read from the durations the model gave each token.

TADA places every text token's acoustic vector at one frame of the decoder's input, after its
``time_before`` frames: a token is heard from its vector's frame until the next token's. So the
times need no aligner and no estimate: they are sums of integer durations, after the leading trim
(:func:`~tadastream.generation.outputs.leading_trim_frames`), at 480 samples per frame, and with
``speed_up_factor`` they are those of the durations actually spoken.

Words are the word units of the text as the user wrote it (normalisation is mapped back, see
:class:`~tadastream.text.MappedText`): whitespace-separated runs, and in Chinese and Japanese the
phrases a reader would recognise (:func:`~tadastream.scripts.word_units`); a unit without a letter
or digit (a dash, an ellipsis) joins the word before it, and a token that spans two units joins them
(times are exact at token resolution, never interpolated). Words tile the audio: the first starts
at 0 (the lead-in before its first sound is part of it), each ends where the next begins (a pause
belongs to the word before it), and the last ends with the audio. Characters share their token's
time evenly; token boundaries are exact. Times are in seconds of the output audio; offsets index the
user's text (code points).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .config import SAMPLE_RATE, SAMPLES_PER_FRAME, leading_trim_frames
from .scripts import unit_at
from .text import MappedText, model_text_mapped

__all__ = ["CharTiming", "TextTokens", "WordClock", "WordTiming", "token_spans", "words_heard"]


@dataclass(frozen=True)
class WordTiming:
    """A word as written (``text[char_start:char_end]``) and when it is heard, in seconds."""

    word: str
    start: float
    end: float
    char_start: int
    char_end: int

    def to_dict(self) -> dict:
        return asdict(self)

    def shifted(self, seconds: float, chars: int) -> WordTiming:
        """This word ``seconds`` later and ``chars`` further on in a longer text."""
        return replace(
            self,
            start=_later(self.start, seconds),
            end=_later(self.end, seconds),
            char_start=self.char_start + chars,
            char_end=self.char_end + chars,
        )


@dataclass(frozen=True)
class CharTiming:
    """One character of the text (``index`` into it) and when it is heard, in seconds."""

    char: str
    start: float
    end: float
    index: int

    def to_dict(self) -> dict:
        return asdict(self)

    def shifted(self, seconds: float, chars: int) -> CharTiming:
        return replace(self, start=_later(self.start, seconds), end=_later(self.end, seconds), index=self.index + chars)


def _later(time: float, seconds: float) -> float:
    """A sum of times, rounded to the microsecond so joined segments do not show float dust."""
    return round(time + seconds, 6)


def words_heard(words: list[WordTiming], seconds: float) -> list[WordTiming]:
    """The words a listener heard when playback stopped after ``seconds``: those begun by then, the
    last one cut at that moment (what an interrupted agent should keep, or subtitles of a cut file)."""
    heard = [w for w in words if w.start < seconds]
    if heard and heard[-1].end > seconds:
        heard[-1] = replace(heard[-1], end=seconds)
    return heard


def token_spans(tokenizer, prompt_text: str, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """Where each of ``ids`` (the new text's ids, as :func:`~tadastream.text.tokenize_joint` made
    them) lies in ``text``: (start, end) character offsets. Needs a fast tokenizer (offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("word timestamps need a fast tokenizer (a tokenizer.json); this one gives no offsets")
    lead, body, prompt = len(text) - len(text.lstrip()), text.strip(), prompt_text.rstrip()
    tries = [(prompt + " " + body, len(prompt) + 1), (" " + body, 1)] if prompt else [(body, 0)]
    for string, base in tries:
        encoded = tokenizer(string, add_special_tokens=False, return_offsets_mapping=True)
        got = list(encoded["input_ids"])
        if len(got) >= len(ids) and got[len(got) - len(ids) :] == list(ids):
            offsets = encoded["offset_mapping"][len(got) - len(ids) :]
            return [(max(a - base, 0) + lead, max(b - base, 0) + lead) for a, b in offsets]
    raise RuntimeError("could not find the text's tokens in its own tokenization; please report this text")


def _source_span(mapped: MappedText, start: int, end: int) -> tuple[int, int] | None:
    """The user's characters behind ``mapped[start:end]``, whitespace left out; None if only whitespace."""
    sources = [mapped.origin[i] for i in range(start, min(end, len(mapped))) if not mapped[i].isspace()]
    return (min(sources), max(sources) + 1) if sources else None


class TextTokens:
    """Which characters of the user's text each new-text token speaks.

    For a whole string it is worked out once; for text arriving in pieces
    (:class:`~tadastream.text.IncrementalText`) from the part whose tokens are settled, again
    whenever more of them are asked for than were known.
    """

    def __init__(
        self,
        tokenizer,
        prompt_text: str,
        *,
        text: str | None = None,
        ids=None,
        incremental=None,
        normalize: bool = True,
    ):
        self.tokenizer, self.prompt_text, self.normalize = tokenizer, prompt_text or "", normalize
        self.incremental = incremental
        self._text = text or ""
        self._spans: list[tuple[int, int] | None] = []
        if incremental is None:
            self._spans = self._work_out(self._text, list(ids or []))

    @property
    def text(self) -> str:
        """The user's text so far."""
        return self.incremental.raw if self.incremental is not None else self._text

    def _work_out(self, raw: str, ids: list[int]) -> list[tuple[int, int] | None]:
        if not ids:
            return []
        mapped = model_text_mapped(raw, self.normalize)
        return [_source_span(mapped, a, b) for a, b in token_spans(self.tokenizer, self.prompt_text, mapped, ids)]

    @property
    def count(self) -> int:
        """Tokens of the new text known so far."""
        return len(self.incremental.released) if self.incremental is not None else len(self._spans)

    def span(self, j: int) -> tuple[int, int] | None:
        """Characters of token ``j`` of the new text (None for a token of whitespace alone)."""
        if j >= len(self._spans) and self.incremental is not None:
            inc = self.incremental
            self._spans = self._work_out(inc.raw[: inc.settled], list(inc.released))
        return self._spans[j] if j < len(self._spans) else None


def _has_word_char(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


class _Word:
    """A word being timed: its characters, and its tokens' (start sample, characters) so far."""

    def __init__(self, char_start: int, char_end: int, start: int, spoken: bool):
        self.char_start, self.char_end, self.start, self.spoken = char_start, char_end, start, spoken
        self.tokens: list[tuple[int, tuple[int, int] | None]] = []


class WordClock:
    """Times the words of one generation as its frames settle.

    ``add(index, time_before)`` takes every decoded frame (from ``plan.decode_start``, in order) and
    returns the words that became complete: a word is complete once the next word's first token is
    placed. ``finish(total_samples)`` completes the last one. ``words`` and ``characters`` hold all
    so far.
    """

    def __init__(
        self, plan, tokens: TextTokens, sample_rate: int = SAMPLE_RATE, samples_per_frame: int = SAMPLES_PER_FRAME
    ):
        self.tokens = tokens
        self.decode_start = plan.decode_start
        self.first_text_index = len(plan.head_ids) - 1  # frame i speaks input token i + 1
        self.sample_rate, self.samples_per_frame = sample_rate, samples_per_frame
        self.words: list[WordTiming] = []
        self.characters: list[CharTiming] = []
        self._frames = 0  # decoder input frames so far, from the first decoded one
        self._trim = 0
        self._current: _Word | None = None

    def add(self, index: int, time_before: int) -> list[WordTiming]:
        if index < self.decode_start:
            return []
        if index == self.decode_start:
            self._trim = leading_trim_frames(time_before)
        self._frames += max(int(time_before), 1)  # a vector takes its frame even after a gap of 0
        j = index - self.first_text_index
        if not 0 <= j < self.tokens.count:
            return []  # the header's last token, or the end-of-text ones: the last word lasts to the end
        onset = max(0, self._frames - 1 - self._trim) * self.samples_per_frame
        return self._place(onset, self.tokens.span(j))

    def _place(self, onset: int, span: tuple[int, int] | None) -> list[WordTiming]:
        done: list[WordTiming] = []
        word = self._current
        if span is None:  # whitespace alone: part of the word it follows
            if word is not None:
                word.tokens.append((onset, None))
            return done
        text = self.tokens.text
        run = unit_at(text, span[0])
        if word is None:
            word = self._current = _Word(run[0], run[1], 0, _has_word_char(text[run[0] : run[1]]))
        elif run[0] >= word.char_end:  # a new run of the text
            spoken = _has_word_char(text[run[0] : run[1]])
            if spoken and word.spoken:
                done.append(self._complete(word, onset))
                word = self._current = _Word(run[0], run[1], onset, True)
            else:  # punctuation alone joins the word before; a leading one, the word after
                word.char_end, word.spoken = run[1], word.spoken or spoken
        word.char_end = max(word.char_end, unit_at(text, span[1] - 1)[1])
        word.tokens.append((onset, span))
        return done

    @classmethod
    def of(cls, plan, tokenizer) -> WordClock | None:
        """A clock for ``plan``, or None when the tokenizer cannot say where its tokens lie."""
        if not getattr(tokenizer, "is_fast", False):
            return None
        return cls(plan, plan.text_tokens(tokenizer))

    def replay(self, time_before: list[int], total_samples: int) -> WordClock:
        """Time a whole utterance at once: ``time_before`` of every decoded frame from ``decode_start``."""
        for k, before in enumerate(time_before):
            self.add(self.decode_start + k, before)
        self.finish(total_samples)
        return self

    def finish(self, total_samples: int) -> list[WordTiming]:
        """The audio ended after ``total_samples``: the last word ends there."""
        if self._current is None:
            return []
        return [self._complete(self._current, max(int(total_samples), self._current.start))]

    def _complete(self, word: _Word, end: int) -> WordTiming:
        text, rate = self.tokens.text, self.sample_rate
        timing = WordTiming(
            text[word.char_start : word.char_end], word.start / rate, end / rate, word.char_start, word.char_end
        )
        self.words.append(timing)
        self._time_characters(word, end)
        self._current = None
        return timing

    def _time_characters(self, word: _Word, end: int) -> None:
        """Each token's time shared evenly by its characters; tokens that split one character (an
        emoji is several byte tokens) give it their time together."""
        text, rate = self.tokens.text, self.sample_rate
        groups: list[tuple[int, tuple[int, int]]] = []  # (start sample, characters) per distinct span
        for k, (onset, span) in enumerate(word.tokens):
            start = word.start if k == 0 else onset
            if span is not None and (not groups or span != groups[-1][1]):
                groups.append((start, span))
        stops = [start for start, _ in groups[1:]] + [end]
        taken = word.char_start
        for (start, span), stop in zip(groups, stops):
            chars = [i for i in range(max(span[0], taken), span[1]) if not text[i].isspace()]
            taken = max(taken, span[1])
            for n, i in enumerate(chars):
                a = start + (stop - start) * n / len(chars)
                b = start + (stop - start) * (n + 1) / len(chars)
                self.characters.append(CharTiming(text[i], a / rate, b / rate, i))
