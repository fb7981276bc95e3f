"""AudioStream: audio chunks out while the LLM is still generating.

A stream is a program in an :class:`~tadastream.engine.Engine`. Each frame its program settles
goes to this stream's :class:`~tadastream.codec.streaming.StreamingDecoder`, whose calls the
engine decodes together with every other stream's in its decode phase (on its ticking thread),
and the samples that became final are queued for the consumer. On its own a
stream gets a private engine that its consumer ticks inline, at batch 1; given a shared engine
(``engine=``) it is batched with every other stream there. Nothing is stored on the shared
model, and closing (``close()``, ``break`` + garbage collection, leaving a ``with`` block) frees
its slot at once, or at the end of the tick in progress. The engine holds only the stream's
:class:`_Delivery` (decoder and queued chunks), never the AudioStream, so dropping the last
reference to a stream cancels it at once.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import torch

from ..codec.streaming import StreamingDecoder
from ..config import SAMPLE_RATE
from ..engine import Engine, EngineStream, engine_for
from ..generation import (
    GenerationOutput,
    GenerationPlan,
    SpeechProgram,
    SpeechRequest,
    StepOutput,
    StreamRng,
    SyncTokGenerationOutput,
    TextInput,
    finish_output,
    leading_trim_frames,
    plan_generation,
)
from ..playback import FirstChunkHold, playback_figures
from ..timestamps import WordClock, WordTiming
from ..weights import TadaWeights

_POLL = 0.5  # seconds between checks while waiting on another thread (a safety net, not the signal)


class _Delivery:
    """The engine's side of a stream, called on its ticking thread: settled frames go into the
    stream's deferred StreamingDecoder, whose calls the engine's decode phase computes with every
    other stream's; the samples they make final are queued for the consumer, the first of them once
    :class:`~tadastream.playback.FirstChunkHold` lets them go."""

    def __init__(self, model: TadaWeights, plan: GenerationPlan, window_size: int, hold: FirstChunkHold):
        self.model, self.plan, self.hold = model, plan, hold
        self.decoder: StreamingDecoder | None = StreamingDecoder(model.require_decoder(), window_size, deferred=True)
        self.raw: SyncTokGenerationOutput | None = None  # the program's result, once it has ended
        # (samples, words completed by then): a word always travels with or before its audio
        self.chunks: collections.deque[tuple[torch.Tensor, list[WordTiming]]] = collections.deque()
        self.held: list[torch.Tensor] = []  # final samples the first chunk is still gathering
        self.clock = WordClock.of(plan, model.tokenizer)
        self.words: list[WordTiming] = []  # completed, not yet queued with a chunk
        self.samples = 0
        self.cond = threading.Condition()
        self.async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.error: BaseException | None = None
        self.finished = False
        self.result: GenerationOutput | None = None
        self.tokens_done = 0
        self.on_token = None

    def frame_settled(self, step: StepOutput) -> None:
        plan, cfg = self.plan, self.model.config
        if not step.final_pass or step.index < plan.decode_start:
            return
        self.tokens_done += 1
        if self.on_token is not None:
            self.on_token(step)
        before = int(step.time_before[0])
        if step.index == plan.decode_start:
            self.decoder.set_skip_leading_frames(leading_trim_frames(before))
        if self.clock is not None:
            self.words.extend(self.clock.add(step.index, before))
        vector = step.acoustic_features[0] * cfg.acoustic_std + cfg.acoustic_mean
        self.decoder.decode_block(vector, before)  # deferred: the engine's decode phase computes it
        self.hold.produced(self.decoder.frames_in, self.tokens_done)

    def decoded(self, samples: torch.Tensor, seconds: float) -> None:
        """A decode call's samples (the engine's decode phase)."""
        self.hold.decoded(seconds)
        self._settle(samples)

    def _settle(self, samples: torch.Tensor) -> None:
        """Queue decoded samples; after the tail's last, the end of the stream."""
        if self.decoder.finished and self.raw is not None:
            if self.clock is not None:
                self.words.extend(self.clock.finish(self.samples + samples.numel()))
            self.result = finish_output(self.model, self.plan, self.raw, None, self.clock)
            self._deliver(samples, last=True)
        else:
            self._deliver(samples)

    def finish(self, raw: SyncTokGenerationOutput) -> None:
        """Generation ended: the decoder's tail is queued for the decode phase (nothing to decode: the end)."""
        self.raw = raw
        self.decoder.flush(int(raw.time_before[0, -1]))
        if self.decoder.finished:
            self._settle(torch.zeros(0))

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._deliver(None, last=True)

    def cancelled(self) -> None:
        self._deliver(None, last=True)

    def parked(self) -> None:
        """The stream waits for more text, which no rate predicts: audio held back goes now."""
        if self.held:
            self.hold.release()
            self._deliver(None)

    def _ready_to_release(self) -> bool:
        if self.hold.released:
            return True
        plan, decoder = self.plan, self.decoder
        left = None if plan.tokens_spoken is None else max(0, plan.tokens_spoken - self.tokens_done)
        seconds = sum(c.numel() for c in self.held) / SAMPLE_RATE
        if decoder is not None and self.hold.should_release(seconds, decoder.upcoming_calls(), decoder.frames_in, left):
            self.hold.release()
        return self.hold.released

    def _deliver(self, chunk: torch.Tensor | None, last: bool = False) -> None:
        with self.cond:
            if chunk is not None and chunk.numel():
                self.samples += chunk.numel()
                self.held.append(chunk.detach().to("cpu", torch.float32))
            if self.held and (last or self._ready_to_release()):
                audio = torch.cat(self.held) if len(self.held) > 1 else self.held[0]
                self.held = []
                self.chunks.append((audio, self.words))
                self.words = []
            elif last and self.words:
                self.chunks.append((torch.zeros(0), self.words))
                self.words = []
            if last:
                self.finished = True
                self.decoder = None
            self.cond.notify_all()
            waiters = list(self.async_waiters)
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)


