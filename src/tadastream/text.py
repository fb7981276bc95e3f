"""Text clean-up applied before tokenization.

TADA was trained on text that went through a specific normalization, so the model reads
prompts best when new text gets exactly the same treatment. :func:`normalize_text`
reproduces the observable behaviour of the reference ``normalize_text`` of hume-tada 0.1.9,
including its quirks (a single pass for double spaces, "; " becoming a sentence end, ...):
changing any rule changes what the model hears.
"""

from __future__ import annotations

import re

__all__ = ["is_blank", "normalize_text"]

# Stage 1: typographic punctuation to its ASCII spelling, one character at a time.
_TYPOGRAPHIC = str.maketrans(
    {
        "\u201c": '"',  # left double quotation mark
        "\u201d": '"',  # right double quotation mark
        "\u201e": '"',  # double low-9 quotation mark
        "\u201f": '"',  # double high-reversed-9 quotation mark
        "\u2018": "'",  # left single quotation mark
        "\u2019": "'",  # right single quotation mark
        "\u201a": "'",  # single low-9 quotation mark
        "\u201b": "'",  # single high-reversed-9 quotation mark
        "\u2010": "-",  # hyphen
        "\u2011": "-",  # non-breaking hyphen
        "\u2013": "-",  # en dash
        "\u2014": "-",  # em dash
        "\u2015": "-",  # horizontal bar
        "\u2026": "...",  # horizontal ellipsis
        "\u2039": "<",  # single left-pointing angle quotation mark
        "\u203a": ">",  # single right-pointing angle quotation mark
        "\u00ab": "<<",  # left-pointing double angle quotation mark
        "\u00bb": ">>",  # right-pointing double angle quotation mark
    }
)

# Stage 2: literal rewrites. Each one is a single left-to-right pass and they run in this
# order; both facts are observable (e.g. three spaces shrink to two, not one), so keep them.
_REWRITES: tuple[tuple[str, str], ...] = (
    ("; ", ". "),  # a semicolon reads as a sentence break
    ('"', ""),  # quotes are not spoken
    (":", ","),  # a colon reads as a short pause
    ("(", ""),
    (")", ""),
    ("--", "-"),
    ("-", ", "),  # dashes read as short pauses
    (",,", ","),
    (" '", " "),  # quoting apostrophes go, contractions ("don't") stay
    ("' ", " "),
    ("  ", " "),
)

_SPACE_BEFORE_PUNCT = re.compile(r"\s+(?=[.,?!])")
# A word character that follows a sentence end (possibly after whitespace).
_SENTENCE_START = re.compile(r"(?<=[.!?])(\s*)(\w)")


def _capitalize_match(match: re.Match[str]) -> str:
    return match.group(1) + match.group(2).upper()


def normalize_text(text: str) -> str:
    """Normalize ``text`` the way TADA's training data was normalized.

    Typographic quotes, dashes and ellipses become ASCII, quotes and parentheses are dropped,
    colons and dashes become commas, spaces before ``.,?!`` go, and the text is lowercased
    except for its first character and the first word character after ``.``, ``!`` or ``?``.
    """
    text = text.translate(_TYPOGRAPHIC)
    for old, new in _REWRITES:
        text = text.replace(old, new)
    text = _SPACE_BEFORE_PUNCT.sub("", text)
    text = _SENTENCE_START.sub(_capitalize_match, text.lower())
    if text:
        text = text[0].upper() + text[1:]
    return text


def is_blank(text: str | None) -> bool:
    """Whether ``text`` has nothing to speak: no letter or digit at all.

    Lets callers skip synthesis for empty, whitespace-only or punctuation-only input instead of
    asking the model to voice "...".
    """
    return text is None or not any(ch.isalnum() for ch in text)
