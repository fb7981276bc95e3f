"""Subtitles (SRT, WebVTT) and a timestamps JSON file from a generation's word times.

Cues hold up to two lines and at most ``max_seconds``, and a cue ends after a word that ends a
sentence (``. ! ? …``, ``。！？``, ``؟``) or before a pause between segments of a long text (a
heading or a paragraph ends there too). Lines are measured in display columns, a full-width
character counting two, with the usual limits: 42 columns for scripts with spaces, 13 full-width
characters for Japanese and 16 for Chinese. Words are joined as they were written: with a space
where the text had whitespace between them, directly where it had none (Chinese and Japanese).
Words tile the audio (:mod:`tadastream.timestamps`), so cues do too: a caption stays up until the
next one replaces it. WebVTT cues also carry each word's start as an inline timestamp, which
players use for karaoke-style highlighting.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from .files import temporary_beside, write_atomic
from .scripts import display_width, is_wide, scripts_of
from .timestamps import CharTiming, WordTiming

__all__ = [
    "SUBTITLE_FORMATS",
    "SubtitleWriter",
    "TimestampsWriter",
    "caption_cues",
    "line_width_for",
    "line_width_for_text",
    "subtitles",
    "timestamps_json",
    "to_srt",
    "to_vtt",
    "write_text_atomic",
]

_SENTENCE_END = re.compile(r"""[.!?…。！？．؟۔]["'”’»)\]」』）】〉》]*$""")
#: Columns per line: Latin and other spaced scripts; Japanese (13 full-width); Chinese (16).
LATIN_LINE, JAPANESE_LINE, CHINESE_LINE = 42, 26, 32


def line_width_for(words: Sequence[WordTiming]) -> int:
    """Columns per subtitle line for these words' script."""
    return line_width_for_text("".join(_shown(w) for w in words))


def line_width_for_text(text: str) -> int:
    """Columns per subtitle line for a text's script."""
    if not any(is_wide(ch) for ch in text):
        return LATIN_LINE
    return JAPANESE_LINE if scripts_of(text) & {"Hiragana", "Katakana"} else CHINESE_LINE


def _shown(word: WordTiming) -> str:
    """A word as a caption shows it: a line break or run of spaces inside it (a dash that opened a line
    joins the word before) is one space."""
    return " ".join(word.word.split())


def _separators(cue: Sequence[WordTiming]) -> list[str]:
    """What goes before each word of the cue: nothing first, then a space where the text had whitespace."""
    return [""] + [" " if b.char_start > a.char_end else "" for a, b in zip(cue, cue[1:])]


def _layout(cue: Sequence[WordTiming], line_width: int) -> tuple[int | None, bool]:
    """(index of the word that starts the second line or None for one line, whether the cue fits)."""
    seps = _separators(cue)
    widths = [display_width(sep) + display_width(_shown(w)) for sep, w in zip(seps, cue)]
    total = sum(widths)
    if total <= line_width or len(cue) == 1:
        return None, total <= line_width or len(cue) == 1
    best, best_width = None, None
    first = 0
    for k in range(1, len(cue)):
        first += widths[k - 1]
        second = total - first - display_width(seps[k])
        longest = max(first, second)
        if best_width is None or longest < best_width:
            best, best_width = k, longest
    return best, best_width <= line_width


def caption_cues(
    words: Sequence[WordTiming], line_width: int | None = None, max_seconds: float = 7.0
) -> list[list[WordTiming]]:
    """Words grouped into cues of up to two lines of ``line_width`` columns (None: by script), in
    order; no word is split or dropped (a word longer than a line is a cue of its own)."""
    width = line_width or line_width_for(words)
    cues: list[list[WordTiming]] = []
    for word in words:
        cue = cues[-1] if cues else None
        # a sentence ended, or a pause between segments (a heading's or a paragraph's end) came
        ended = cue is None or bool(_SENTENCE_END.search(cue[-1].word)) or word.start > cue[-1].end
        if not ended and word.end - cue[0].start <= max_seconds:
            if _layout([*cue, word], width)[1]:
                cue.append(word)
                continue
        cues.append([word])
    return cues


