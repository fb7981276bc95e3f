"""Long text into segments one generation speaks well: sentences, then clauses, never inside a word.

Narration reads whole documents, far past what one generation holds (its context, and the
length at which a single pass stays reliable). :func:`split_text` cuts a text into segments of
at most ``max_chars`` columns (a full-width character counts two: Chinese and Japanese carry about
twice the speech per character): whole sentences packed together where they fit, a long sentence
at its clauses, a long clause between words (between phrases in Chinese and Japanese, and where
a phrase is still too long, between characters). A grapheme cluster is never cut, nor a word of a
script written with spaces: such a word longer than a segment stays whole.

Every segment is a piece of the text (``text[start:end]``), in order, and together they hold every
letter and digit of it; a stretch with nothing to say (a ``* * *`` scene break, a line of emoji)
makes no segment. Text is read as laid out in files: a single line break inside a paragraph is
just a space, a blank line (LF, CRLF or CR endings alike) ends a paragraph, and a short line
between blank lines (a heading such as ``CHAPTER IV.`` or ``The Pool of Tears``) is a paragraph
of its own.

Sentence ends are ``. ! ? …`` and the full-width ``。！？．``, Arabic ``؟`` and Urdu ``۔``;
closing quotes and brackets (``” » 」 』``) stay with their sentence, and so do Spanish ``¿ ¡``
and French spacing (``Vraiment ?``, ``« Oui ! »``). A period is no sentence end after an
abbreviation (``Dr.``, ``z.B.``, ``np.``), an initial (``J. R. R.``), a decimal (``3.14``), or an
ordinal before a month or a noun that takes one (``3. Mai``, ``1. Kapitel``), nor is a mark
followed by a lower-case word (``"Is it?" she asked``). Clauses end at ``, ; :``, ``، ؛``, the
full-width ``、，；：`` and spaced dashes. Each segment says how much silence should follow it: a
paragraph break gets a longer pause than a sentence end, and a cut inside a sentence none.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import regex
import torch

from ..scripts import display_width, grapheme_bounds, spaceless, word_units
from ..text import is_blank

__all__ = [
    "CLAUSE_PAUSE",
    "FADE_SECONDS",
    "PARAGRAPH_PAUSE",
    "SENTENCE_PAUSE",
    "Joiner",
    "Segment",
    "sentences",
    "split_text",
]

#: Length of the fades at each join.
FADE_SECONDS = 0.005

#: Seconds of silence added after a segment, by how it ends. Within one generation the model makes
#: its own pauses; these stand in for them at the joins (its leading silence is trimmed there).
PARAGRAPH_PAUSE = 0.5
SENTENCE_PAUSE = 0.12
CLAUSE_PAUSE = 0.0

#: Abbreviations whose period does not end a sentence (compared lower-case, without the last period),
#: in the languages TADA speaks.
_ABBREVIATIONS = frozenset(
    # English
    "mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al approx dept est fig figs inc ltd co corp no nos vol"
    " vols ch sec gen col lt sgt capt rev hon jan feb mar apr jun jul aug sep sept oct nov dec"
    # German
    " z.b d.h u.a usw bzw ggf evtl vgl ca nr str hr fr abs bd jh jhd inkl zzt"
    # French, Italian, Spanish, Portuguese
    " mme mlle mm cf env p.ex av sig sigg dott ecc pag sra srta dña ud uds vd pág núm dra eng exa"
    # Polish
    " np tzw itd itp prof ul godz tj dz wg tys mln mld ok".split()
)
#: Words after a number and a period that make the number an ordinal (German and Polish dates and
#: chapters): ``am 3. Mai``, ``1. Kapitel``, ``2. maja`` (lower case continues anyway).
_ORDINAL_NOUNS = frozenset(
    "januar jänner februar märz april mai juni juli august september oktober november dezember"
    " kapitel jahrhundert jahrtausend klasse mal platz stock auflage teil band buch akt szene"
    " stycznia lutego marca kwietnia maja czerwca lipca sierpnia września października listopada grudnia"
    " rozdział wiek tom część".split()
)
_CLOSERS = "\"'”’»)\\]」』）】〕〉》›"
_SENTENCE_END = regex.compile(
    rf"""[.!?…‼⁇⁈⁉؟۔]+(?:[ \u00a0\u202f]*[»›])?[{_CLOSERS}]*(?=\s|$)"""  # needs whitespace after
    rf"""|[。！？．｡]+[{_CLOSERS}]*"""  # full-width: the next sentence follows at once
)
_CLAUSE_END = regex.compile(rf"""[,;:،؛]["'”’)\]»]*(?=\s)|\s[-–—]+(?=\s)|[、，；：､][{_CLOSERS}]*""")
_LINE = r"(?:\r\n|[\n\r\v\f\x85\u2028])"
_PARAGRAPH_BREAK = re.compile(rf"{_LINE}[^\S\r\n\v\f\x85\u2028\u2029]*{_LINE}|\u2029")
# What may stand between a sentence end and the next word: spaces, dashes, opening quotes, ¿ ¡.
_OPENERS = re.compile(r"""[\s"'“‘„«‹¿¡(\[\-–—]*""")


