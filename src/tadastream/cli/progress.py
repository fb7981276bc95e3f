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
