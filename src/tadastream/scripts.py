"""Writing systems: what a character is to the model, to a reader and to a screen.

Three questions every front end asks of text as people write it:

- *Can the model voice it?* Emoji, pictographs, dingbats, arrows, invisible format characters
  (zero-width spaces, bidi marks, joiners, variation selectors) and control characters cannot be
  spoken: :func:`unvoiced` says which, and the text layer leaves them out of what the model sees.
- *Where are the words?* Scripts with spaces have them between words; Chinese and Japanese do not,
  so :func:`word_units` asks BudouX (Google's phrase segmenter, Apache-2.0, ~360 KB, no
  dependencies) for the phrases a reader would recognise, and falls back to single characters
  where it is not installed.
- *How wide is it?* Full-width characters take two columns (:func:`display_width`), which subtitles
  and segment lengths count.

Grapheme clusters (an emoji with its modifiers, a letter with its accents) are never cut:
:func:`grapheme_bounds` gives the places where a cut is allowed.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

import regex

__all__ = [
    "LANGUAGES",
    "LANGUAGE_SCRIPTS",
    "canonical_language",
    "script_warning",
    "display_width",
    "grapheme_bounds",
    "is_wide",
    "scripts_of",
    "spaceless",
    "unvoiced",
    "unit_at",
    "unsupported_scripts",
    "word_units",
]

# Symbols a reader would say aloud are kept (degree, numero, the math operators); the rest of the
# symbol categories are pictures.
_VOICED_SYMBOLS = frozenset("°№℃℉")
_UNVOICED_RANGES = (
    (0x2190, 0x21FF),  # arrows (partly "math symbol")
    (0x27F0, 0x27FF),  # supplemental arrows A
    (0x2900, 0x297F),  # supplemental arrows B
    (0xFE00, 0xFE0F),  # variation selectors (emoji vs text presentation)
    (0xE0100, 0xE01EF),  # variation selectors supplement
)
_BULLETS = frozenset("•‣⁃∙")
_WHITESPACE_CONTROLS = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x1f\x85")


def unvoiced(ch: str) -> bool:
    """Whether the model cannot voice the character ``ch``: a picture, an invisible format mark or
    a control character. Letters, digits, punctuation, currency and math signs are voiced."""
    if ch.isascii():
        return ch < " " and ch not in _WHITESPACE_CONTROLS or ch == "\x7f"
    if ch in _VOICED_SYMBOLS:
        return False
    category = unicodedata.category(ch)
    if category in ("So", "Sk", "Cf", "Co", "Cn", "Me") or ch in _BULLETS:
        return True
    if category == "Cc":
        return ch not in _WHITESPACE_CONTROLS
    code = ord(ch)
    return any(low <= code <= high for low, high in _UNVOICED_RANGES)


def is_wide(ch: str) -> bool:
    """Whether ``ch`` takes two columns (East Asian wide or full-width)."""
    return unicodedata.east_asian_width(ch) in ("W", "F")


def display_width(text: str) -> int:
    """Columns ``text`` takes on a screen: full-width characters count two, combining marks none."""
    return sum(2 if is_wide(ch) else 0 if unicodedata.combining(ch) else 1 for ch in text)


_GRAPHEME = regex.compile(r"\X")


def grapheme_bounds(text: str) -> list[int]:
    """Offsets in ``text`` between grapheme clusters (0 and ``len(text)`` included)."""
    return [0] + [m.end() for m in _GRAPHEME.finditer(text)]


# -- scripts -----------------------------------------------------------------------------------
_SCRIPTS = {
    name: regex.compile(rf"\p{{Script={name}}}")
    for name in (
        "Latin",
        "Arabic",
        "Han",
        "Hiragana",
        "Katakana",
        "Hangul",
        "Cyrillic",
        "Greek",
        "Hebrew",
        "Devanagari",
        "Thai",
        "Armenian",
        "Georgian",
        "Bengali",
        "Tamil",
        "Ethiopic",
    )
}
_ANY_SCRIPT_LETTER = regex.compile(r"[\p{L}--\p{Script=Common}--\p{Script=Inherited}]", regex.V1)

#: The languages TADA-3B-ML speaks (ISO 639-1 codes); TADA-1B speaks English.
LANGUAGES = ("en", "ar", "zh", "de", "es", "fr", "it", "ja", "pl", "pt")
_LANGUAGE_ALIASES = {"english": "en", "ch": "zh"}  # "ch": the codec's folder name for Chinese


def canonical_language(name: str) -> str:
    """``name`` as one of :data:`LANGUAGES` (``ch``, the codec's name for Chinese, is ``zh``)."""
    lang = str(name).strip().lower()
    lang = _LANGUAGE_ALIASES.get(lang, lang)
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {name!r}; use one of {', '.join(LANGUAGES)}")
    return lang


def script_warning(text: str, languages: Iterable[str]) -> str | None:
    """A one-line warning when ``text`` has letters of a script none of ``languages`` is written in."""
    languages = list(languages)
    missing = unsupported_scripts(text, languages)
    if not missing:
        return None
    return (
        f"the text has {', '.join(missing)} letters, which this checkpoint was not trained on (it speaks"
        f" {', '.join(languages)}): expect garbled speech"
    )


#: The scripts each language of TADA-3B-ML is written in.
LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    **{lang: frozenset({"Latin"}) for lang in ("en", "de", "es", "fr", "it", "pl", "pt")},
    "ar": frozenset({"Arabic"}),
    "zh": frozenset({"Han"}),
    "ja": frozenset({"Han", "Hiragana", "Katakana"}),
}