@dataclass(frozen=True)
class Segment:
    """One piece of a long text (``text == whole[start:end]``) and the seconds of silence that follow it."""

    text: str
    pause_after: float
    start: int
    end: int


def split_text(text: str, max_chars: int = 400) -> list[Segment]:
    """Cut ``text`` into segments of at most ``max_chars`` columns (see the module docstring).

    Each segment is ``text[start:end]``, whitespace inside it kept as written, none at its ends. The
    last segment's ``pause_after`` is 0.
    """
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 20:
        raise ValueError(f"max_chars must be an integer >= 20, got {max_chars!r}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    segments: list[Segment] = []
    for start, end in _paragraphs(text):
        pieces = [s for s in _pack(text, sentences(text, start, end), max_chars) if not is_blank(s.text)]
        if not pieces:
            continue
        if segments:  # the previous paragraph's last segment ends the paragraph
            segments[-1] = replace(segments[-1], pause_after=PARAGRAPH_PAUSE)
        segments.extend(pieces)
    if segments:
        segments[-1] = replace(segments[-1], pause_after=0.0)
    return segments


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _paragraphs(text: str) -> list[tuple[int, int]]:
    bounds, start = [], 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        bounds.append((start, match.start()))
        start = match.end()
    bounds.append((start, len(text)))
    return [span for a, b in bounds if (span := _trimmed(text, a, b))[0] < span[1]]


def sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The sentences of ``text[start:end]``, each with its closing punctuation and quotes."""
    sentences, begin = [], start
    for match in _SENTENCE_END.finditer(text, start, end):
        if match.group().startswith(".") and _is_abbreviation(text, start, match.start()):
            continue
        if _continues(text, match, end):
            continue
        span = _trimmed(text, begin, match.end())
        if span[0] < span[1]:
            sentences.append(span)
        begin = match.end()
    rest = _trimmed(text, begin, end)
    return sentences + ([rest] if rest[0] < rest[1] else [])


_WORD_BEFORE = re.compile(r"[\w.]*$")
_WORD_AFTER = re.compile(r"\s+(\w+)")


def _is_abbreviation(text: str, start: int, period: int) -> bool:
    """Whether the period at ``period`` closes an abbreviation, an initial or an ordinal, not a sentence."""
    word = _WORD_BEFORE.search(text, max(start, period - 40), period).group()
    if not word:
        return False
    if len(word) == 1 and word.isalpha():  # an initial ("J. Smith") or a one-letter abbreviation ("z. B.")
        return True
    if word.isdigit() and len(word) <= 3:
        after = _WORD_AFTER.match(text, period + 1)
        return bool(after) and after.group(1).lower() in _ORDINAL_NOUNS
    return word.lower() in _ABBREVIATIONS


def _continues(text: str, match: regex.Match, end: int) -> bool:
    """Whether the sentence goes on after this mark: a lower-case word follows ('"Is it?" she asked'),
    or in Japanese a particle follows a closing quote (「そうか！」と言った)."""
    after = _OPENERS.match(text, match.end(), end).end()
    following = text[after : after + 1]
    if following.islower():
        return True
    closed = match.group()[-1:] in _CLOSERS
    return closed and match.end() < end and "\u3041" <= text[match.end()] <= "\u309f"  # hiragana


def _width(text: str, start: int, end: int) -> int:
    return display_width(text[start:end])


def _pack(text: str, sentences: list[tuple[int, int]], max_chars: int) -> list[Segment]:
    """Sentences packed greedily into segments; a sentence too long is cut at clauses, then words."""
    segments: list[Segment] = []
    current: tuple[int, int] | None = None

    def flush(span: tuple[int, int] | None, pause: float) -> None:
        if span is not None:
            segments.append(Segment(text[span[0] : span[1]], pause, *span))

    for start, end in sentences:
        if _width(text, start, end) > max_chars:
            flush(current, SENTENCE_PAUSE)
            current = None
            parts = _cut(text, start, end, max_chars)
            for part in parts[:-1]:
                flush(part, CLAUSE_PAUSE)
            flush(parts[-1], SENTENCE_PAUSE)
        elif current is not None and _width(text, current[0], end) > max_chars:
            flush(current, SENTENCE_PAUSE)
            current = (start, end)
        else:
            current = (current[0] if current else start, end)
    flush(current, SENTENCE_PAUSE)
    return segments


def _cut(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """A sentence wider than ``max_chars`` in pieces: at clause ends where they fit, else between words."""
    bounds = [m.end() for m in _CLAUSE_END.finditer(text, start, end)] + [end]
    units: list[tuple[int, int]] = []
    begin = start
    for bound in bounds:
        clause = _trimmed(text, begin, bound)
        begin = bound
        if clause[0] >= clause[1]:
            continue
        if _width(text, *clause) <= max_chars:
            units.append(clause)
            continue
        for word in word_units(text, *clause):
            too_wide = _width(text, *word) > max_chars and spaceless(text[word[0] : word[1]])
            units.extend(_graphemes(text, *word, max_chars) if too_wide else [word])
    pieces: list[tuple[int, int]] = []
    for unit_start, unit_end in units:
        if pieces and _width(text, pieces[-1][0], unit_end) <= max_chars:
            pieces[-1] = (pieces[-1][0], unit_end)
        else:
            pieces.append((unit_start, unit_end))
    return pieces


def _graphemes(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """A phrase of a script without spaces wider than ``max_chars``, cut between grapheme clusters."""
    pieces: list[tuple[int, int]] = []
    piece_start = start
    bounds = [start + b for b in grapheme_bounds(text[start:end])]
    for prev, bound in zip(bounds, bounds[1:]):
        if bound > piece_start and prev > piece_start and _width(text, piece_start, bound) > max_chars:
            pieces.append((piece_start, prev))
            piece_start = prev
    pieces.append((piece_start, end))
    return pieces


class Joiner:
    """Joins segments' audio: fades each join and adds its pause; holds back only the last 5 ms
    of audio until it knows whether a join follows."""

    def __init__(self, sample_rate: int):
        n = max(1, round(FADE_SECONDS * sample_rate))
        ramp = torch.sin(torch.linspace(0.0, math.pi / 2, n + 2)[1:-1]) ** 2  # raised cosine, ends excluded
        self.fade_in, self.fade_out = ramp, ramp.flip(0)
        self.sample_rate = sample_rate
        self.tail = torch.zeros(0)
        self.faded = len(ramp)  # samples of the current segment already past its fade-in

    def start(self, fade_in: bool) -> None:
        self.faded = 0 if fade_in else len(self.fade_in)

    def add(self, chunk: torch.Tensor) -> torch.Tensor:
        if self.faded < len(self.fade_in):
            n = min(len(self.fade_in) - self.faded, chunk.numel())
            chunk = chunk.clone()
            chunk[:n] *= self.fade_in[self.faded : self.faded + n]
            self.faded += n
        joined = torch.cat([self.tail, chunk])
        keep = min(len(self.fade_out), joined.numel())
        self.tail = joined[joined.numel() - keep :]
        return joined[: joined.numel() - keep]

    def end(self, pause: float | None) -> torch.Tensor:
        """The held samples at a segment's end: faded, then ``pause`` seconds of silence (None: the very end)."""
        tail, self.tail = self.tail, torch.zeros(0)
        if pause is None:
            return tail
        tail = tail * self.fade_out[len(self.fade_out) - tail.numel() :]
        return torch.cat([tail, torch.zeros(round(pause * self.sample_rate))])
