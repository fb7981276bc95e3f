"""Long text into segments one generation speaks well: sentences, then clauses, never inside a word.

Narration reads whole documents, far past what one generation holds (its context, and the
length at which a single pass stays reliable). :func:`split_text` cuts a text into segments of
at most ``max_chars``: whole sentences packed together where they fit, a long sentence at its
clauses (``, ; : -``), a long clause between words. A word longer than ``max_chars`` stays whole.
Sentence ends skip abbreviations (``Dr.``, ``e.g.``), initials (``J. R. R.``), decimals
(``3.14``) and a mark followed by a lower-case word (``"Is it?" she asked``), and keep closing
quotes and brackets with their sentence. Each segment says how
much silence should follow it: a paragraph break (a blank line) gets a longer pause than a
sentence end, and a cut inside a sentence none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CLAUSE_PAUSE", "PARAGRAPH_PAUSE", "SENTENCE_PAUSE", "Segment", "split_text"]

#: Seconds of silence added after a segment, by how it ends. Within one generation the model makes
#: its own pauses; these stand in for them at the joins (its leading silence is trimmed there).
PARAGRAPH_PAUSE = 0.5
SENTENCE_PAUSE = 0.12
CLAUSE_PAUSE = 0.0

#: Abbreviations whose period does not end a sentence (compared lower-case, without the period).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al approx dept est fig figs inc ltd co corp no nos vol"
    " vols ch sec gen col lt sgt capt rev hon jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_SENTENCE_END = re.compile(r"""[.!?…]+["'”’»)\]]*(?=\s|$)""")
_CLAUSE_END = re.compile(r"""[,;:]["'”’)\]]*(?=\s)|\s[-–—]+(?=\s)""")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


@dataclass(frozen=True)
class Segment:
    """One piece of a long text, and the seconds of silence that follow it when spoken."""

    text: str
    pause_after: float


def split_text(text: str, max_chars: int = 400) -> list[Segment]:
    """Cut ``text`` into segments of at most ``max_chars`` characters (see the module docstring).

    Whitespace inside a segment is kept as written except at its ends; empty paragraphs vanish.
    The last segment's ``pause_after`` is 0.
    """
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 20:
        raise ValueError(f"max_chars must be an integer >= 20, got {max_chars!r}")
    segments: list[Segment] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        pieces = _pack(_sentences(paragraph.strip()), max_chars)
        if not pieces:
            continue
        if segments:  # the previous paragraph's last segment ends the paragraph
            segments[-1] = Segment(segments[-1].text, PARAGRAPH_PAUSE)
        segments.extend(pieces)
    if segments:
        segments[-1] = Segment(segments[-1].text, 0.0)
    return segments


def _sentences(paragraph: str) -> list[str]:
    """The paragraph's sentences, each with its closing punctuation and quotes."""
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(paragraph):
        if match.group().startswith(".") and _is_abbreviation(paragraph, match.start()):
            continue
        following = paragraph[match.end() :].lstrip()[:1]
        if following.islower():  # '"Is it?" she asked.' goes on
            continue
        sentence = paragraph[start : match.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    rest = paragraph[start:].strip()
    return sentences + ([rest] if rest else [])


def _is_abbreviation(text: str, period: int) -> bool:
    """Whether the period at ``period`` closes an abbreviation or an initial, not a sentence."""
    word = re.search(r"[\w.]*$", text[:period]).group()
    if not word:
        return False
    if len(word) == 1 and word.isalpha() and word.isupper():  # an initial: "J. Smith"
        return True
    return word.lower() in _ABBREVIATIONS


def _pack(sentences: list[str], max_chars: int) -> list[Segment]:
    """Sentences packed greedily into segments; a sentence too long is cut at clauses, then words."""
    segments: list[Segment] = []
    current = ""
    for sentence in sentences:
        if len(sentence) > max_chars:
            if current:
                segments.append(Segment(current, SENTENCE_PAUSE))
                current = ""
            parts = _cut(sentence, max_chars)
            segments.extend(Segment(p, CLAUSE_PAUSE) for p in parts[:-1])
            segments.append(Segment(parts[-1], SENTENCE_PAUSE))
        elif current and len(current) + 1 + len(sentence) > max_chars:
            segments.append(Segment(current, SENTENCE_PAUSE))
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        segments.append(Segment(current, SENTENCE_PAUSE))
    return segments


def _cut(sentence: str, max_chars: int) -> list[str]:
    """A sentence longer than ``max_chars`` in pieces: at clause ends where they fit, else between words."""
    bounds = [m.end() for m in _CLAUSE_END.finditer(sentence)] + [len(sentence)]
    clauses, start = [], 0
    for end in bounds:
        clause = sentence[start:end].strip()
        if clause:
            clauses.append(clause)
        start = end
    pieces: list[str] = []
    for clause in clauses:
        units = [clause] if len(clause) <= max_chars else clause.split()
        for unit in units:
            if pieces and len(pieces[-1]) + 1 + len(unit) <= max_chars:
                pieces[-1] = f"{pieces[-1]} {unit}"
            else:
                pieces.append(unit)
    return pieces