def scripts_of(text: str) -> set[str]:
    """The scripts of the letters in ``text`` (``"Other"`` for one not named here)."""
    found: set[str] = set()
    for ch in set(text):
        if not ch.isalpha():
            continue
        name = next((n for n, pattern in _SCRIPTS.items() if pattern.match(ch)), None)
        if name is None and _ANY_SCRIPT_LETTER.match(ch):
            name = "Other"
        if name is not None:
            found.add(name)
    return found


def unsupported_scripts(text: str, languages: Iterable[str]) -> list[str]:
    """Scripts of ``text`` that none of ``languages`` is written in, sorted (empty: all covered)."""
    known: set[str] = set()
    for lang in languages:
        known |= LANGUAGE_SCRIPTS.get(lang, frozenset())
    return sorted(scripts_of(text) - known)


# -- word units --------------------------------------------------------------------------------
_SPACELESS = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}]")
_KANA = regex.compile(r"[\p{Hiragana}\p{Katakana}]")
_THAI = regex.compile(r"\p{Thai}")


def spaceless(text: str) -> bool:
    """Whether ``text`` holds characters of a script written without spaces between words."""
    return bool(_SPACELESS.search(text))


@functools.cache
def _parser(kind: str):
    """BudouX's phrase parser for ``kind`` (ja, zh, th), or None where BudouX is not installed."""
    try:
        import budoux
    except ImportError:
        return None
    load = {
        "ja": budoux.load_default_japanese_parser,
        "zh": budoux.load_default_simplified_chinese_parser,
        "th": budoux.load_default_thai_parser,
    }[kind]
    return load()


def _phrase_ends(run: str) -> list[int]:
    """Offsets in ``run`` (a whitespace-free string with spaceless-script characters) where a phrase
    ends, the last one ``len(run)``. Letters or digits of other scripts are never cut apart
    (``2026年`` stays one phrase with what follows, ``abc`` one word)."""
    kind = "ja" if _KANA.search(run) else "th" if _THAI.search(run) else "zh"
    parser = _parser(kind)
    if parser is not None:
        ends, at = [], 0
        for phrase in parser.parse(run):
            at += len(phrase)
            ends.append(at)
    else:  # a character a unit: still exact, just finer than a reader's words
        ends = grapheme_bounds(run)[1:]
    kept = []
    for end in ends:
        before, after = run[end - 1 : end], run[end : end + 1]
        joined = before.isalnum() and after.isalnum() and not _SPACELESS.match(before) and not _SPACELESS.match(after)
        if end == len(run) or not joined:
            kept.append(end)
    return kept


@functools.lru_cache(maxsize=256)
def _run_units(run: str) -> tuple[tuple[int, int], ...]:
    if not spaceless(run):
        return ((0, len(run)),)
    units, start = [], 0
    for end in _phrase_ends(run):
        if end > start:
            units.append((start, end))
            start = end
    return tuple(units)


_RUN = re.compile(r"\S+")  # \S as str.isspace sees it (regex.\s leaves out \x1c-\x1f)


def unit_at(text: str, index: int) -> tuple[int, int]:
    """The word unit of ``text`` holding character ``index`` (for whitespace, that character alone)."""
    if text[index].isspace():
        return index, index + 1
    start, end = index, index + 1
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    for a, b in _run_units(text[start:end]):
        if a <= index - start < b:
            return start + a, start + b
    raise AssertionError("word units cover their run")


def word_units(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """The word units of ``text[start:end]`` as (start, end) offsets into ``text``, in order.

    A unit is a whitespace-free run; a run holding Chinese, Japanese or Thai is cut further into
    phrases. Units never hold whitespace and together cover every other character.
    """
    units = []
    for match in _RUN.finditer(text, start, len(text) if end is None else end):
        base = match.start()
        units.extend((base + a, base + b) for a, b in _run_units(match.group()))
    return units
