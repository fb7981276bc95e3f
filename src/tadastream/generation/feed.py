"""The LLM's input ids for one generation: complete from the start, or growing as text arrives
through a :class:`~tadastream.generation.text_input.TextInput`."""

from __future__ import annotations

import torch

from .options import check_speakable
from .plan import GenerationPlan
from .text_input import TextCancelled, TextInput


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
