"""The runner: every tensor operation on the shared model, one batched call per kind of request.

The engine hands it the pending requests of all running streams; it packs their rows side by
side, makes one call (the backbone over all LLM rows, the flow head per ODE step over all solves,
``lm_head`` over all logits rows) and unpacks one result per request. Each call pads to at least
:data:`~tadastream.nn.linear.MIN_ROWS` rows, so a row's numbers do not depend on its neighbours.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from ..generation.flow import solve_flows
from ..generation.requests import Computed, FlowSolve, LlmStep, Logits
from ..nn.kv_cache import SlotCache
from ..nn.linear import invariant_rows, pad_rows
from ..nn.llama import Segment


class Runner:
    def __init__(self, model):
        self.model = model
        self._sync = model.device.type == "cuda"
        self.min_rows = invariant_rows(model.device, model.dtype)

    def _now(self) -> float:
        if self._sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def llm(self, work: Sequence[tuple[SlotCache, LlmStep]]) -> list[Computed]:
        """Hidden states (rows, length, hidden) of each step; keys and values go to the slots."""
        start = self._now()
        model, dim = self.model, self.model.config.acoustic_dim
        steps = [step for _, step in work]
        flat = [
            torch.cat([getattr(s, name).reshape(-1) for s in steps])
            for name in ("ids", "masks", "time_before", "time_after")
        ]
        acoustic = torch.cat([s.acoustic.reshape(-1, dim) for s in steps])
        n = acoustic.shape[0]
        ids, masks, before, after = (pad_rows(t, self.min_rows) for t in flat)
        x = model.embed(ids, pad_rows(acoustic, self.min_rows), masks, before, after)
        segments = []
        for slot, step in work:
            slot.reserve(step.start + step.length)
            segments.append(Segment(slot, step.rows, step.start, step.length))
        hidden = model.model(x, segments)[:n]
        for slot, step in work:
            for target in step.mirror_to:
                slot.copy_row(0, target, step.start, step.start + step.length)
        seconds = self._now() - start
        out, offset = [], 0
        for step in steps:
            size = step.rows * step.length
            out.append(Computed(hidden[offset : offset + size].unflatten(0, (step.rows, step.length)), seconds))
            offset += size
        return out

    def flow(self, solves: Sequence[FlowSolve]) -> list[Computed]:
        start = self._now()
        latents = solve_flows(self.model, solves)
        seconds = self._now() - start
        return [Computed(latent, seconds) for latent in latents]

    def logits(self, requests: Sequence[Logits]) -> list[Computed]:
        start = self._now()
        rows = torch.cat([r.hidden for r in requests])
        logits = self.model.lm_head(pad_rows(rows, self.min_rows))[: rows.shape[0]].float()
        seconds = self._now() - start
        out, offset = [], 0
        for r in requests:
            out.append(Computed(logits[offset : offset + r.hidden.shape[0]], seconds))
            offset += r.hidden.shape[0]
        return out
