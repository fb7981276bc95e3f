"""Text sampling: repetition penalty, temperature, top-k and top-p, as the reference applies them."""

from __future__ import annotations

import torch

from .options import InferenceOptions
from .rng import StreamRng


def sample_next_token(
    logits: torch.Tensor, input_ids: torch.Tensor, opts: InferenceOptions, rng: StreamRng | None = None
) -> torch.Tensor:
    """The next id (1, 1) for float ``logits`` (1, vocab) after ``input_ids`` (1, n)."""
    if not opts.text_do_sample:
        return logits.argmax(dim=-1, keepdim=True)
    if opts.text_repetition_penalty != 1.0:
        seen = torch.gather(logits, 1, input_ids)
        seen = torch.where(seen < 0, seen * opts.text_repetition_penalty, seen / opts.text_repetition_penalty)
        logits = logits.scatter(1, input_ids, seen)
    logits = logits / opts.text_temperature
    if opts.text_top_k > 0:
        kth = torch.topk(logits, min(opts.text_top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < opts.text_top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop_sorted = torch.cumsum(probs, dim=-1) - probs >= opts.text_top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if rng is None:
        return torch.multinomial(probs, num_samples=1)
    return rng.sample(probs)
