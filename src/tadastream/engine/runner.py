"""The runner: every tensor operation on the shared model, one batched call per kind of request.

The engine hands it the pending requests of all running streams; it packs their rows side by
side, makes one call (the backbone over all LLM rows, the flow head per ODE step over all solves,
``lm_head`` over all logits rows) and unpacks one result per request. Each call pads to at least
:data:`~tadastream.nn.linear.MIN_ROWS` rows, so a row's numbers do not depend on its neighbours.
With :class:`~tadastream.engine.graphs.StepGraphs`, one-position LLM steps and flow solves go
through their compiled (and on CUDA, captured) fixed-shape calls instead.

On CUDA nothing here waits for the device: a call's seconds come from CUDA events, read once the
device has passed them, so the figure a request gets is that of the previous call of its kind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import torch

from ..codec.batch import DecodeCall, decode_calls
from ..generation.requests import Computed, FlowSolve, LlmStep, Logits
from ..nn.kv_cache import SlotCache
from ..nn.linear import invariant_rows, pad_rows
from ..nn.llama import Segment
from .flow import solve_flows
from .graphs import StepGraphs

if TYPE_CHECKING:  # the weights sit below the engine: a type only
    from ..weights import TadaWeights

T = TypeVar("T")


class _Clock:
    """Seconds a call took: wall time on the CPU; on CUDA, CUDA events read without a sync."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._last: dict[str, tuple] = {}
        self._seconds: dict[str, float] = {}

    def time(self, kind: str, call: Callable[[], T]) -> tuple[T, float]:
        if not self.cuda:
            start = time.perf_counter()
            result = call()
            return result, time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        result = call()
        end.record()
        previous = self._last.get(kind)
        if previous is not None and previous[1].query():  # done: reading it does not wait
            self._seconds[kind] = previous[0].elapsed_time(previous[1]) / 1000.0
        self._last[kind] = (begin, end)
        return result, self._seconds.get(kind, 0.0)


class Runner:
    def __init__(self, model: TadaWeights, graphs: StepGraphs | None = None):
        self.model = model
        self.graphs = graphs
        self.clock = _Clock(model.device)
        self.min_rows = invariant_rows(model.device, model.dtype, model.inference_layout)

    def llm(self, work: Sequence[tuple[SlotCache, LlmStep]]) -> list[Computed]:
        """Hidden states (rows, length, hidden) of each step; keys and values go to the slots."""
        values, seconds = self.clock.time("llm", lambda: self._llm(work))
        return [Computed(value, seconds) for value in values]

    def _llm(self, work: Sequence[tuple[SlotCache, LlmStep]]) -> list[torch.Tensor]:
        if self.graphs is None:
            return self._llm_eager(work)
        one = [i for i, (_, step) in enumerate(work) if step.length == 1 and not step.mirror_to]
        rest = [i for i in range(len(work)) if i not in set(one)]
        out: list[torch.Tensor | None] = [None] * len(work)
        if rest:  # prefill chunks: several positions a row, the eager path
            for i, value in zip(rest, self._llm_eager([work[i] for i in rest])):
                out[i] = value
        if one:
            for i, value in zip(one, self.graphs.llm([work[i] for i in one])):
                out[i] = value
        return out

    def _llm_eager(self, work: Sequence[tuple[SlotCache, LlmStep]]) -> list[torch.Tensor]:
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
        hidden = model.backbone_rows(x, segments)[:n]
        for slot, step in work:
            for target in step.mirror_to:
                slot.copy_row(0, target, step.start, step.start + step.length)
        out, offset = [], 0
        for step in steps:
            size = step.rows * step.length
            out.append(hidden[offset : offset + size].unflatten(0, (step.rows, step.length)))
            offset += size
        return out

    def flow(self, solves: Sequence[FlowSolve]) -> list[Computed]:
        solve = self.graphs.flow if self.graphs is not None else (lambda s: solve_flows(self.model, s))
        latents, seconds = self.clock.time("flow", lambda: solve(solves))
        return [Computed(latent, seconds) for latent in latents]

    def logits(self, requests: Sequence[Logits]) -> list[Computed]:
        rows = torch.cat([r.hidden for r in requests])
        logits, seconds = self.clock.time(
            "logits", lambda: self.model.lm_head(pad_rows(rows, self.min_rows))[: rows.shape[0]].float()
        )
        out, offset = [], 0
        for r in requests:
            out.append(Computed(logits[offset : offset + r.hidden.shape[0]], seconds))
            offset += r.hidden.shape[0]
        return out

    def decode(self, calls: Sequence[DecodeCall]) -> float:
        """Every stream's decode call at once (:func:`~tadastream.codec.batch.decode_calls`); the
        results land in the calls. Returns the seconds it took."""
        decoder = self.model.require_decoder()
        _, seconds = self.clock.time("decode", lambda: decode_calls(decoder, list(calls)))
        return seconds
