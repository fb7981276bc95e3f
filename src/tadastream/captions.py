"""Subtitles (SRT, WebVTT) and a timestamps JSON file from a generation's word times.

Cues gather words up to about two lines (``max_chars``) or ``max_seconds``, and a cue ends after
a word that ends a sentence. Words tile the audio (:mod:`tadastream.timestamps`), so cues do too:
a caption stays up until the next one replaces it. WebVTT cues also carry each word's start as an
inline timestamp, which players use for karaoke-style highlighting.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from .files import write_atomic
from .timestamps import CharTiming, WordTiming

__all__ = ["SUBTITLE_FORMATS", "caption_cues", "subtitles", "timestamps_json", "to_srt", "to_vtt", "write_text_atomic"]

_SENTENCE_END = (".", "!", "?", "…", '."', '!"', '?"', ".)", "!)", "?)")


def caption_cues(words: Sequence[WordTiming], max_chars: int = 84, max_seconds: float = 7.0) -> list[list[WordTiming]]:
    """Words grouped into cues, in order; no word is split or dropped."""
    cues: list[list[WordTiming]] = []
    for word in words:
        cue = cues[-1] if cues else None
        if cue is not None:
            length = sum(len(w.word) + 1 for w in cue) + len(word.word)
            ended = cue[-1].word.endswith(_SENTENCE_END)
            if not ended and length <= max_chars and word.end - cue[0].start <= max_seconds:
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


def _lines(cue: Sequence[WordTiming], max_line: int) -> str:
    """The cue's words on up to two lines, broken at the space nearest the middle when too long."""
    text = " ".join(w.word for w in cue)
    if len(text) <= max_line:
        return text
    middle = len(text) // 2
    spaces = [i for i, ch in enumerate(text) if ch == " "]
    if not spaces:
        return text
    cut = min(spaces, key=lambda i: abs(i - middle))
    return text[:cut] + "\n" + text[cut + 1 :]


def to_srt(words: Sequence[WordTiming], max_chars: int = 84) -> str:
    """SubRip text: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, up to two lines each."""
    blocks = []
    for n, cue in enumerate(caption_cues(words, max_chars), 1):
        span = f"{_clock(cue[0].start, ',')} --> {_clock(cue[-1].end, ',')}"
        blocks.append(f"{n}\n{span}\n{_lines(cue, max_chars // 2)}\n")
    return "\n".join(blocks)


def to_vtt(words: Sequence[WordTiming], max_chars: int = 84) -> str:
    """WebVTT text; each word after a cue's first is preceded by its start time (``<00:00:01.240>``)."""
    blocks = ["WEBVTT\n"]
    for cue in caption_cues(words, max_chars):
        span = f"{_clock(cue[0].start, '.')} --> {_clock(cue[-1].end, '.')}"
        lines = _lines(cue, max_chars // 2)
        # the line break, if any, replaced a space between two words: keep it, each word after its tag
        parts, offset = [_escape(cue[0].word)], len(cue[0].word)
        for word in cue[1:]:
            parts.append(f"{lines[offset]}<{_clock(word.start, '.')}>{_escape(word.word)}")
            offset += len(word.word) + 1
        blocks.append(f"{span}\n{''.join(parts)}\n")
    return "\n".join(blocks)


#: Subtitle file extensions and their writers.
SUBTITLE_FORMATS = {".srt": to_srt, ".vtt": to_vtt}


def subtitles(path: str | os.PathLike[str], words: Sequence[WordTiming]) -> str:
    """The subtitle text for ``path``'s extension (.srt or .vtt)."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUBTITLE_FORMATS:
        raise ValueError(f"subtitles {Path(path).name}: the file name must end in .srt or .vtt")
    return SUBTITLE_FORMATS[suffix](words)


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
