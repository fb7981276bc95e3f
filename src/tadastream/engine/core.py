"""The engine: all running streams advance together, one tick at a time.

A tick (:meth:`Engine.tick`) applies cancellations, admits queued streams into free slots, wakes
streams whose text arrived, then answers the pending requests of every running stream in phase
order: one backbone call for all LLM steps, one flow solve for all streams that need a frame,
one ``lm_head`` call for all that need logits. A stream's program then settles its frame and
asks for its next LLM step, which the next tick answers. The decode phase follows: every stream's
due codec call (ended streams' tails too) as one batched call. Last comes the boost pass, when it
runs. The engine decides who runs; the :class:`~tadastream.engine.runner.Runner` owns every tensor
operation.

Two ways to drive it, same ticks: a background worker (:meth:`Engine.start`, what the server
does), or whoever waits for output calling :meth:`Engine.tick` (a single stream runs inline at
batch 1 in its consumer's thread; several consumers of one engine take turns ticking for all).
A stream waiting for text is parked: it holds its slot but no thread and no tick time.

First audio under load: a stream that joins a busy engine spends its first ticks (prefill, and the
steps before its first audio frame) making nothing a listener hears, each as slow as a full tick.
While such a stream runs beside others, a tick ends with one *boost pass*: the LLM, flow and logits
phases again for the joining streams alone, at the cost of a small batch. Bounded: one pass per
tick; only steps before a stream's first frame (the steps after it feed the first chunk's
play-through estimate, which must see the steady rate); and under the default ``"guarded"`` policy
only while every stream a listener already hears is ahead of playback by :data:`BOOST_LEAD_MARGIN`
times the pass's cost. Rows are batch-invariant, so a boosted stream's audio is bit for bit what
it would be without.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..codec.batch import batch_invariance
from ..config import SAMPLE_RATE
from ..generation.outputs import SyncTokGenerationOutput
from ..generation.program import PREFILL_CHUNK, ModelShape, SpeechProgram
from ..generation.requests import FlowSolve, LlmStep, Logits, NeedText
from ..generation.text_input import TextCancelled, TextInput
from ..limits import BOOST_POLICIES
from ..nn.kv_cache import ROWS_PER_SLOT, CacheFullError, CacheSpec, SlotPool
from .graphs import CompileOptions, StepGraphs, bucket_for
from .runner import Runner

if TYPE_CHECKING:  # the weights sit below the engine: a type only
    from ..codec.streaming import StreamingDecoder
    from ..weights import TadaWeights

logger = logging.getLogger("tadastream.engine")

QUEUED, RUNNING, DONE = "queued", "running", "done"
TICK_LOG_LENGTH = 256
#: ``guarded`` boost: each heard stream's audio decoded ahead of playback must exceed the pass's
#: predicted seconds this many times (room for the ticks the boost lasts, and for noise).
BOOST_LEAD_MARGIN = 4.0


@dataclass(frozen=True)
class TickRecord:
    """One tick as the engine saw it: LLM rows x positions, running streams, wall seconds."""

    rows: int
    streams: int
    seconds: float


class Sink(Protocol):
    """Where a stream's outcome goes; called on the engine's ticking thread.

    The program's ``emit`` delivers settled frames as they come; ``parked`` says the stream now
    waits for text that has not arrived; exactly one of ``finish``, ``fail`` and ``cancelled``
    ends the stream. A sink that speaks has a deferred
    :class:`~tadastream.codec.streaming.StreamingDecoder` as ``decoder`` (None once it needs no more
    decoding): the engine's decode phase computes its calls with every other stream's and hands
    each call's samples to ``decoded``, also after ``finish``, until the decoder has flushed.
    """

    decoder: StreamingDecoder | None

    def decoded(self, samples: torch.Tensor, seconds: float) -> None: ...

    def parked(self) -> None: ...

    def finish(self, result: SyncTokGenerationOutput) -> None: ...

    def fail(self, error: BaseException) -> None: ...

    def cancelled(self) -> None: ...


class EngineStream:
    """One stream in an engine: its program, slot and pending request. ``cancel()`` from any thread."""

    def __init__(self, engine: Engine, program: SpeechProgram, sink: Sink, text: TextInput | None):
        self.engine, self.program, self.sink, self.text = engine, program, sink, text
        self.state = QUEUED
        self.pending: Any = None
        self.slot = None
        self.cancel_requested = False
        self.submitted_at = time.perf_counter()
        self._run = None
        self.steps = 0  # LLM steps answered (prefill chunks included)
        self.first_audio_at: float | None = None  # when its decoder first gave samples (perf_counter)

    @property
    def done(self) -> bool:
        return self.state == DONE

    @property
    def frames_settled(self) -> int:
        """Audio frames (50 a second) this stream has settled for its listener so far."""
        decoder = getattr(self.sink, "decoder", None)
        return decoder.frames_in if decoder is not None else 0

    @property
    def joining(self) -> bool:
        """A speaking stream whose next LLM step comes before its first audio frame: what a boost pass runs."""
        decoder = getattr(self.sink, "decoder", None)
        return decoder is not None and decoder.frames_in == 0 and isinstance(self.pending, LlmStep)

    def lead(self, now: float) -> float | None:
        """Seconds of audio decoded ahead of a playback that started at its first audio; None before
        that. A listener's playback starts later (the first chunk is held), so its buffer is larger."""
        decoder = getattr(self.sink, "decoder", None)
        if self.first_audio_at is None or decoder is None:
            return None
        return decoder.samples_out / SAMPLE_RATE - (now - self.first_audio_at)

    @property
    def waiting_for_text(self) -> bool:
        """Parked until more text arrives."""
        return self.state == RUNNING and isinstance(self.pending, NeedText)

    def cancel(self) -> None:
        self.engine.cancel(self)


