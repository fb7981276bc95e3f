"""AudioStream: audio chunks out while the LLM is still generating.

Iterating pulls LLM steps one at a time; every settled token goes to a per-stream
:class:`~tadastream.codec.streaming.StreamingDecoder`, and whatever samples became final are
yielded at once. Nothing is stored on the shared model, so streams can be interleaved or run in
threads. Closing (``close()``, ``break`` + garbage collection, or leaving a ``with`` block) drops
the KV cache and decoder state immediately.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import AsyncIterator, Iterator

import torch

from .codec.streaming import StreamingDecoder
from .generation import (
    GenerationOutput,
    Rng,
    StepOutput,
    SyncTokGenerationOutput,
    finish_output,
    generate_steps,
    leading_trim_frames,
    plan_generation,
)

SAMPLE_RATE = 24000


class TextCancelled(Exception):
    """Raised by a text source to stop a stream that waits for text (its consumer went away)."""


class AudioStream:
    """Iterate ``for chunk, sample_rate in stream``; ``stream.result`` is set after the last chunk.

    Chunks are float32 mono 1-D tensors at 24 kHz; concatenated they equal the non-streaming
    audio of the same seed. ``async for`` works too: each step runs in a worker thread, and
    cancelling the consuming task stops generation after the step in progress.
    """

    def __init__(self, model, prompt, text, *, window_size: int = 100, **plan_kwargs):
        self.started_at = time.perf_counter()
        self.model = model
        self.window_size = window_size
        self._pieces = None if isinstance(text, str) else text
        self._pull = None
        self._pending = None  # a text piece being awaited from an async producer
        self._plan = plan_generation(model, prompt, text, **plan_kwargs)
        self._rng = Rng.fork_global(model.device)
        self._steps: Iterator | None = None
        self._decoder: StreamingDecoder | None = None
        self._lock = threading.Lock()
        self._cancelled = False
        self._done = False
        self.result: GenerationOutput | None = None
        self.chunk_times: list[float] = []
        self.chunk_samples: list[int] = []
        self.time_to_first_audio: float | None = None
        self.sample_rate = SAMPLE_RATE
        self.tokens_done = 0
        self.on_token = None  # optional callable(StepOutput), called for every spoken token

    # -- sync iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        while True:
            chunk = self._next_chunk()
            if chunk is None:
                return
            yield chunk, self.sample_rate

    def _next_chunk(self) -> torch.Tensor | None:
        with self._lock:
            if self._done:
                return None
            if self._steps is None:
                self._steps = generate_steps(self.model, self._plan, self._rng, self._text_puller())
                self._decoder = StreamingDecoder(self.model.require_decoder(), self.window_size)
            try:
                while True:
                    if self._cancelled:
                        self._release()
                        return None
                    chunk = self._consume(next(self._steps))
                    chunk = self._record(chunk) if chunk is not None and chunk.numel() else None
                    if self._done:
                        self._finalise_result()
                        self._release()
                    if chunk is not None or self._done:
                        return chunk
            except TextCancelled:
                self._release()
                return None
            except BaseException:
                self._release()
                raise

    def _text_puller(self):
        """How the loop gets the next text piece: from a sync iterator, or from an async one via
        the event loop that drives ``async for`` (the loop thread stays free while it waits)."""
        if self._pieces is None:
            return None
        if self._pull is not None:
            return self._pull
        if hasattr(self._pieces, "__aiter__"):
            raise TypeError("text is an async iterable: consume the stream with 'async for'")
        return iter(self._pieces).__next__

    def _async_puller(self, loop: asyncio.AbstractEventLoop):
        pieces = self._pieces.__aiter__()

        def pull():
            self._pending = asyncio.run_coroutine_threadsafe(pieces.__anext__(), loop)
            try:
                return self._pending.result()
            except StopAsyncIteration:
                raise StopIteration from None
            except concurrent.futures.CancelledError:
                raise TextCancelled from None
            finally:
                self._pending = None

        return pull

    def _consume(self, item) -> torch.Tensor | None:
        plan, cfg = self._plan, self.model.config
        if isinstance(item, StepOutput):
            if not item.final_pass or item.index < plan.decode_start:
                return None
            self.tokens_done += 1
            if self.on_token is not None:
                self.on_token(item)
            if item.index == plan.decode_start:
                self._decoder.set_skip_leading_frames(leading_trim_frames(int(item.time_before[0])))
            vector = item.acoustic_features[0] * cfg.acoustic_std + cfg.acoustic_mean
            return self._decoder.decode_block(vector, int(item.time_before[0]))
        assert isinstance(item, SyncTokGenerationOutput)
        tail = self._decoder.flush(int(item.time_before[0, -1]))
        self.result = finish_output(self.model, plan, item, None)
        self._done = True
        return tail

    def _record(self, chunk: torch.Tensor) -> torch.Tensor:
        now = time.perf_counter() - self.started_at
        if self.time_to_first_audio is None:
            self.time_to_first_audio = now
        self.chunk_times.append(now)
        self.chunk_samples.append(int(chunk.numel()))
        return chunk.detach().to("cpu", torch.float32)

    def _finalise_result(self) -> None:
        if self.result is not None:
            self.result.time_to_first_audio = self.time_to_first_audio
            self.result.chunk_times = self.chunk_times
            self.result.chunk_samples = self.chunk_samples
            self.result.total_time = time.perf_counter() - self.started_at

    # -- lifetime -----------------------------------------------------------------------------
    def _release(self) -> None:
        self._done = True
        if self._steps is not None:
            self._steps.close()  # runs the generator's cleanup: the KV cache goes now
        self._steps = None
        self._decoder = None

    def close(self) -> None:
        """Stop generating and free the KV cache and decoder state now."""
        self._cancelled = True
        pending = self._pending
        if pending is not None:
            pending.cancel()  # a worker waiting for text wakes up and stops
        if self._lock.acquire(blocking=False):
            try:
                self._release()
            finally:
                self._lock.release()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def decode_start(self) -> int:
        return self._plan.decode_start

    @property
    def tokens_total(self) -> int | None:
        """Tokens this stream will speak; None while the text is still arriving."""
        steps = self._plan.num_steps
        return None if steps is None else max(0, steps - self.model.config.shift_acoustic - self.decode_start)

    # -- async iteration ----------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[tuple[torch.Tensor, int]]:
        return self._aiter()

    async def _aiter(self):
        if self._pieces is not None and hasattr(self._pieces, "__aiter__") and self._pull is None:
            self._pull = self._async_puller(asyncio.get_running_loop())
        try:
            while True:
                chunk = await asyncio.to_thread(self._next_chunk)
                if chunk is None:
                    return
                yield chunk, self.sample_rate
        finally:
            if not self._done:
                # Cancelled or abandoned: free now, or (if a worker is mid-step) after that step.
                self.close()
