"""The speech service: one model, its batched engine and admission, for every front end.

* **One batched engine.** Every admitted request is a stream in one
  :class:`~tadastream.engine.Engine` ticked by a background worker: each tick advances every
  stream at once (one backbone call over all their rows, one flow solve, ...), so 8 concurrent
  requests cost little more than one instead of taking turns. A stream whose text is still
  arriving (the WebSocket) is parked between pieces, holding no thread and no tick time.
* **Per-request randomness.** Each stream draws from generators seeded with its request's seed
  (:class:`~tadastream.generation.StreamRng`), never from torch's global ones: same seed, same
  audio, whatever else runs.
* **Admission.** At most ``max_streams`` generations hold a slot; up to ``queue`` more wait in
  FIFO order for at most ``queue_timeout`` seconds (:class:`Admission`). With
  ``admission="realtime"`` a request also waits while the engine's
  :class:`~tadastream.engine.capacity.CapacityModel` predicts that one more stream would make some
  stream fall behind playback.
* **One request type.** A front end checks its fields (:mod:`~tadastream.service.checks`) and
  hands :meth:`SpeechService.start` a :class:`~tadastream.generation.SpeechRequest`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from ..config import SAMPLE_RATE
from ..drivers.longform import LongFormStream, open_stream
from ..drivers.stream import AudioStream
from ..engine import Engine
from ..engine.capacity import CapacityModel
from ..generation import GenerationInputError, SpeechRequest, StreamRng, TextInput
from ..limits import ADMISSION_POLICIES, REALTIME_MARGIN
from ..playback import playback_figures
from .checks import input_error
from .refusals import RequestRefused

T = TypeVar("T")


# -- admission --------------------------------------------------------------------------------
class Admission:
    """At most ``max_active`` holders; up to ``max_waiting`` more wait (FIFO) for ``timeout`` s.

    With a ``capacity`` model (``--admission realtime``) a request also needs the model to predict
    that every stream stays ahead of playback with it; as that changes while streams progress,
    waiters are re-checked every ``recheck`` seconds besides whenever a holder leaves.

    ``acquire`` raises :class:`RequestRefused` 429 when the queue is full and 503 when the wait
    times out; a waiter that is cancelled (client gone) leaves the queue.
    """

    def __init__(
        self,
        max_active: int,
        max_waiting: int,
        timeout: float,
        capacity: CapacityModel | None = None,
        recheck: float = 0.25,
    ):
        if max_active < 1 or max_waiting < 0 or timeout < 0 or not recheck > 0:
            raise ValueError("max_active must be >= 1, max_waiting and timeout >= 0, recheck > 0")
        self.max_active, self.max_waiting, self.timeout = max_active, max_waiting, timeout
        self.capacity, self.recheck = capacity, recheck
        self.active = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self.mean_hold: float | None = None  # seconds a slot is held, averaged over recent releases

    @property
    def policy(self) -> str:
        return "slots" if self.capacity is None else "realtime"

    def retry_after(self) -> int:
        """Seconds until a retry may find room: the queue ahead, served as many at a time as may run
        (the slots, or the real-time capacity when that is lower), at the recent time a slot is held
        (5 s before any request finished)."""
        hold = self.mean_hold if self.mean_hold is not None else 5.0
        at_once = self.max_active
        capacity = self.capacity.capacity() if self.capacity is not None else None
        if capacity is not None:
            at_once = max(1, min(at_once, capacity))
        return max(1, min(3600, math.ceil(hold * (self.waiting + 1) / at_once)))

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in self._waiters)

    def has_room(self) -> bool:
        """Whether one more request may start now: a free slot and, with a capacity model, its word."""
        if self.active >= self.max_active:
            return False
        if self.capacity is None or self.active == 0:  # alone, no stream is helped by waiting
            return True
        # holders whose stream is not running in the engine yet (being planned, between segments)
        # are newcomers as much as this one
        return self.capacity.admits(max(1, self.active + 1 - self.capacity.running()))

    def snapshot(self) -> dict[str, Any]:
        """The policy, and with ``realtime`` what the capacity model sees (for /health)."""
        return {"policy": "slots"} if self.capacity is None else self.capacity.snapshot()

    async def acquire(self) -> None:
        if not self.waiting and self.has_room():
            self.active += 1
            return
        if self.waiting >= self.max_waiting:
            retry_after = self.retry_after()
            if self.active < self.max_active:  # slots free: the capacity model said no
                message = (
                    f"the server is at its real-time capacity ({self.active} running) and the queue is full; "
                    f"retry in {retry_after} s"
                )
            else:
                message = f"all {self.max_active} streams are busy and the queue is full; retry shortly"
            raise RequestRefused(429, message, "queue_full", retry_after=retry_after)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                while not waiter.done():
                    # without a capacity model only a release makes room, and it hands the slot over
                    await asyncio.wait([waiter], timeout=None if self.capacity is None else self.recheck)
                    self._hand_out()
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # the slot arrived together with the timeout: keep it
            if waiter in self._waiters:  # so the estimate counts only those still waiting ahead
                self._waiters.remove(waiter)
            retry_after = self.retry_after()
            if self.capacity is not None and self.active < self.max_active:  # slots free: the model said no
                message = (
                    f"the server stayed at its real-time capacity ({self.active} running) for "
                    f"{self.timeout:g} s; retry in {retry_after} s"
                )
            else:
                message = f"no stream became free within {self.timeout:g} s; retry later"
            raise RequestRefused(503, message, "queue_timeout", retry_after=retry_after) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, but nobody will use it
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self, held: float | None = None) -> None:
        """Free a slot and hand room to the oldest live waiters; ``held``: seconds it was used."""
        if held is not None:
            self.mean_hold = held if self.mean_hold is None else 0.7 * self.mean_hold + 0.3 * held
        self.active -= 1
        self._hand_out()

    def _hand_out(self) -> None:
        """Admit waiters, oldest first, while there is room."""
        while self._waiters and self.has_room():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.active += 1
                waiter.set_result(None)


# -- one generation ---------------------------------------------------------------------------
class SpeechJob:
    """One admitted generation: its stream in the shared engine, and its timings.

    ``next_chunk`` awaits the next chunk (no thread: the engine's worker computes); ``cancel``
    stops generation at the next tick; ``finish`` (always call it) frees the slot.
    """

    def __init__(self, service: SpeechService, stream: AudioStream | LongFormStream, seed: int, started: float):
        self.service, self.stream, self.seed = service, stream, seed
        self.started = started  # when the request arrived (perf_counter)
        self.admitted = time.perf_counter()
        self.first_audio: float | None = None
        self.samples = 0
        self.chunks = 0
        self.chunk_times: list[float] = []  # seconds since the request arrived, as the client's side sees them
        self.chunk_samples: list[int] = []
        self.cancelled = False
        self._finished = False
        self._words_sent = 0

    def new_words(self) -> list[dict[str, Any]]:
        """Words timed since the last call, as JSON objects. Each comes with (or before) the chunk that
        ends it, so sending them before that chunk's audio keeps a client's captions ahead of the sound."""
        words = self.stream.words[self._words_sent :]
        self._words_sent += len(words)
        return [w.to_dict() for w in words]

    @property
    def text(self) -> TextInput | None:
        """The text still arriving (WebSocket), else None."""
        return self.stream.text

    async def next_chunk(self) -> torch.Tensor | None:
        """The next float32 chunk (24 kHz mono), or None at the end or after cancel."""
        if self.cancelled or self._finished:
            return None
        try:
            chunk = await self.stream.read()
        except GenerationInputError as exc:  # found when the text ended: empty, too long
            raise input_error(exc) from None
        if chunk is None:
            return None
        now = time.perf_counter()
        if self.first_audio is None:
            self.first_audio = now
        self.samples += int(chunk.numel())
        self.chunks += 1
        self.chunk_times.append(now - self.started)
        self.chunk_samples.append(int(chunk.numel()))
        return chunk

    def cancel(self) -> None:
        """Stop generating at the next tick. Safe from the event loop."""
        self.cancelled = True
        if self.stream.text is not None:
            self.stream.text.close()
        self.stream.close()

    def finish(self) -> None:
        """Cancel if still running and give the slot back."""
        if self._finished:
            return
        self._finished = True
        self.cancel()
        self.service.admission.release(time.perf_counter() - self.admitted)

    def timings(self) -> dict[str, Any]:
        """Seconds: queue wait, time to first and to playable audio from the request (and the stalls of
        a player starting on the first chunk), total; and the audio made."""
        now = time.perf_counter()
        audio_s = self.samples / SAMPLE_RATE
        total = now - self.started
        heard = playback_figures(self.chunk_times, self.chunk_samples, SAMPLE_RATE)
        playable = heard.time_to_playable_audio
        return {
            "seed": self.seed,
            "queue_time": round(self.admitted - self.started, 4),
            "time_to_first_audio": None if self.first_audio is None else round(self.first_audio - self.started, 4),
            "time_to_playable_audio": None if playable is None else round(playable, 4),
            "stall_count": heard.stall_count,
            "stall_time": round(heard.stall_time, 4),
            "total_time": round(total, 4),
            "audio_seconds": round(audio_s, 4),
            "chunks": self.chunks,
            "real_time_factor": round((now - self.admitted) / audio_s, 4) if audio_s else None,
        }


class SpeechService:
    """One loaded model, its batched engine (ticked by a worker thread) and admission control.

    ``admission``: ``"slots"`` admits while one of ``max_streams`` slots is free; ``"realtime"`` also
    asks the engine's :class:`~tadastream.engine.capacity.CapacityModel` (``realtime_margin``).
    ``first_audio_boost`` sets the engine's policy for streams joining others (None keeps its own).
    """

    def __init__(
        self,
        model,
        *,
        max_streams: int = 4,
        queue: int = 16,
        queue_timeout: float = 30.0,
        admission: str = "slots",
        realtime_margin: float = REALTIME_MARGIN,
        first_audio_boost: str | None = None,
    ):
        if admission not in ADMISSION_POLICIES:
            raise ValueError(f"admission must be one of {', '.join(ADMISSION_POLICIES)}, got {admission!r}")
        self.model = model
        # a compiled or warmed-up model brings its engine (load_model(compile=..., warmup=...))
        shared = model.engine
        if shared is not None and shared.max_streams < max_streams:
            raise ValueError(
                f"max_streams={max_streams} exceeds the {shared.max_streams} slots the model's engine was "
                f"built with: load it with max_streams={max_streams}"
            )
        self._owns_engine = shared is None
        engine = shared if shared is not None else Engine(model, max_streams=max_streams)
        if first_audio_boost is not None:  # the engine's policy (checked there); None keeps it
            engine.first_audio_boost = first_audio_boost
        capacity = CapacityModel(engine, margin=realtime_margin) if admission == "realtime" else None
        self.admission = Admission(max_streams, queue, queue_timeout, capacity)  # checks before a thread starts
        self.engine = engine.start()
        # Voice encoding (rare, seconds long) runs beside the engine, one at a time.
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tadastream-encode")

    #: What a server's options set on its service: ``serve``'s and ``wyoming``'s flags of these names.
    OPTIONS = ("max_streams", "queue", "queue_timeout", "admission", "realtime_margin", "first_audio_boost")

    @classmethod
    def from_options(cls, model, options: Any) -> SpeechService:
        """The service for parsed server options or :class:`~tadastream.server.settings.ServerSettings`:
        anything with the attributes in :attr:`OPTIONS`."""
        return cls(model, **{name: getattr(options, name) for name in cls.OPTIONS})

    async def start(self, request: SpeechRequest, started: float) -> SpeechJob:
        """Wait for a slot, then start speaking ``request`` (made by :func:`speech_request`, with a
        seed); ``started``: when the request arrived. Raises RequestRefused (400/429/503).

        Its text is the whole text, or a :class:`~tadastream.generation.TextInput` still being
        filled: generation starts at once and takes pieces as they come; the audio is the same.
        """
        await self.admission.acquire()

        def create() -> AudioStream | LongFormStream:  # plans (tokenizes, checks) off the event loop
            # a text too long for one generation is spoken in segments (long form)
            return open_stream(self.model, request, self.engine)

        try:
            stream = await asyncio.to_thread(create)
        except GenerationInputError as exc:
            self.admission.release()
            raise input_error(exc) from None
        except BaseException:
            self.admission.release()
            raise
        return SpeechJob(self, stream, request.seed, started)

    def run(self, fn: Callable[[torch.Generator], T], seed: int = 0) -> concurrent.futures.Future:
        """Run other random work (voice encoding) off the event loop, with a generator seeded by ``seed``."""
        return self.executor.submit(fn, StreamRng.from_seed(seed, self.model.device).device)

    def shutdown(self) -> None:
        if self._owns_engine:
            self.engine.close()
        else:  # the model's engine: its streams end, the model stays usable
            self.engine.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
