"""What a stream's program asks the engine for, and what it gets back.

A program never calls the model: it yields one of these and is resumed with the result. The
engine gathers the requests of every running stream and answers each kind with one batched call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .options import InferenceOptions


@dataclass
class NeedText:
    """Park this stream until more text arrives (or the text ends)."""


@dataclass
class LlmStep:
    """Run the backbone on the first ``rows`` rows of the stream's slot at positions
    ``start .. start + length``; inputs are ``(rows, length)`` (``acoustic``: ``(rows, length, dim)``).

    ``mirror_to``: slot rows that receive row 0's keys and values (a guidance row whose input is
    the spoken row's, as in the prefill, is computed once and copied).
    """

    ids: torch.Tensor
    acoustic: torch.Tensor
    masks: torch.Tensor
    time_before: torch.Tensor
    time_after: torch.Tensor
    start: int
    mirror_to: tuple[int, ...] = ()

    @property
    def rows(self) -> int:
        return self.ids.shape[0]

    @property
    def length(self) -> int:
        return self.ids.shape[1]


@dataclass
class FlowSolve:
    """Integrate the flow-matching ODE from ``noise`` (rows, latent) conditioned on ``cond``
    (rows, hidden), guided by ``neg`` (rows, hidden) where the options' scale is not 1.

    With ``candidates`` > 1 the rows are candidates of one frame, and the result is the best by
    the options' scorer (``speaker_reference`` for the spkr_verification scorer).
    """

    noise: torch.Tensor
    cond: torch.Tensor
    neg: torch.Tensor
    options: InferenceOptions
    candidates: int = 1
    speaker_reference: torch.Tensor | None = None


@dataclass
class Logits:
    """Text logits (float32) of the hidden rows (rows, hidden)."""

    hidden: torch.Tensor


@dataclass
class Computed:
    """A request's result and the seconds the batched call that made it took."""

    value: torch.Tensor
    seconds: float = 0.0


Request = NeedText | LlmStep | FlowSolve | Logits
