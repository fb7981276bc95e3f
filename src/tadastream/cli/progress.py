"""The live status line of ``speak`` on stderr, and its notes and final summary."""

from __future__ import annotations

import sys
import time

from ..config import SAMPLE_RATE
from .errors import say


class Progress:
    """A live status line on stderr (only on a terminal), and a final summary unless quiet."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()
        self.tokens = 0
        self.total_tokens = 0
        self.samples = 0
        self.first_audio: float | None = None
        self.start = time.perf_counter()
        self._drawn = 0.0

    def note(self, message: str) -> None:
        if self.enabled:
            self.clear()
            say(message)

    def token(self) -> None:
        self.tokens += 1
        self._draw()

    def chunk(self, samples: int) -> None:
        if self.first_audio is None:
            self.first_audio = time.perf_counter() - self.start
        self.samples += samples
        self._draw()

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.live or (not force and now - self._drawn < 0.1):
            return
        self._drawn = now
        total = f"/{self.total_tokens}" if self.tokens <= self.total_tokens else ""
        done = f" ({100 * self.tokens / self.total_tokens:.0f}%)" if self.total_tokens and total else ""
        first = f"first audio after {self.first_audio:.2f} s" if self.first_audio is not None else "waiting for audio"
        audio = self.samples / SAMPLE_RATE
        rtf = f" | RTF {(now - self.start) / audio:.2f}" if audio > 0 else ""
        line = f"tokens {self.tokens}{total}{done} settled | {audio:.2f} s of audio{rtf} | {first}"
        sys.stderr.write("\r" + line[:120] + "\x1b[K")
        sys.stderr.flush()

    def clear(self) -> None:
        """Erase the live line, so the next message starts on a clean line."""
        if self.live:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


class BookProgress(Progress):
    """A book's progress: chapter n of m, share of the text spoken, audio made, real-time factor
    and the time left; a live line on a terminal, otherwise a plain line per chapter and at most
    one a minute between."""

    LOG_EVERY = 60.0

    def begin(self, book, plan, narrator) -> None:
        self.book, self.plan, self.narrator = book, plan, narrator
        self.tokens_total = sum(plan.tokens)
        self.tokens_before = narrator.tokens  # spoken by an earlier, interrupted run
        self.samples_before = narrator.samples
        self.chapter = 0
        self.start = time.perf_counter()
        self._logged = self.start

    def event(self, event) -> None:
        from ..books.narrate import ChapterEnd, ChapterStart, SegmentDone

        if isinstance(event, ChapterStart):
            self.chapter = event.index
        elif isinstance(event, SegmentDone):
            now = time.perf_counter()
            if self.live:
                self._draw_book(now)
            elif self.enabled and now - self._logged >= self.LOG_EVERY:
                self._logged = now
                say(self.line(now))
        elif isinstance(event, ChapterEnd) and self.enabled and not self.live:
            self._logged = time.perf_counter()
            say(self.line(self._logged))

    def line(self, now: float) -> str:
        narrator, chapters = self.narrator, len(self.book.chapters)
        share = narrator.tokens / self.tokens_total if self.tokens_total else 1.0
        audio = narrator.samples / SAMPLE_RATE
        wall = now - self.start
        audio_made = (narrator.samples - self.samples_before) / SAMPLE_RATE
        made = (narrator.tokens - self.tokens_before) / self.tokens_total if self.tokens_total else 0.0
        rtf = f"RTF {wall / audio_made:.2f}" if audio_made > 0 else "RTF n/a"
        left = f"ETA {_clock(wall / made * (1 - share))}" if made > 0 else "ETA n/a"
        shown = f"{audio:.1f} s" if audio < 3600 else f"{audio / 3600:.2f} h"
        where = f"chapter {self.chapter + 1} of {chapters} | {100 * share:.1f}% of the text"
        return f"{where} | {shown} of audio | {rtf} | {left}"

    def _draw_book(self, now: float) -> None:
        if now - self._drawn < 0.1:
            return
        self._drawn = now
        sys.stderr.write("\r" + self.line(now)[:120] + "\x1b[K")
        sys.stderr.flush()


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