class ClosingStream:
    """What every audio stream shares: when its chunks came (``started_at``, ``time_to_first_audio``,
    ``chunk_times``, ``chunk_samples``), and closing it (freeing its slot) on leaving a ``with``
    block or dropping the last reference."""

    started_at: float
    time_to_first_audio: float | None
    chunk_times: list[float]
    chunk_samples: list[int]

    def _record(self, chunk: torch.Tensor) -> torch.Tensor:
        now = time.perf_counter() - self.started_at
        if self.time_to_first_audio is None:
            self.time_to_first_audio = now
        self.chunk_times.append(now)
        self.chunk_samples.append(int(chunk.numel()))
        return chunk

    def _stamp(self, result: GenerationOutput) -> None:
        """Put this stream's chunk timings and what a listener got into ``result``."""
        figures = playback_figures(self.chunk_times, self.chunk_samples, SAMPLE_RATE)
        result.time_to_first_audio = self.time_to_first_audio
        result.time_to_playable_audio = figures.time_to_playable_audio
        result.stall_count, result.stall_time = figures.stall_count, figures.stall_time
        result.chunk_times, result.chunk_samples = self.chunk_times, self.chunk_samples

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class AudioStream(ClosingStream):
    """Iterate ``for chunk, sample_rate in stream``; ``stream.result`` is set after the last chunk.

    Chunks are float32 mono 1-D tensors at 24 kHz; concatenated they equal the non-streaming
    audio of the same seed. ``async for`` works too (compute runs off the event loop), and
    cancelling the consuming task stops generation at the end of the tick in progress.

    It speaks a :class:`~tadastream.generation.SpeechRequest`: its ``text`` is a string, an
    iterable or async iterable of pieces, or a :class:`TextInput` that any thread fills
    (``stream.text.put(piece)``, ``stream.text.end()``).

    The request's ``min_first_chunk_ms`` says how much audio the first chunk holds. ``None``
    (default) adapts to the stream: the first chunk goes once it lasts until the next ones are
    expected, so playback that starts on it does not pause (see :mod:`tadastream.playback`);
    ``0`` sends the first final samples at once (earliest, but a crumb followed by a wait); a
    number holds that many milliseconds. Only chunk boundaries change, never the audio.
    """

    def __init__(
        self,
        model: TadaWeights,
        request: SpeechRequest,
        *,
        engine: Engine | None = None,
        plan: GenerationPlan | None = None,
        rng: StreamRng | None = None,
        hold: FirstChunkHold | None = None,
    ):
        """``plan``, ``rng`` and ``hold`` default to the request's own (a long-form segment brings
        its plan, derived generators and first-chunk rule)."""
        self.started_at = time.perf_counter()
        self.model = model
        self.request = request
        self.window_size = request.window_size
        text = request.text
        self.text: TextInput | None = None
        self._source: Any = None  # an iterable of pieces this stream pulls into self.text
        if isinstance(text, TextInput):
            self.text = text
        elif not isinstance(text, str):
            self.text, self._source = TextInput(), text
        self._plan = plan if plan is not None else plan_generation(model, request)
        hold = hold if hold is not None else FirstChunkHold(request.min_first_chunk_ms)
        self._delivery = _Delivery(model, self._plan, request.window_size, hold)
        rng = rng if rng is not None else request.rng(model.device)
        self._engine = engine_for(model, engine)
        self._iterator: Iterator | None = None
        self._pumped = False  # an async source is being pumped by the consuming event loop
        self.chunk_times: list[float] = []
        self.chunk_samples: list[int] = []
        self.time_to_first_audio: float | None = None
        self.sample_rate = SAMPLE_RATE
        #: Words heard so far (:class:`~tadastream.timestamps.WordTiming`): each is here once the chunk
        #: it came with (never after the one that ends it) has been taken.
        self.words: list[WordTiming] = []
        d, eng = self._delivery, self._engine
        program = SpeechProgram(eng.shape, self._plan, rng, d.frame_settled, self.text, eng.prefill_chunk)
        self._handle: EngineStream = eng.submit(program, d, self.text)

    @property
    def result(self) -> GenerationOutput | None:
        """The GenerationOutput (audio=None, plus chunk timings), once generation has finished."""
        return self._delivery.result

    @property
    def tokens_done(self) -> int:
        """Tokens of the new text spoken so far."""
        return self._delivery.tokens_done

    @property
    def realtime_factor(self) -> float | None:
        """Seconds of audio made per second since the first token, so far (None before two tokens):
        below 1, a player that starts on the first chunk will pause, and the stream sends audio
        as soon as it is final rather than hold a first chunk no rate can make last."""
        return self._delivery.hold.realtime_factor

    @property
    def on_token(self):
        """Optional callable(StepOutput), called for every spoken token (on the engine's thread)."""
        return self._delivery.on_token

    @on_token.setter
    def on_token(self, callback) -> None:
        self._delivery.on_token = callback

    # -- sync ----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        while True:
            chunk = self._next_chunk()
            if chunk is None:
                return
            yield chunk, self.sample_rate

    def _take(self) -> torch.Tensor | None | bool:
        """A queued chunk; None at the end (raising the stream's error once); False for 'not yet'."""
        d = self._delivery
        with d.cond:
            while d.chunks:
                chunk, words = d.chunks.popleft()
                self.words.extend(words)
                if chunk.numel():
                    return self._record(chunk)
            if not d.finished:
                return False
            if d.error is not None:
                error, d.error = d.error, None
                raise error
            if d.result is not None and d.result.total_time is None:
                self._finalise_result(d.result)
            return None

    def _next_chunk(self) -> torch.Tensor | None:
        """Block until the next chunk (ticking the engine here when nobody else does)."""
        while True:
            chunk = self._take()
            if chunk is not False:
                return chunk
            if self._needs_piece():
                self._pull_piece()
            elif self._engine.has_worker or not self._engine.tick():
                # someone else ticks, or every stream waits for text: wait for news
                self._engine.wait(self._news, _POLL)

    def _news(self) -> bool:
        d = self._delivery
        return (
            bool(d.chunks)
            or d.finished
            or self._needs_piece()
            or (not self._engine.has_worker and self._engine.runnable())
        )

    def _needs_piece(self) -> bool:
        """Parked for text that this consumer pulls from its iterable source."""
        return (
            self._source is not None and not self._pumped and self._handle.waiting_for_text and not self.text.has_news
        )

    def _pull_piece(self) -> None:
        if self._iterator is None:
            if hasattr(self._source, "__aiter__") and not hasattr(self._source, "__iter__"):
                self.close()
                raise TypeError("text is an async iterable: consume the stream with 'async for'")
            self._iterator = iter(self._source)
        try:
            piece = next(self._iterator)  # may block on the producer: this consumer's own thread
        except StopIteration:
            self.text.end()
            return
        except BaseException:
            self.close()
            raise
        try:
            self.text.put(piece)
        except TypeError:
            self.close()
            raise

    def _finalise_result(self, result: GenerationOutput) -> None:
        self._stamp(result)
        result.total_time = time.perf_counter() - self.started_at

    # -- async ---------------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[tuple[torch.Tensor, int]]:
        return self._aiter()

    async def _aiter(self):
        pump = None
        if self._source is not None and hasattr(self._source, "__aiter__"):
            self._pumped = True
            pump = asyncio.create_task(self._pump(self._source))
        try:
            while True:
                chunk = await self.read()
                if chunk is None:
                    return
                yield chunk, self.sample_rate
        finally:
            if pump is not None:
                pump.cancel()
            if not self.finished:
                self.close()  # cancelled or abandoned: free now, or at the end of the tick in progress

    async def _pump(self, source) -> None:
        """Move an async producer's pieces into the stream's text as they come."""
        try:
            async for piece in source:
                self.text.put(piece)
            self.text.end()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._delivery.error = self._delivery.error or exc
            self.close()

    async def read(self) -> torch.Tensor | None:
        """The next chunk, or None at the end; waits without a thread when an engine worker ticks."""
        if not self._engine.has_worker:
            return await asyncio.to_thread(self._next_chunk)
        loop, d = asyncio.get_running_loop(), self._delivery
        event = asyncio.Event()
        with d.cond:
            d.async_waiters.append((loop, event))
        try:
            while True:
                chunk = self._take()
                if chunk is not False:
                    return chunk
                if self._needs_piece():
                    await asyncio.to_thread(self._pull_piece)
                    continue
                await event.wait()
                event.clear()
        finally:
            with d.cond:
                d.async_waiters.remove((loop, event))

    # -- lifetime -----------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """Generation has ended (completed, failed or cancelled); queued chunks may remain."""
        return self._delivery.finished

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        """Stop generating; the slot and decoder state go now (or when the tick in progress ends)."""
        if not self._delivery.finished:
            self._handle.cancel()

    @property
    def decode_start(self) -> int:
        return self._plan.decode_start

    @property
    def tokens_total(self) -> int | None:
        """Tokens this stream will speak; None while the text is still arriving."""
        return self._plan.tokens_spoken
