"""Text clean-up applied before tokenization, in two stages.

1. :func:`prepare_mapped` turns text as people have it into text the model can read: emoji,
   pictographs, invisible format or control characters (:func:`~tadastream.scripts.unvoiced`)
   and emphasis marks (``*so*``, ``_so_``) are left out, a line break inside a paragraph is a
   space, and a blank line ends a sentence (a heading without closing punctuation gets a period).
   Text of single spaces between voiced characters passes unchanged.
2. TADA was trained on text that went through a specific normalization, so the model reads
   prompts best when new text gets exactly the same treatment. :func:`normalize_text`
   reproduces the observable behaviour of the reference ``normalize_text`` of hume-tada 0.1.9,
   including its quirks (a single pass for double spaces, "; " becoming a sentence end, ...):
   changing any rule changes what the model hears.

Both stages keep a map from every character they produce to the character of the user's text it
came from (:class:`MappedText`), so word times name the words as written.
"""

from __future__ import annotations

import re
import unicodedata

from .scripts import is_wide, spaceless, unvoiced

__all__ = ["is_blank", "model_text", "model_text_mapped", "normalize_text", "nothing_to_say", "prepare_mapped"]

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


_SURROGATE = re.compile("[\ud800-\udfff]")


def unpaired_surrogate(text: str) -> int | None:
    """Index of the first lone UTF-16 surrogate in ``text`` (JSON's ``"\\ud800"``), or None: such a
    string has no UTF-8 form, so no tokenizer can read it."""
    found = _SURROGATE.search(text)
    return found.start() if found else None


class MappedText(str):
    """A string whose character ``i`` came from character ``origin[i]`` of the text it was made from.

    Normalisation rewrites text (quotes dropped, dashes turned to commas, case changed); word
    timestamps must name the words as the user wrote them, so every rule carries this map along.
    """

    origin: tuple[int, ...]

    def __new__(cls, text: str, origin: list[int] | tuple[int, ...]):
        if len(origin) != len(text):
            raise ValueError("origin must give one source index per character")
        obj = super().__new__(cls, text)
        obj.origin = tuple(origin)
        return obj

    @classmethod
    def identity(cls, text: str) -> MappedText:
        return cls(text, range(len(text)))


def _rebuild(pieces: list[tuple[str, int]]) -> MappedText:
    """Text from (piece, source index of every character of the piece) pairs."""
    return MappedText("".join(p for p, _ in pieces), [src for p, src in pieces for _ in p])


def _replace(text: MappedText, old: str, new: str) -> MappedText:
    """``str.replace(old, new)`` (one left-to-right pass), each new character mapped to the old one at
    its place (or the last old one): ``"-"`` -> ``", "`` maps both characters to the dash."""
    if old not in text:
        return text
    pieces, pos, origin = [], 0, text.origin
    while (found := text.find(old, pos)) >= 0:
        pieces.extend((ch, origin[i]) for i, ch in enumerate(text[pos:found], pos))
        pieces.extend((ch, origin[found + min(k, len(old) - 1)]) for k, ch in enumerate(new))
        pos = found + len(old)
    pieces.extend((ch, origin[i]) for i, ch in enumerate(text[pos:], pos))
    return _rebuild(pieces)


def _per_char(text: MappedText, change) -> MappedText:
    """Apply a case change character by character, keeping the map even where it changes a length."""
    return _rebuild([(change(ch), src) for ch, src in zip(text, text.origin)])


def _lower(text: MappedText) -> MappedText:
    lowered = str.lower(text)
    if len(lowered) == len(text):  # the usual case, final sigma included: positions unchanged
        return MappedText(lowered, text.origin)
    mapped = _per_char(text, str.lower)
    return MappedText(lowered, mapped.origin) if len(mapped) == len(lowered) else mapped


def _sub(text: MappedText, pattern: re.Pattern[str], replace) -> MappedText:
    """``pattern.sub`` where ``replace(match)`` gives (replacement, its source indices)."""
    pieces, pos, origin = [], 0, text.origin
    for match in pattern.finditer(text):
        pieces.extend((ch, origin[i]) for i, ch in enumerate(text[pos : match.start()], pos))
        pieces.extend(replace(match))
        pos = match.end()
    pieces.extend((ch, origin[i]) for i, ch in enumerate(text[pos:], pos))
    return _rebuild(pieces)


def _capitalized(text: MappedText):
    def replace(match: re.Match[str]) -> list[tuple[str, int]]:
        space, letter = match.start(1), match.start(2)
        return [(ch, text.origin[i]) for i, ch in enumerate(match.group(1), space)] + [
            (match.group(2).upper(), text.origin[letter])
        ]

    return replace