def _clock(seconds: float, separator: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def _pieces(cue: Sequence[WordTiming], line_width: int) -> list[str]:
    """What goes before each word: the separator, or a line break where the second line starts."""
    seps = _separators(cue)
    second, _fits = _layout(cue, line_width)
    if second is not None:
        seps[second] = "\n"
    return seps


def _srt_cue(number: int, cue: Sequence[WordTiming], width: int) -> str:
    span = f"{_clock(cue[0].start, ',')} --> {_clock(cue[-1].end, ',')}"
    text = "".join(sep + _shown(w) for sep, w in zip(_pieces(cue, width), cue))
    return f"{number}\n{span}\n{text}\n"


def _vtt_cue(_number: int, cue: Sequence[WordTiming], width: int) -> str:
    span = f"{_clock(cue[0].start, '.')} --> {_clock(cue[-1].end, '.')}"
    seps = _pieces(cue, width)
    parts = [_escape(_shown(cue[0]))]
    parts += [f"{sep}<{_clock(w.start, '.')}>{_escape(_shown(w))}" for sep, w in zip(seps[1:], cue[1:])]
    return f"{span}\n{''.join(parts)}\n"


def to_srt(words: Sequence[WordTiming], line_width: int | None = None) -> str:
    """SubRip text: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, up to two lines each."""
    width = line_width or line_width_for(words)
    return "\n".join(_srt_cue(n, cue, width) for n, cue in enumerate(caption_cues(words, width), 1))


def to_vtt(words: Sequence[WordTiming], line_width: int | None = None) -> str:
    """WebVTT text; each word after a cue's first is preceded by its start time (``<00:00:01.240>``)."""
    width = line_width or line_width_for(words)
    return "\n".join(["WEBVTT\n"] + [_vtt_cue(0, cue, width) for cue in caption_cues(words, width)])


#: Subtitle file extensions and their writers.
SUBTITLE_FORMATS = {".srt": to_srt, ".vtt": to_vtt}


def subtitles(path: str | os.PathLike[str], words: Sequence[WordTiming]) -> str:
    """The subtitle text for ``path``'s extension (.srt or .vtt)."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUBTITLE_FORMATS:
        raise ValueError(f"subtitles {Path(path).name}: the file name must end in .srt or .vtt")
    return SUBTITLE_FORMATS[suffix](words)


class SubtitleWriter:
    """Subtitles written as the words come (a book's words are never all in memory), into a
    temporary file beside ``path`` renamed onto it by :meth:`close`. The cues are those
    :func:`subtitles` makes of all the words at once: the last cue stays open until the next
    words show whether they join it. ``line_width`` is fixed up front (from the whole text's script)."""

    def __init__(self, path: str | os.PathLike[str], line_width: int):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in SUBTITLE_FORMATS:
            raise ValueError(f"subtitles {self.path.name}: the file name must end in .srt or .vtt")
        self._cue = _srt_cue if suffix == ".srt" else _vtt_cue
        self.width = line_width
        self._open: list[WordTiming] = []
        self._count = 0
        self._temp = temporary_beside(self.path)
        self._file = open(self._temp, "x", encoding="utf-8")  # noqa: SIM115 - held open across the book
        if suffix == ".vtt":
            self._file.write("WEBVTT\n")

    def add(self, words: Sequence[WordTiming]) -> None:
        """The next words, in time order."""
        cues = caption_cues([*self._open, *words], self.width)
        self._open = cues.pop() if cues else []
        for cue in cues:
            self._write(cue)

    def _write(self, cue: Sequence[WordTiming]) -> None:
        self._count += 1
        block = self._cue(self._count, cue, self.width)
        self._file.write(("\n" if self._count > 1 or self._cue is _vtt_cue else "") + block)

    def close(self) -> Path:
        if self._open:
            self._write(self._open)
            self._open = []
        self._file.close()
        os.replace(self._temp, self.path)
        return self.path

    def abort(self) -> None:
        self._file.close()
        self._temp.unlink(missing_ok=True)


class TimestampsWriter:
    """The timestamps JSON of a book written as it is spoken, into a temporary file beside ``path``.

    A text of one chapter gets :func:`timestamps_json`'s layout (``text``, ``words``,
    ``characters``, ``audio_seconds`` and ``extra``); a book ``title``, ``extra`` and ``chapters``,
    each with its ``title``, ``text``, ``start`` and ``end`` (seconds in the audio), ``words`` and
    ``characters`` (times in the book's audio, offsets into the chapter's text). Characters wait in
    a second temporary file until their chapter's words are all written."""

    def __init__(self, path: str | os.PathLike[str], title: str | None, **extra):
        self.path = Path(path)
        self.flat = title is None
        self._temp = temporary_beside(self.path)
        self._file = open(self._temp, "x", encoding="utf-8")  # noqa: SIM115 - held open across the book
        self._chars_temp = temporary_beside(self.path)
        self._chars = open(self._chars_temp, "w+", encoding="utf-8")  # noqa: SIM115
        head = dict(extra) if self.flat else {"title": title, **extra}
        self._file.write(json.dumps(head, ensure_ascii=False)[:-1] + ("," if head else ""))
        if not self.flat:
            self._file.write(' "chapters": [')
        self._chapters = 0
        self._entries = 0

    def chapter(self, title: str, text: str, start: float) -> None:
        if self.flat:
            self._file.write(f" {json.dumps('text')}: {json.dumps(text, ensure_ascii=False)}, \"words\": [")
        else:
            head = {"title": title, "text": text, "start": round(start, 6)}
            sep = ",\n " if self._chapters else "\n "
            self._file.write(sep + json.dumps(head, ensure_ascii=False)[:-1] + ', "words": [')
        self._chapters += 1
        self._entries = 0
        self._chars.seek(0)
        self._chars.truncate()

    def add(self, words: Sequence[WordTiming], characters: Sequence[CharTiming]) -> None:
        for word in words:
            self._file.write((",\n  " if self._entries else "\n  ") + json.dumps(word.to_dict(), ensure_ascii=False))
            self._entries += 1
        for char in characters:
            self._chars.write(json.dumps(char.to_dict(), ensure_ascii=False) + "\n")

    def chapter_end(self, end: float) -> None:
        self._file.write("\n ], \"characters\": [" if self._entries else "], \"characters\": [")
        self._chars.seek(0)
        rows = [line.rstrip("\n") for line in self._chars]
        self._file.write(("\n  " + ",\n  ".join(rows) + "\n ]") if rows else "]")
        if not self.flat:
            self._file.write(f', "end": {round(end, 6)}}}')

    def close(self, audio_seconds: float) -> Path:
        if not self.flat:
            self._file.write("\n ]")
        self._file.write(f', "audio_seconds": {round(audio_seconds, 6)}}}\n')
        self._file.close()
        self._chars.close()
        self._chars_temp.unlink(missing_ok=True)
        os.replace(self._temp, self.path)
        return self.path

    def abort(self) -> None:
        for handle, temp in ((self._file, self._temp), (self._chars, self._chars_temp)):
            handle.close()
            temp.unlink(missing_ok=True)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def timestamps_json(
    text: str, words: Sequence[WordTiming], characters: Sequence[CharTiming], audio_seconds: float, **extra
) -> str:
    """The text, its words and characters with their times (seconds) and offsets, as JSON."""
    head = {"text": text, "audio_seconds": round(audio_seconds, 6), **extra}
    rows = {"words": [w.to_dict() for w in words], "characters": [c.to_dict() for c in characters]}
    # one entry per line: small diffs, easy to read, and still plain JSON
    lines = [json.dumps(head, ensure_ascii=False)[:-1]]
    for name, entries in rows.items():
        items = ",\n  ".join(json.dumps(e, ensure_ascii=False) for e in entries)
        lines.append(f', "{name}": [\n  {items}\n ]' if entries else f', "{name}": []')
    return "".join(lines) + "}\n"


def write_text_atomic(path: str | os.PathLike[str], content: str) -> Path:
    """Write UTF-8 ``content`` to ``path`` whole or not at all (:func:`tadastream.files.write_atomic`)."""
    return write_atomic(path, content.encode("utf-8"))
