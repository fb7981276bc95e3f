"""Consuming several audio streams of one engine in turns, as concurrent consumers would."""

from __future__ import annotations

import torch


def take_turns(streams) -> list[torch.Tensor]:
    """Each stream's whole audio, taking one chunk from each in turn until all have ended."""
    chunks: list[list[torch.Tensor]] = [[] for _ in streams]
    iters = [iter(s) for s in streams]
    while any(it is not None for it in iters):
        for i, it in enumerate(iters):
            if it is not None:
                item = next(it, None)
                if item is None:
                    iters[i] = None
                else:
                    chunks[i].append(item[0])
    return [torch.cat(c) for c in chunks]
