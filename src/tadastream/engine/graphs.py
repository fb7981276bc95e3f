"""Compiled fixed-shape steps: the LLM step and the whole flow solve, for torch.compile and CUDA graphs.

At batch 1 a GPU token is several hundred small kernels (16 layers, then 10 ODE steps of the head);
launching them from Python costs more than running them. Here each tick's work goes through one of
two functions whose shapes depend only on a *bucket* (a row count from :data:`ROW_BUCKETS`):

* the LLM step over the first ``bucket`` rows of the engine's static arena
  (:meth:`~tadastream.nn.llama.LlamaBackbone.decode_rows`): rows without work this tick write the
  arena's scratch position, so the call never depends on who is running;
* the flow solve of every solve in the tick (:func:`~tadastream.engine.flow.solve_rows`).

Both are compiled with ``fullgraph=True`` (a graph break is an error, not a slow path) and
``dynamic=False`` (one graph per bucket; positions and values never recompile). On CUDA each
bucket's call is then captured as a CUDA graph and replayed: inputs are copied into the graph's
own buffers, the output is copied out before the next replay. Nothing here reads a device value
on the host. Prefill chunks (several positions per row) keep the eager path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..generation.requests import FlowSolve, LlmStep
from ..nn.kv_cache import SlotCache
from .flow import pack_solves, pick_solves, solve_rows

if TYPE_CHECKING:  # the weights sit below the engine: a type only
    from ..weights import TadaWeights

logger = logging.getLogger("tadastream.engine")

#: Row counts a compiled call is built for; a call pads its rows up to the next one.
ROW_BUCKETS = (4, 8, 16, 32, 64, 128, 256, 512)
#: Positions a compiled engine's slots hold by default (a long-form segment needs under 1000).
DEFAULT_MAX_POSITIONS = 4096


def bucket_for(rows: int) -> int:
    """The smallest bucket holding ``rows`` rows (past the largest: its next multiple)."""
    for bucket in ROW_BUCKETS:
        if rows <= bucket:
            return bucket
    last = ROW_BUCKETS[-1]
    return -(-rows // last) * last


@dataclass(frozen=True)
class CompileOptions:
    """How an engine compiles its steps.

    ``max_positions``: positions every slot holds (the static arena's size; a longer stream fails
    with a clear error). ``backend``: torch.compile's ("inductor"; "eager" or "aot_eager" check the
    graphs without generating code; or a backend callable). ``cuda_graphs``: capture and replay each bucket on CUDA
    (default: on CUDA).
    """

    max_positions: int = DEFAULT_MAX_POSITIONS
    backend: str | Callable[..., Any] = "inductor"
    cuda_graphs: bool | None = None

    def __post_init__(self):
        if self.max_positions < 1:
            raise ValueError(f"max_positions must be at least 1, got {self.max_positions}")


Capture = Callable[[Callable[[], torch.Tensor]], tuple[Callable[[], None], torch.Tensor]]


def cuda_graph_capture(pool) -> Capture:
    """Capture ``run`` as a CUDA graph (after two runs on a side stream settle its allocations and
    compile it); returns (replay, the graph's output buffer)."""

    def capture(run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            output = run()
        return graph.replay, output

    return capture


class _Replayed:
    """A captured call: each call copies its inputs into the capture's own buffers and replays.
    ``static`` tensors (the arena) are captured as they are: their addresses never change."""

    def __init__(self, fn: Callable[..., torch.Tensor], inputs, static, capture: Capture):
        self.inputs = [t.clone() for t in inputs]
        self.static = tuple(static)
        self.replay, self.output = capture(lambda: fn(*self.inputs, *self.static))

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for buffer, value in zip(self.inputs, inputs):
            buffer.copy_(value, non_blocking=True)
        self.replay()
        return self.output.clone()  # the next replay overwrites the capture's output


class StepGraphs:
    """The compiled LLM step and flow solve of one engine (its arena is what the step writes)."""

    def __init__(
        self,
        model: TadaWeights,
        arena: tuple[list[torch.Tensor], list[torch.Tensor]],
        options: CompileOptions,
        capture: Capture | None = None,
    ):
        """``capture``: how calls are captured and replayed (default: CUDA graphs where
        ``options.cuda_graphs`` holds; a test passes a CPU stand-in with the same contract)."""
        self.model = model
        self.options = options
        self.keys, self.values = arena
        self.scratch = self.keys[0].shape[2] - 1
        self.device = model.device
        cuda = self.device.type == "cuda"
        self.cuda_graphs = cuda if options.cuda_graphs is None else options.cuda_graphs
        if self.cuda_graphs and not cuda:
            raise ValueError(f"CUDA graphs need a CUDA device, the model is on {self.device}: drop cuda_graphs")
        # one graph per bucket (and per step count for the solve), for every engine of the process
        dynamo = torch._dynamo.config
        dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
        compile_kwargs = dict(fullgraph=True, dynamic=False, backend=options.backend)
        self._step = torch.compile(self._step_eager, **compile_kwargs)
        self._solve = torch.compile(self._solve_eager, **compile_kwargs)
        self._captured: dict[tuple, _Replayed] = {}
        if capture is None and self.cuda_graphs:
            capture = cuda_graph_capture(torch.cuda.graph_pool_handle())  # one memory pool for all
        self._capture = capture
        model.model.rotary(torch.zeros(1, dtype=torch.long, device=self.device), model.dtype)  # frequencies in place

    # -- the functions that get compiled ----------------------------------------------------------
    def _step_eager(self, ids, acoustic, masks, before, after, positions, keys, values) -> torch.Tensor:
        x = self.model.embed(ids, acoustic, masks, before, after)
        return self.model.decode_rows(x, positions, keys, values)

    def _solve_eager(self, x, t, cond, dt, scale, guided: bool) -> torch.Tensor:
        return solve_rows(self.model, x, t, cond, dt, scale, guided)

    def _run(self, key: tuple, fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], static=()):
        if self._capture is None:
            return fn(*inputs, *static)
        captured = self._captured.get(key)
        if captured is None:
            logger.info("capturing %s", key)
            captured = self._captured[key] = _Replayed(fn, inputs, static, self._capture)
        return captured(*inputs)

    # -- a tick's work ----------------------------------------------------------------------------
    def llm(self, work: Sequence[tuple[SlotCache, LlmStep]]) -> list[torch.Tensor]:
        """Hidden states ``(rows, 1, hidden)`` of one-position steps of arena slots, in one call."""
        bucket = bucket_for(max(slot.first_row + step.rows for slot, step in work))
        index, positions = [], [self.scratch] * bucket
        for slot, step in work:
            rows = range(slot.first_row, slot.first_row + step.rows)
            index.extend(rows)
            for row in rows:
                positions[row] = step.start
        index_t, positions_t = self._host_to_device(index), self._host_to_device(positions)
        steps = [step for _, step in work]
        dim = self.model.config.acoustic_dim
        inputs = []
        for name in ("ids", "masks", "time_before", "time_after"):
            values = torch.cat([getattr(s, name).reshape(-1) for s in steps])
            inputs.append(values.new_zeros(bucket).index_copy_(0, index_t, values))
        acoustic = torch.cat([s.acoustic.reshape(-1, dim) for s in steps])
        acoustic = acoustic.new_zeros(bucket, dim).index_copy_(0, index_t, acoustic)
        ids, masks, before, after = inputs
        inputs = (ids, acoustic, masks, before, after, positions_t)
        hidden = self._run(("llm", bucket), self._step, inputs, (self.keys, self.values))
        hidden = hidden.index_select(0, index_t)
        out, offset = [], 0
        for slot, step in work:
            slot.length = max(slot.length, step.start + 1)
            out.append(hidden[offset : offset + step.rows].unsqueeze(1))
            offset += step.rows
        return out

    def flow(self, solves: Sequence[FlowSolve]) -> list[torch.Tensor]:
        """Every solve's final latent, (1, latent), from one compiled solve."""
        bucket = bucket_for(sum(solve.noise.shape[0] for solve in solves))
        packed = pack_solves(self.model, solves, bucket, pin=self.device.type == "cuda")
        steps = packed.t.shape[0]
        solve = self._solve_guided if packed.guided else self._solve_plain
        latents = self._run(
            ("flow", bucket, steps, packed.guided), solve, (packed.x, packed.t, packed.cond, packed.dt, packed.scale)
        )
        return pick_solves(self.model, solves, latents, packed.rows)

    def _solve_guided(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self._solve(*inputs, True)

    def _solve_plain(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self._solve(*inputs, False)

    def _host_to_device(self, values: list[int]) -> torch.Tensor:
        host = torch.tensor(values, dtype=torch.long)
        if self.device.type == "cuda":  # a pinned copy does not wait for the device's queue
            return host.pin_memory().to(self.device, non_blocking=True)
        return host.to(self.device)

    # -- warm-up ----------------------------------------------------------------------------------
    def warmup(self, max_rows: int, solves: Callable[[int], list[FlowSolve]]) -> int:
        """Compile (and capture) every bucket up to ``max_rows`` LLM rows, and the flow solve of
        ``solves(n)`` for each bucket up to the slots' count; returns the graphs built. Only the
        arena's scratch position is written."""
        built = 0
        for bucket in ROW_BUCKETS:
            if bucket > bucket_for(max_rows):
                break
            # four distinct tensors: the graph is guarded on its inputs not aliasing each other
            ids, masks, before, after = (torch.zeros(bucket, dtype=torch.long, device=self.device) for _ in range(4))
            acoustic = torch.zeros(bucket, self.model.config.acoustic_dim, dtype=self.model.dtype, device=self.device)
            positions = torch.full((bucket,), self.scratch, dtype=torch.long, device=self.device)
            inputs = (ids, acoustic, masks, before, after, positions)
            self._run(("llm", bucket), self._step, inputs, (self.keys, self.values))
            built += 1
        for bucket in ROW_BUCKETS:
            group = solves(bucket)
            if not group:
                break
            self.flow(group)
            built += 1
        return built