def normalize_mapped(text: str) -> MappedText:
    """:func:`normalize_text` that also says where each character of the result came from (for a
    :class:`MappedText`, the character of the text it was made from)."""
    origin = text.origin if isinstance(text, MappedText) else range(len(text))
    mapped = _rebuild([(ch.translate(_TYPOGRAPHIC), i) for i, ch in zip(origin, text)])
    for old, new in _REWRITES:
        mapped = _replace(mapped, old, new)
    mapped = _sub(mapped, _SPACE_BEFORE_PUNCT, lambda match: [])
    lowered = _lower(mapped)
    mapped = _sub(lowered, _SENTENCE_START, _capitalized(lowered))
    if mapped:
        first = mapped[0].upper()
        mapped = MappedText(first + mapped[1:], (mapped.origin[0],) * len(first) + mapped.origin[1:])
    return mapped


def normalize_text(text: str) -> str:
    """Normalize ``text`` the way TADA's training data was normalized.

    Typographic quotes, dashes and ellipses become ASCII, quotes and parentheses are dropped,
    colons and dashes become commas, spaces before ``.,?!`` go, and the text is lowercased
    except for its first character and the first word character after ``.``, ``!`` or ``?``.
    """
    return str(normalize_mapped(text))


def is_blank(text: str | None) -> bool:
    """Whether ``text`` has nothing to speak: no letter or digit at all.

    Empty, whitespace-only, punctuation-only and emoji-only text are all blank: the model would
    only voice noise for them.
    """
    return text is None or not any(ch.isalnum() for ch in text)


def nothing_to_say(what: str = "text", fix: str = "give the words to speak") -> str:
    """The one message for text with nothing to speak; each front end names its own field and fix."""
    return f"{what} has nothing to speak: it is empty, or only punctuation, emoji or symbols (not voiced); {fix}"


# Line breaks in a whitespace run; CRLF counts once, a paragraph separator twice.
_LINE_BREAK = re.compile("\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028]|(\u2029)")


def _line_breaks(run: str) -> int:
    return sum(2 if match.group(1) else 1 for match in _LINE_BREAK.finditer(run))


def _joined(text: str, run: list[int], before: int | None, after: int | None) -> list[tuple[str, int]]:
    """What a run of whitespace and unvoiced characters (indices into ``text``) becomes between the
    voiced characters at ``before`` and ``after`` (None at an end): as written when it is plain
    spaces; when it holds no whitespace, nothing, or a space between two words it would otherwise glue
    together ("great😀thanks"); else one space, after a period (mapped to the heading's last character)
    when it is a paragraph break that follows a heading's last letter or digit."""
    chars = [text[i] for i in run]
    if all(ch == " " for ch in chars):
        return [(" ", i) for i in run]
    last = text[before] if before is not None else ""
    spaces = [i for i in run if text[i].isspace()]
    if not spaces:
        pictures = any(unicodedata.category(ch) != "Cf" for ch in chars)  # a soft hyphen joins, not splits
        following = text[after] if after is not None else ""
        glued = pictures and last.isalnum() and following.isalnum() and not spaceless(last + following)
        return [(" ", run[0])] if glued else []
    out = []
    if last.isalnum() and _line_breaks("".join(chars)) >= 2:
        out.append(("。" if is_wide(last) else ".", before))
    return out + [(" ", spaces[0])]


_EMPHASIS = "*_"


def _emphasis(text: str, i: int) -> bool:
    """Whether ``text[i]`` marks emphasis (``*so*``, ``_so_``, ``**so**``): an asterisk or underscore
    not between two letters or digits (``snake_case`` and ``5*3`` keep theirs)."""
    if text[i] not in _EMPHASIS:
        return False
    inside = 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
    return not inside


def prepare_mapped(text: str) -> MappedText:
    """``text`` as the model should read it (stage 1 of the module docstring), mapped to ``text``.

    Each piece of the result depends only on the characters up to the next voiced one, so a text's
    prefix that ends in whitespace before a word prepares to a prefix of the whole text's result.
    """
    if all(ch == " " or not (ch.isspace() or unvoiced(ch) or ch in _EMPHASIS) for ch in text):
        return MappedText.identity(text)
    pieces: list[tuple[str, int]] = []
    run: list[int] = []
    before: int | None = None
    dropped = False
    for i, ch in enumerate(text):
        # a combining mark on a dropped picture goes with it (a keycap, an accent on an emoji)
        if ch.isspace() or unvoiced(ch) or (dropped and unicodedata.combining(ch)) or _emphasis(text, i):
            run.append(i)
            dropped = not ch.isspace()
            continue
        if run:
            pieces.extend(_joined(text, run, before, i))
        pieces.append((ch, i))
        run, before, dropped = [], i, False
    pieces.extend(_joined(text, run, before, None))
    return _rebuild(pieces)