class Engine:
    """Batched generation over one shared model.

    Args:
        model: loaded :class:`~tadastream.weights.TadaWeights`; the engine never changes them.
        max_streams: slots, i.e. streams generating at once; more wait in FIFO order.
        prefill_chunk: prompt positions per LLM call while a stream joins.
        compile: ``True`` or :class:`~tadastream.engine.graphs.CompileOptions` to run the LLM step
            and the flow solve as compiled fixed-shape calls (CUDA graphs on CUDA) over a
            preallocated slot arena; :meth:`warmup` builds them ahead of the first stream.
        first_audio_boost: one of :data:`~tadastream.limits.BOOST_POLICIES`: when a joining stream gets a boost pass
            (see the module docstring). An attribute: a server may change it on a shared engine.
    """

    def __init__(
        self,
        model: TadaWeights,
        *,
        max_streams: int = 8,
        prefill_chunk: int = PREFILL_CHUNK,
        compile: CompileOptions | bool | None = None,
        first_audio_boost: str = "guarded",
    ):
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {max_streams}")
        self._first_audio_boost = "guarded"
        self.first_audio_boost = first_audio_boost
        self.model = model
        self.shape = ModelShape.of(model)
        spec = CacheSpec.for_config(model.config, model.dtype, model.device)
        options = CompileOptions() if compile is True else (compile or None)
        self.graphs: StepGraphs | None = None
        if options is not None:
            rows = bucket_for(max_streams * ROWS_PER_SLOT)
            self.pool = SlotPool(spec, max_streams, static_positions=options.max_positions, arena_rows=rows)
            assert self.pool.arena is not None
            self.graphs = StepGraphs(model, self.pool.arena, options)
        else:
            self.pool = SlotPool(spec, max_streams)
        self.runner = Runner(model, self.graphs)
        self.max_streams = max_streams
        self.prefill_chunk = prefill_chunk
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._tick_lock = threading.Lock()
        self._queued: collections.deque[EngineStream] = collections.deque()
        self._running: list[EngineStream] = []
        self._worker: threading.Thread | None = None
        self._closed = False
        self._stopping = False
        self.ticks = 0
        self.tick_rows = 0  # LLM rows computed, over all ticks
        # Seconds spent, over all ticks: each batched call (the codec's decode phase included) and
        # resuming programs (their own logic, delivering frames to their sinks).
        self.seconds = dict.fromkeys(("llm", "flow", "logits", "programs", "decode"), 0.0)
        self.decode_calls = 0  # batched decode calls, and the streams' calls in them
        self.decoded_streams = 0
        self.boost_passes = 0  # ticks that ended with a boost pass for joining streams
        self._boost_seconds: float | None = None  # the latest boost pass's wall time
        self._draining: list[Sink] = []  # ended streams whose decoders still have a tail to decode
        #: The latest ticks that ran an LLM step (what a capacity model learns tick time from).
        self.tick_log: collections.deque[TickRecord] = collections.deque(maxlen=TICK_LOG_LENGTH)

    @property
    def first_audio_boost(self) -> str:
        return self._first_audio_boost

    @first_audio_boost.setter
    def first_audio_boost(self, policy: str) -> None:
        if policy not in BOOST_POLICIES:
            raise ValueError(f"first_audio_boost must be one of {', '.join(BOOST_POLICIES)}, got {policy!r}")
        self._first_audio_boost = policy

    # -- submitting and cancelling (any thread) ---------------------------------------------
    def submit(self, program: SpeechProgram, sink: Sink, text: TextInput | None = None) -> EngineStream:
        """Queue a program; it starts at the next tick that finds a free slot."""
        stream = EngineStream(self, program, sink, text)
        if text is not None:
            text.subscribe(self.notify)
        with self._lock:
            if self._closed:
                raise RuntimeError("this engine is closed")
            self._queued.append(stream)
            self._changed.notify_all()
        return stream

    def cancel(self, stream: EngineStream) -> None:
        """Stop a stream: it leaves at the next tick boundary (at once when no tick is running)."""
        with self._lock:
            stream.cancel_requested = True
            self._changed.notify_all()
        if self._tick_lock.acquire(blocking=False):
            try:
                self._apply_cancellations()
            finally:
                self._tick_lock.release()

    def notify(self) -> None:
        with self._lock:
            self._changed.notify_all()

    # -- state ------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def kv_cache_bytes_in_use(self) -> int:
        """Bytes of the KV slots running streams hold; ``pool.nbytes`` also counts the free slots kept for
        reuse (a compiled engine: its whole arena). Reads a copy of the running list: safe from any thread."""
        slots = [s.slot for s in list(self._running)]
        return sum(slot.nbytes for slot in slots if slot is not None)

    @property
    def has_worker(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def runnable(self) -> bool:
        """Whether a tick would move something now."""
        if self._queued and (self.pool.available or any(s.cancel_requested for s in self._queued)):
            return True
        for s in self._running:
            if s.cancel_requested or isinstance(s.pending, LlmStep):
                return True
            if isinstance(s.pending, NeedText) and s.text is not None and s.text.has_news:
                return True
        return any(sink.decoder is not None and not sink.decoder.idle for sink in list(self._draining))

    def wait(self, ready: Callable[[], bool], timeout: float | None = None) -> bool:
        """Block until ``ready()`` (checked whenever the engine's state changes) or the timeout."""
        with self._changed:
            return self._changed.wait_for(ready, timeout)

    # -- ticking ------------------------------------------------------------------------------
    @torch.inference_mode()
    def tick(self) -> bool:
        """One tick; returns False when nothing could move (every stream parked, or none)."""
        with self._tick_lock:
            started = time.perf_counter()
            self._apply_cancellations()
            moved = self._admit()
            moved = self._wake_parked() or moved
            llm = [s for s in self._running if isinstance(s.pending, LlmStep)]
            rows = self._rows(llm)
            if llm:
                self._model_phases(llm)
            decoded = self._decode()
            if llm:
                self.ticks += 1
                seconds = time.perf_counter() - started
                self.tick_log.append(TickRecord(rows, len(llm), seconds))
                self._boost(seconds)
            self._apply_cancellations()
        self.notify()
        return moved or bool(llm) or decoded

    @staticmethod
    def _rows(streams: list[EngineStream]) -> int:
        return sum(s.pending.rows * s.pending.length for s in streams)

    def _model_phases(self, streams: list[EngineStream]) -> None:
        """One LLM call for every stream's step, one flow solve, one logits call, each resuming them."""
        self._phase(streams, LlmStep, "llm", lambda reqs: self.runner.llm([(s.slot, r) for s, r in reqs]))
        self._phase(streams, FlowSolve, "flow", lambda reqs: self.runner.flow([r for _, r in reqs]))
        self._phase(streams, Logits, "logits", lambda reqs: self.runner.logits([r for _, r in reqs]))

    def _boost(self, tick_seconds: float) -> None:
        """The boost pass for joining streams, when the policy lets it (see the module docstring)."""
        if self.first_audio_boost == "off":
            return
        joining = [s for s in self._running if s.joining]
        stepping = sum(isinstance(s.pending, LlmStep) for s in self._running)  # parked streams do not
        if not joining or len(joining) == stepping:  # no one else steps: the next tick serves them alone
            return
        if self.first_audio_boost == "guarded":
            cost = self._boost_seconds if self._boost_seconds is not None else tick_seconds
            now = time.perf_counter()
            # a stream parked for text is not slowed by a boost: its gap is its text's
            leads = [lead for s in self._running if not s.waiting_for_text and (lead := s.lead(now)) is not None]
            if not leads or min(leads) < BOOST_LEAD_MARGIN * cost:
                return
        started = time.perf_counter()
        rows = self._rows(joining)
        self._model_phases(joining)  # no decode: before its first frame a stream has nothing to decode
        self._boost_seconds = time.perf_counter() - started
        self.boost_passes += 1
        self.tick_log.append(TickRecord(rows, len(joining), self._boost_seconds))

    def _decode(self) -> bool:
        """The decode phase: every stream's due decode call (ended streams' tails included), as one
        batched call; each sink gets its samples, and a running stream's first samples stamp
        ``first_audio_at``."""
        unheard = {id(s.sink): s for s in self._running if s.first_audio_at is None}
        work = []
        for sink in [s.sink for s in self._running] + self._draining:
            decoder = getattr(sink, "decoder", None)
            call = decoder.take_call() if decoder is not None else None
            if call is not None:
                work.append((sink, decoder, call))
        if not work:
            return False
        try:
            seconds = self.runner.decode([call for _, _, call in work])
        except Exception as exc:  # no stream's audio from this call can be trusted
            logger.exception("batched decode call failed for %d stream(s)", len(work))
            for sink, _, _ in work:
                self._fail_sink(sink, exc)
        else:
            self.seconds["decode"] += seconds
            self.decode_calls += 1
            self.decoded_streams += len(work)
            now = time.perf_counter()
            for sink, decoder, call in work:
                try:
                    samples = decoder.complete(call)
                    if samples.numel() and (stream := unheard.get(id(sink))) is not None:
                        stream.first_audio_at = now
                    sink.decoded(samples, seconds)
                except Exception as exc:  # its audio or its end went astray: the stream fails
                    logger.exception("a stream's sink failed while taking decoded audio")
                    self._fail_sink(sink, exc)
        self._draining = [sink for sink in self._draining if sink.decoder is not None and not sink.decoder.finished]
        return True

    def _fail_sink(self, sink: Sink, error: BaseException) -> None:
        """End the stream of ``sink`` with ``error``, running (its slot freed) or with a tail left."""
        stream = next((s for s in self._running if s.sink is sink), None)
        if stream is not None:
            self._retire(stream, functools.partial(sink.fail, error))
            return
        try:
            sink.fail(error)
        except Exception:
            logger.exception("a stream's sink failed while ending it")

    def _phase(self, streams: list[EngineStream], kind: type, name: str, call) -> None:
        """Answer every ``kind`` request among ``streams`` with one call, and resume them."""
        todo = [s for s in streams if s.state == RUNNING and isinstance(s.pending, kind)]
        if kind is LlmStep and self.pool.static:
            todo = [s for s in todo if self._fits(s)]
        if not todo:
            return
        if kind is LlmStep:
            self.tick_rows += sum(s.pending.rows * s.pending.length for s in todo)
            for s in todo:
                s.steps += 1
        try:
            results = call([(s, s.pending) for s in todo])
        except Exception as exc:  # a batched call failed: no row of it can be trusted
            logger.exception("batched %s call failed for %d stream(s)", kind.__name__, len(todo))
            for s in todo:
                self._retire(s, functools.partial(s.sink.fail, exc))
            return
        self.seconds[name] += results[0].seconds if results else 0.0
        for s, result in zip(todo, results):
            self._advance(s, result)

    def _fits(self, stream: EngineStream) -> bool:
        """Whether the stream's LLM step fits its static slot; if not, it alone fails (text that
        arrives in pieces has no length to check at admission)."""
        end = stream.pending.start + stream.pending.length
        if end <= self.pool.capacity:
            return True
        error = CacheFullError(
            f"this stream needs more than the {self.pool.capacity} positions the compiled engine's slots "
            f"hold: compile with a larger max_positions (--max-positions)"
        )
        self._retire(stream, functools.partial(stream.sink.fail, error))
        return False

    def _advance(self, stream: EngineStream, value: Any) -> None:
        """Resume a stream's program with ``value``; it answers with its next request or ends."""
        start = time.perf_counter()
        try:
            stream.pending = stream._run.send(value)
            if isinstance(stream.pending, NeedText) and not stream.text.has_news:
                stream.sink.parked()
        except StopIteration as stop:
            self._retire(stream, functools.partial(stream.sink.finish, stop.value))
        except TextCancelled:
            self._retire(stream, stream.sink.cancelled)
        except Exception as exc:
            self._retire(stream, functools.partial(stream.sink.fail, exc))
        finally:
            self.seconds["programs"] += time.perf_counter() - start

    def _admit(self) -> bool:
        admitted = False
        while self._queued and self.pool.available:
            with self._lock:
                stream = self._queued.popleft()
            if stream.cancel_requested:
                self._retire(stream, stream.sink.cancelled)
                continue
            program = stream.program
            if self.pool.static and program.plan.num_steps and program.plan.num_steps > self.pool.capacity:
                error = CacheFullError(
                    f"this text needs {program.plan.num_steps} positions but the compiled engine's slots hold "
                    f"{self.pool.capacity}: compile with a larger max_positions (--max-positions)"
                )
                self._retire(stream, functools.partial(stream.sink.fail, error))
                continue
            stream.slot = self.pool.acquire(program.rows, program.positions_hint)
            stream.state = RUNNING
            stream._run = program.run()
            self._running.append(stream)
            self._advance(stream, None)
            admitted = True
        return admitted

    def _wake_parked(self) -> bool:
        woke = False
        for s in list(self._running):
            if isinstance(s.pending, NeedText) and s.text is not None and s.text.has_news:
                self._advance(s, None)
                woke = True
        return woke

    def _apply_cancellations(self) -> None:
        with self._lock:
            queued = [s for s in self._queued if s.cancel_requested]
            for s in queued:
                self._queued.remove(s)
        for s in queued + [s for s in self._running if s.cancel_requested]:
            self._retire(s, s.sink.cancelled)

    def _retire(self, stream: EngineStream, deliver: Callable[[], None]) -> None:
        """Free the stream's slot and program, then tell its sink how it ended."""
        if stream.state == DONE:
            return
        if stream in self._running:
            self._running.remove(stream)
        if stream.slot is not None:
            self.pool.release(stream.slot)
            stream.slot = None
        if stream._run is not None:
            stream._run.close()
            stream._run = None
        stream.pending = None
        stream.state = DONE
        try:
            deliver()
        except Exception:
            logger.exception("a stream's sink failed while ending it")
        decoder = getattr(stream.sink, "decoder", None)
        if decoder is not None and not decoder.finished:
            self._draining.append(stream.sink)

    # -- warm-up --------------------------------------------------------------------------------
    @torch.inference_mode()
    def warmup(self) -> Engine:
        """Build what the first streams would otherwise wait for: with ``compile``, every bucket's
        compiled (and captured) LLM step and flow solve for the default options; without, one LLM
        step, flow solve and logits call at batch 1 (kernel choices, allocations); and which parts
        of a decode call batch exactly on this machine. Touches no slot a stream holds."""
        from ..generation.options import InferenceOptions

        model, dim = self.model, self.model.config.acoustic_dim
        width = dim + model.time_dim
        hidden = torch.zeros(1, model.config.hidden_size, dtype=model.dtype, device=model.device)

        def solves(rows: int) -> list[FlowSolve]:
            if rows > bucket_for(self.max_streams):
                return []
            noise = torch.zeros(1, width, dtype=model.dtype, device=model.device)
            return [FlowSolve(noise, hidden, hidden, InferenceOptions())] * min(rows, self.max_streams)

        with self._tick_lock:
            started = time.perf_counter()
            if self.graphs is not None:
                built = self.graphs.warmup(self.max_streams * ROWS_PER_SLOT, solves)
            else:
                built = self._warm_eager(solves(1))
            if self.max_streams > 1 and model.decoder is not None:  # measured once, else by the first shared call
                batch_invariance(model.decoder)
            logger.info("warm-up: %d call(s) built in %.1f s", built, time.perf_counter() - started)
        return self

    def _warm_eager(self, solves: list[FlowSolve]) -> int:
        model, dim = self.model, self.model.config.acoustic_dim
        slot = self.pool.acquire(1, 1)
        try:
            zeros = torch.zeros(1, 1, dtype=torch.long, device=model.device)
            acoustic = torch.zeros(1, 1, dim, dtype=model.dtype, device=model.device)
            (hidden,) = self.runner.llm([(slot, LlmStep(zeros, acoustic, zeros, zeros, zeros, start=0))])
            self.runner.flow(solves)
            self.runner.logits([Logits(hidden.value[:, -1])])
        finally:
            self.pool.release(slot)
        return 3

    # -- driving ------------------------------------------------------------------------------
    def run_until(self, done: Callable[[], bool]) -> bool:
        """Tick in this thread until ``done()``; returns False when nothing can move before that."""
        while not done():
            if not self.tick():
                return done()
        return True

    def start(self) -> Engine:
        """Tick on a background thread whenever there is work (idle otherwise)."""
        if self.has_worker:
            return self
        self._worker = threading.Thread(target=self._work, name="tadastream-engine", daemon=True)
        self._worker.start()
        return self

    def stop(self) -> None:
        """Stop the background worker, cancelling every stream, and keep the engine usable (a model's
        shared engine outlives the server that ticked it); :meth:`close` ends it for good."""
        worker = self._worker
        with self._lock:
            self._stopping = True
            for s in list(self._queued) + list(self._running):
                s.cancel_requested = True
            self._changed.notify_all()
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=30)
        with self._tick_lock:
            self._apply_cancellations()
            self._drop_tails()
        self._worker, self._stopping = None, False

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closed or self._stopping or self.runnable())
                if self._closed or self._stopping:
                    return
            try:
                self.tick()
            except Exception:  # per-stream failures are handled inside; this is a bug
                logger.exception("engine tick failed")

    def close(self) -> None:
        """Cancel every stream and stop the worker."""
        with self._lock:
            self._closed = True
            streams = list(self._queued) + list(self._running)
            for s in streams:
                s.cancel_requested = True
            self._changed.notify_all()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=30)
        with self._tick_lock:
            self._apply_cancellations()
            self._drop_tails()

    def _drop_tails(self) -> None:
        """Streams that ended but still had audio to decode end now, without it (the engine stops)."""
        draining, self._draining = self._draining, []
        for sink in draining:
            try:
                sink.cancelled()
            except Exception:
                logger.exception("a stream's sink failed while ending it")

    def stats(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "queued": self.queued,
            "max_streams": self.max_streams,
            "ticks": self.ticks,
            "kv_cache_bytes": self.pool.nbytes,
            "kv_cache_bytes_in_use": self.kv_cache_bytes_in_use,
            "compiled": self.graphs is not None,
            "seconds": {name: round(value, 3) for name, value in self.seconds.items()},
            "decode_calls": self.decode_calls,
            "decoded_streams": self.decoded_streams,
            "boost_passes": self.boost_passes,
        }


def engine_for(model: TadaWeights, engine: Engine | None = None, max_streams: int = 1) -> Engine:
    """The engine a call runs on: the one given (a model's shared engine is passed down by
    :meth:`~tadastream.model.TadaForCausalLM.generate`), else a new one with ``max_streams`` slots."""
    return engine if engine is not None else Engine(model, max_streams=max_streams)
