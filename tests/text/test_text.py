"""normalize_text must match the reference normalization TADA was trained with."""

import random

import pytest

from tadastream.text import is_blank, normalize_text

# Outputs of hume-tada 0.1.9's tada.utils.text.normalize_text, recorded once from the reference.
EXPECTED = {
    "": "",
    "hello": "Hello",
    "Hello World.": "Hello world.",
    "HELLO WORLD. THIS IS LOUD!": "Hello world. This is loud!",
    "the quick brown fox. jumps over? the lazy dog! yes": ("The quick brown fox. Jumps over? The lazy dog! Yes"),
    "He said, “I’m fine.”": "He said, i'm fine.",
    "„Guten Tag“ and ‚hallo‘": "Guten tag and hallo'",
    "‟odd quotes‛ here": "Odd quotes here",
    "Wait… what?": "Wait... What?",
    "She paused—then left.": "She paused, then left.",
    "pages 10–20": "Pages 10, 20",
    "a―b‐c‑d": "A, b, c, d",
    "‹single› and «double» angles": "<single> and <<double>> angles",
    "first; second; third": "First. Second. Third",
    "first;second": "First;second",
    "Note: this matters.": "Note, this matters.",
    "Time 10:30 today": "Time 10,30 today",
    "He (quietly) left.": "He quietly left.",
    "well -- maybe": "Well, maybe",
    "well - maybe": "Well, maybe",
    "well---maybe": "Well,, maybe",
    "co-operate": "Co, operate",
    "Hello , world !": "Hello, world!",
    "Really   ?": "Really?",
    "Two  spaces and   three spaces.": "Two spaces and  three spaces.",
    "'Quoted' words 'here' too.": "'quoted words here too.",
    "Don't stop; won't stop.": "Don't stop. Won't stop.",
    "It's Bob's car": "It's bob's car",
    "Mr. Smith went to Washington.": "Mr. Smith went to washington.",
    "e.g. this and i.e. that": "E.G. This and i.E. That",
    "What?! no way... OK.": "What?! No way... Ok.",
    "U.S.A. is big": "U.S.A. Is big",
    "end.\nnew line starts": "End.\nNew line starts",
    "tab\there. next": "Tab\there. Next",
    "numbers 3.14 and 2.5x": "Numbers 3.14 and 2.5x",
    "Ünïcödé ÀÉÎ. ñandú": "Ünïcödé àéî. Ñandú",
    "straße. ßtraße": "Straße. SStraße",
    "\u0130stanbul. \u0130zmir": "I\u0307stanbul. I\u0307zmir",
    "ΣΊΣΥΦΟΣ. ΟΔΥΣΣΕΑΣ": "Σίσυφος. Οδυσσεας",
    "_under. _score": "_under. _score",
    "   leading spaces": "  leading spaces",
    "trailing spaces.   ": "Trailing spaces.  ",
    '"double" "quotes"': "Double quotes",
    ",,comma,,": ",comma,",
    ":colon: start": ",colon, start",
    "MiXeD CaSe? yEs! nO.": "Mixed case? Yes! No.",
    "...": "...",
    "!a!b?c.d": "!A!B?C.D",
}


@pytest.mark.parametrize(("text", "expected"), list(EXPECTED.items()))
def test_matches_reference_outputs(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


_TYPOGRAPHIC = (
    "\u201c\u201d\u201e\u201f\u2018\u2019\u201a\u201b"  # quotes
    "\u2010\u2011\u2013\u2014\u2015\u2026\u2039\u203a\u00ab\u00bb"  # dashes, ellipsis, angles
)
_ALPHABET = list("aAbZz09 _\t\n.,;:!?-'\"()") + list(_TYPOGRAPHIC) + ["\u00df", "\u00e9", "\u03a3"]


def test_random_strings_obey_invariants() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        text = "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 40)))
        out = normalize_text(text)
        assert not set(out) & set(_TYPOGRAPHIC + '"():-'), (text, out)
        assert not any(ch.isspace() for ch in _chars_before_punct(out)), (text, out)


def _chars_before_punct(text: str) -> list[str]:
    return [text[i - 1] for i in range(1, len(text)) if text[i] in ".,?!"]


def test_casing_rules() -> None:
    assert normalize_text("ONE. TWO! THREE? FOUR, FIVE") == "One. Two! Three? Four, five"
    assert normalize_text("a.b") == "A.B"
    # the first character is capitalized even when it is not a letter that starts a word
    assert normalize_text("x") == "X"


def test_dash_and_quote_rules() -> None:
    assert normalize_text("yes\u2014no") == "Yes, no"
    assert normalize_text("\u00abhi\u00bb") == "<<hi>>"
    assert normalize_text("\u201cquoted\u201d") == "Quoted"
    assert normalize_text("don\u2019t") == "Don't"


def test_empty_string() -> None:
    assert normalize_text("") == ""


@pytest.mark.parametrize(
    ("text", "blank"),
    [
        ("", True),
        (None, True),
        ("   \n\t", True),
        ("...!?", True),
        ("\u2014 \u2026", True),
        ("a", False),
        ("  7 ", False),
        ("\u00e9", False),
        ("Hello, world.", False),
    ],
)
def test_is_blank(text: str | None, blank: bool) -> None:
    assert is_blank(text) is blank
