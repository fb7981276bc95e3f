"""Text still arriving: :class:`TextInput`, which any thread fills with pieces.

An event loop, a consumer pulling from an iterator or a socket handler puts pieces in without
blocking, and the generation takes whatever has arrived when it needs more ids
(:class:`~tadastream.generation.feed.TokenFeed`). A generation that needs more than has arrived
is parked by the engine, holding no thread, until the next piece or the end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from .options import check_encodable


class TextCancelled(Exception):
    """The text's producer went away (``TextInput.close``): the generation stops early."""


class TextInput:
    """Text pieces pushed from any thread: ``put(piece)`` any number of times, then ``end()``.

    ``close()`` abandons the text: a generation waiting for it stops. Nothing here blocks.
    """

    def __init__(self, pieces: Iterable[str] = ()):
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self._news = False
        self._listeners: list[Callable[[], None]] = []
        self.ended = False
        self.closed = False
        self.chars = 0
        for piece in pieces:
            self.put(piece)

    def put(self, piece: str) -> None:
        if not isinstance(piece, str):
            raise TypeError(f"text pieces must be str, got {type(piece).__name__}")
        check_encodable(piece)
        with self._lock:
            if self.ended:
                raise RuntimeError("the text has already ended")
            self._pieces.append(piece)
            self.chars += len(piece)
            self._news = True
        self._notify()

    def end(self) -> None:
        """No more pieces: the generation finishes the text (and speaks its last word)."""
        with self._lock:
            if self.ended:
                return
            self.ended = self._news = True
        self._notify()

    def close(self) -> None:
        """Abandon the text: a generation waiting for it stops."""
        with self._lock:
            self.closed = self.ended = self._news = True
        self._notify()

    @property
    def has_news(self) -> bool:
        """Pieces, the end or a close arrived since the last :meth:`take`."""
        return self._news

    def take(self) -> tuple[list[str], bool, bool]:
        """(pieces that arrived, whether the text has ended with them, whether it was closed)."""
        with self._lock:
            pieces, self._pieces, self._news = self._pieces, [], False
            return pieces, self.ended, self.closed

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (from the putting thread) whenever something arrives."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()