def model_text_mapped(text: str, normalize: bool = True) -> MappedText:
    """What the model reads for ``text``: prepared, then normalized unless ``normalize`` is False."""
    prepared = prepare_mapped(text)
    return normalize_mapped(prepared) if normalize else prepared


def model_text(text: str, normalize: bool = True) -> str:
    """:func:`model_text_mapped` as a plain string."""
    return str(model_text_mapped(text, normalize))


def tokenize_joint(tokenizer, prompt_text: str, text: str, prompt_tokens: list[int] | None = None) -> list[int]:
    """Prompt transcript and new text tokenized together, one space between them.

    Tokenizing them separately loses BPE merges at the seam. The joint ids must start with the
    prompt's own tokens (their positions come from the aligner); when they cannot (a transcript
    ending in whitespace, say) the new text is tokenized after its space on its own.
    """
    prompt_text, text = prompt_text.rstrip(), text.strip()
    if not prompt_text:
        return tokenizer.encode(text, add_special_tokens=False)
    if prompt_tokens is None:
        prompt_tokens = tokenizer.encode(prompt_text, add_special_tokens=False)
    joint = tokenizer.encode(prompt_text + " " + text, add_special_tokens=False)
    if joint[: len(prompt_tokens)] == list(prompt_tokens):
        return joint
    return list(prompt_tokens) + tokenizer.encode(" " + text, add_special_tokens=False)


# Text up to the start of the last word (whitespace before it included) is settled: no later
# piece can change its normalisation (every rule looks at most one or two characters to the
# right, which the whitespace supplies, and a word's first letter only ever gets re-cased) or its
# tokens (Llama 3's pre-tokenizer always splits before a space that precedes a letter or digit,
# and BPE never merges across that split).
_LAST_WORD_START = re.compile(r"\s+(?=[^\W_])")


class IncrementalText:
    """Text arriving in pieces -> the token ids of the whole text, released as they settle.

    The ids released, concatenated, are exactly those of the whole text tokenized at once (after
    the prompt transcript, jointly): the trailing word, which a later piece could still extend,
    merge with or re-case, is held back until the whitespace after it arrives or the text ends.
    """

    def __init__(
        self, tokenizer, prompt_text: str = "", prompt_tokens: list[int] | None = None, normalize: bool = True
    ):
        self.tokenizer = tokenizer
        self.prompt_text = prompt_text or ""
        self.normalize = normalize
        if self.prompt_text.strip() and prompt_tokens is None:
            prompt_tokens = tokenizer.encode(self.prompt_text.rstrip(), add_special_tokens=False)
        self.prompt_tokens = list(prompt_tokens or [])
        self.raw = ""
        self.settled = 0  # characters of ``raw`` whose ids are all released
        self.released: list[int] = []
        self.finished = False

    def _ids(self, raw: str) -> list[int]:
        text = model_text(raw, self.normalize)
        if not text.strip():
            return []
        ids = tokenize_joint(self.tokenizer, self.prompt_text, text, self.prompt_tokens or None)
        return ids[len(self.prompt_tokens) :] if self.prompt_text.strip() else ids

    def _release(self, ids: list[int]) -> list[int]:
        if ids[: len(self.released)] != self.released:
            raise RuntimeError("incremental tokenization diverged from the whole text; please report this text")
        new = ids[len(self.released) :]
        self.released.extend(new)
        return new

    def push(self, piece: str) -> list[int]:
        """Add a piece; returns the ids that became final."""
        if self.finished:
            raise RuntimeError("the text has already ended")
        if not isinstance(piece, str):
            raise TypeError(f"text pieces must be str, got {type(piece).__name__}")
        self.raw += piece
        cut = None
        for match in _LAST_WORD_START.finditer(self.raw):
            cut = match.end()
        if not cut or is_blank(self.raw[:cut]):  # nothing voiced yet: it may yet be refused as blank
            return []
        new = self._release(self._ids(self.raw[:cut]))
        self.settled = cut
        return new

    def finish(self) -> list[int]:
        """The text has ended: the remaining ids."""
        self.finished = True
        new = self._release(self._ids(self.raw))
        self.settled = len(self.raw)
        return new

    @property
    def text(self) -> str:
        return model_text(self.raw, self.normalize)
