"""The LLM's input ids for one generation: complete from the start, or growing as text arrives.

Text that is still arriving comes through a :class:`TextInput`: any thread (an event loop, a
consumer pulling from an iterator, a socket handler) puts pieces in without blocking, and the
generation takes whatever has arrived when it needs more ids. A generation that needs more than
has arrived is parked by the engine, holding no thread, until the next piece or the end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import torch

from .options import check_encodable, check_speakable
from .plan import GenerationPlan


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


class TokenFeed:
    """Input ids known so far; ``available(n)`` takes arrived text until ``n`` ids are known."""

    def __init__(self, plan: GenerationPlan | None, text: TextInput | None = None):
        self.plan = plan
        self.text = text
        self.ids: list[int] = []
        self.ended = True
        self.final_length: int | None = None
        if plan is not None:
            self.ids = list(plan.head_ids) + list(plan.text_ids or [])
            self.ended = plan.text_ids is not None
            if self.ended:
                self.ids += plan.tail_ids
                self.final_length = len(self.ids)

    @classmethod
    def complete(cls, ids: list[int]) -> TokenFeed:
        feed = cls(None)
        feed.ids, feed.final_length = list(ids), len(ids)
        return feed

    def available(self, n: int) -> bool:
        """Whether the first ``n`` ids are known, or the text has ended (never blocks)."""
        if not self.ended and len(self.ids) < n and self.text is not None and self.text.has_news:
            self._take()
        return self.ended or len(self.ids) >= n

    def _take(self) -> None:
        plan = self.plan
        pieces, ended, closed = self.text.take()
        if closed:
            raise TextCancelled
        for piece in pieces:
            self.ids += plan.incremental.push(piece)
        plan.check_room(len(self.ids))
        if ended:
            check_speakable(plan.incremental.raw)
            new = plan.incremental.finish()
            plan.check_length(len(plan.incremental.released))
            plan.text = plan.incremental.text
            plan.text_ids = list(plan.incremental.released)
            self.ids += new + plan.tail_ids
            self.ended = True
            self.final_length = len(self.ids)

    def tensor(self, device) -> torch.Tensor:
        return torch.tensor([self.ids], device=device)
