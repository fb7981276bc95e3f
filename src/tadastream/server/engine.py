"""The server's generation engine, free of any web framework.

Three concerns live here:

* **Per-request randomness.** An :class:`~tadastream.stream.AudioStream` forks torch's global RNG
  state into private generators when it is created, and draws only from those afterwards. So the
  server makes *creation* atomic with seeding: under one process-wide lock it swaps the state
  ``torch.manual_seed(seed)`` would give into torch's global generators, creates the stream, and
  restores the previous state (:func:`run_isolated`). Steps then need no lock: each stream sees
  exactly the random numbers it would see alone after ``torch.manual_seed(seed)``, however many
  streams interleave with it, and the global state seen by other code never changes.
* **Admission.** At most ``max_streams`` generations hold a slot; up to ``queue`` more wait in
  FIFO order for at most ``queue_timeout`` seconds (:class:`Admission`).
* **Voices.** Named ``NAME.voice`` files in a folder, validated names, uploads (:class:`VoiceStore`).

Steps of all streams run on one worker thread: on a CPU, parallel steps would only fight over the
cores torch already uses, and a FIFO executor gives interleaved streams round-robin fairness at
chunk granularity. The exception is a stream whose text is still arriving (:class:`TextPieces`):
its steps may block until the client sends more, so until the text has ended they run on a
thread of their own (one per such stream), never stalling the shared worker; once the text has
ended every piece is queued, nothing can block, and its steps go back to the shared worker.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import os
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..generation import GenerationInputError, InferenceOptions
from ..model import generate
from ..stream import TextCancelled

T = TypeVar("T")

SAMPLE_RATE = 24000
MAX_SEED = 2**63 - 1
VOICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: OpenAI's built-in voice names; they mean "the default voice" unless a file of that name exists.
OPENAI_VOICES = frozenset(
    "alloy ash ballad cedar coral echo fable marin nova onyx sage shimmer verse".split() + ["default"]
)
#: Caps on per-request options, so one request cannot monopolise the worker for minutes.
OPTION_LIMITS = {"num_flow_matching_steps": 64, "num_acoustic_candidates": 8}

# torch's default generators are global to the process, so the lock guarding them is too (and is
# shared by every app created in the process).
_RNG_LOCK = threading.Lock()


class EngineError(Exception):
    """A request the engine refuses; ``status`` and ``code`` map onto an HTTP error."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None, retry_after: float = 0):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.retry_after = status, message, code, param, retry_after


# -- randomness -------------------------------------------------------------------------------
@dataclasses.dataclass
class RngState:
    """Torch's default generator states (CPU, and CUDA if used) that one request starts from."""

    cpu: torch.Tensor
    cuda: torch.Tensor | None = None
    cuda_device: int | None = None

    @classmethod
    def from_seed(cls, seed: int, device: torch.device | str = "cpu") -> RngState:
        """The state ``torch.manual_seed(seed)`` would leave, without touching the global one."""
        device = torch.device(device)
        cpu = torch.Generator().manual_seed(seed).get_state()
        if device.type != "cuda":
            return cls(cpu)
        index = device.index if device.index is not None else torch.cuda.current_device()
        cuda = torch.Generator(device=f"cuda:{index}").manual_seed(seed).get_state()
        return cls(cpu, cuda, index)


def run_isolated(state: RngState, fn: Callable[[], T]) -> T:
    """Run ``fn`` with ``state`` as torch's global RNG state, then store the advanced state back.

    The lock makes the swap atomic with respect to everything else that goes through here; the
    previous global state is restored afterwards, so code outside the server sees no change.
    """
    with _RNG_LOCK:
        saved_cpu = torch.get_rng_state()
        saved_cuda = torch.cuda.get_rng_state(state.cuda_device) if state.cuda is not None else None
        torch.set_rng_state(state.cpu)
        if state.cuda is not None:
            torch.cuda.set_rng_state(state.cuda, state.cuda_device)
        try:
            return fn()
        finally:
            state.cpu = torch.get_rng_state()
            torch.set_rng_state(saved_cpu)
            if state.cuda is not None:
                state.cuda = torch.cuda.get_rng_state(state.cuda_device)
                torch.cuda.set_rng_state(saved_cuda, state.cuda_device)


def new_seed() -> int:
    """A random seed for requests without one; it is reported back so the audio can be reproduced."""
    return secrets.randbelow(2**31)


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise EngineError(400, f"seed must be an integer in [0, {MAX_SEED}]", "invalid_seed", "seed")
    return seed


def inference_options(options: dict[str, Any] | None, speed: float | None, model) -> InferenceOptions:
    """Build validated InferenceOptions from a request's ``options`` and ``speed``.

    ``speed`` maps to ``speed_up_factor`` (1.0 means unchanged); note that any other value makes
    generation run two LLM passes (the first settles durations), roughly doubling time to first audio.
    """
    options = dict(options or {})
    known = {f.name for f in dataclasses.fields(InferenceOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise EngineError(
            400,
            f"unknown option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}",
            "invalid_option",
            "options",
        )
    for name, cap in OPTION_LIMITS.items():
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value > cap):
            raise EngineError(400, f"{name} must be an integer <= {cap} on this server", "invalid_option", name)
    if speed is not None:
        if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
            raise EngineError(400, "speed must be a number between 0.25 and 4.0", "invalid_speed", "speed")
        if speed != 1.0:
            options["speed_up_factor"] = float(speed)
    factor = options.get("speed_up_factor")
    if factor is not None and (
        isinstance(factor, bool) or not isinstance(factor, int | float) or not 0.25 <= factor <= 4
    ):
        raise EngineError(400, "speed_up_factor must be between 0.25 and 4.0", "invalid_option", "speed_up_factor")
    if options.get("scorer") == "spkr_verification" and model.acoustic_spkr_verf is None:
        raise EngineError(400, "scorer 'spkr_verification' is not loaded on this server", "invalid_option", "scorer")
    try:
        return InferenceOptions(**options).validate()
    except (GenerationInputError, TypeError) as exc:
        raise EngineError(400, f"invalid options: {exc}", "invalid_option", "options") from None


# -- admission --------------------------------------------------------------------------------
class Admission:
    """At most ``max_active`` holders; up to ``max_waiting`` more wait (FIFO) for ``timeout`` s.

    ``acquire`` raises :class:`EngineError` 429 when the queue is full and 503 when the wait
    times out; a waiter that is cancelled (client gone) leaves the queue.
    """

    def __init__(self, max_active: int, max_waiting: int, timeout: float):
        if max_active < 1 or max_waiting < 0 or timeout < 0:
            raise ValueError("max_active must be >= 1, max_waiting and timeout >= 0")
        self.max_active, self.max_waiting, self.timeout = max_active, max_waiting, timeout
        self.active = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in self._waiters)

    async def acquire(self) -> None:
        if self.active < self.max_active and not self.waiting:
            self.active += 1
            return
        if self.waiting >= self.max_waiting:
            raise EngineError(
                429,
                f"all {self.max_active} streams are busy and the queue is full; retry shortly",
                "queue_full",
                retry_after=1,
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # the slot arrived together with the timeout: keep it
            raise EngineError(
                503,
                f"no stream became free within {self.timeout:g} s; retry later",
                "queue_timeout",
                retry_after=max(1, round(self.timeout)),
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, but nobody will use it
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self) -> None:
        """Hand the slot to the oldest live waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1


# -- text arriving in pieces ------------------------------------------------------------------
_END, _CLOSED = object(), object()


class TextPieces:
    """A request's text as it arrives: a thread-safe, queue-backed iterator of str pieces.

    The event loop calls :meth:`put`, :meth:`end` and :meth:`close` (none blocks); the generation
    (an :class:`~tadastream.stream.AudioStream` made with this as its ``text``) iterates it on a
    worker thread, blocking until a piece, the end or a close arrives. Pieces already queued are
    handed over joined (the generation only sees their concatenation, so the audio is the same).
    After :meth:`close` (the request was cancelled or the client left) a waiting worker wakes up
    and the stream stops without producing more.
    """

    def __init__(self, pieces: Any = ()):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.ended = False  # end() or close() was called: iterating can no longer block
        self.closed = False
        self.chars = 0
        self._seen_end = False
        for piece in pieces:
            self.put(piece)

    def put(self, piece: str) -> None:
        if self.ended:
            raise RuntimeError("the text has already ended")
        if not isinstance(piece, str):
            raise TypeError(f"text pieces must be str, got {type(piece).__name__}")
        self.chars += len(piece)
        self._queue.put(piece)

    def end(self) -> None:
        """No more pieces: the generation finishes the text (and speaks its last word)."""
        if not self.ended:
            self.ended = True
            self._queue.put(_END)

    def close(self) -> None:
        """Stop: a worker waiting for text wakes up and the stream ends early."""
        self.closed = self.ended = True
        self._queue.put(_CLOSED)

    def __iter__(self) -> TextPieces:
        return self

    def __next__(self) -> str:
        if self.closed:
            raise TextCancelled
        if self._seen_end:
            raise StopIteration
        item = self._queue.get()  # blocks the worker thread until the client sends more
        parts = []
        while True:
            if item is _CLOSED:
                raise TextCancelled
            if item is _END:
                self._seen_end = True
                break
            parts.append(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        if not parts:
            raise StopIteration
        return "".join(parts)


# -- one generation ---------------------------------------------------------------------------
class SpeechJob:
    """One admitted generation: its AudioStream, slot and timings.

    ``next_chunk`` runs one stream step on the engine's worker; ``cancel`` stops generation
    before the next LLM step; ``finish`` (always call it) frees the KV cache and the slot once the
    step in flight, if any, has ended.
    """

    def __init__(self, engine: Engine, stream, seed: int, started: float, text: TextPieces | None = None):
        self.engine, self.stream, self.seed = engine, stream, seed
        self.text = text  # the pieces still arriving, for a stream started before its text ended
        self.started = started  # when the request arrived (perf_counter)
        self.admitted = time.perf_counter()
        self.first_audio: float | None = None
        self.samples = 0
        self.chunks = 0
        self.cancelled = False
        self._iter = iter(stream)
        self._inflight: concurrent.futures.Future | None = None
        self._finished = False

    async def next_chunk(self) -> torch.Tensor | None:
        """The next float32 chunk (24 kHz mono), or None at the end or after cancel."""
        if self.cancelled or self._finished:
            return None
        # A step that may wait for text must not hold the shared worker (see the module docstring).
        waits = self.text is not None and not self.text.ended
        executor = self.engine.text_executor if waits else self.engine.executor
        self._inflight = executor.submit(next, self._iter, None)
        try:
            item = await asyncio.wrap_future(self._inflight)
        except GenerationInputError as exc:  # found when the text ended: empty, too long
            code = "empty_input" if "empty" in str(exc) else "invalid_input"
            raise EngineError(400, str(exc), code, "input") from None
        if item is None:
            return None
        chunk = item[0]
        if self.first_audio is None:
            self.first_audio = time.perf_counter()
        self.samples += int(chunk.numel())
        self.chunks += 1
        return chunk

    def cancel(self) -> None:
        """Stop generating: the step in progress (if any) is the last one. Safe from the event loop."""
        self.cancelled = True
        if self.text is not None:
            self.text.close()  # a step waiting for text wakes up and stops
        if self.stream is not None:
            self.stream.close()  # never blocks: if a step is running it only flags cancellation

    def finish(self) -> None:
        """Cancel if still running, then free memory and the slot after the in-flight step."""
        if self._finished:
            return
        self._finished = True
        self.cancel()
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            loop = asyncio.get_running_loop()
            inflight.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        else:
            self._release()

    def _release(self) -> None:
        if self.stream is not None:
            self.stream.close()  # the step is over, so this really drops the KV cache now
            self._iter.close()
        self.stream = None
        self._iter = iter(())
        self.engine.admission.release()

    def timings(self) -> dict[str, Any]:
        """Seconds: queue wait, time to first audio from the request, total; and the audio made."""
        now = time.perf_counter()
        audio_s = self.samples / SAMPLE_RATE
        total = now - self.started
        return {
            "seed": self.seed,
            "queue_time": round(self.admitted - self.started, 4),
            "time_to_first_audio": None if self.first_audio is None else round(self.first_audio - self.started, 4),
            "total_time": round(total, 4),
            "audio_seconds": round(audio_s, 4),
            "chunks": self.chunks,
            "real_time_factor": round((now - self.admitted) / audio_s, 4) if audio_s else None,
        }


class Engine:
    """One loaded model shared by all streams, plus admission control."""

    def __init__(self, model, *, max_streams: int = 4, queue: int = 16, queue_timeout: float = 30.0):
        self.model = model
        self.admission = Admission(max_streams, queue, queue_timeout)
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tadastream-gen")
        # Steps of streams still waiting for text: at most one per admitted stream, so none queues.
        self.text_executor = concurrent.futures.ThreadPoolExecutor(max_streams, thread_name_prefix="tadastream-text")

    async def start(
        self, prompt, text: str | TextPieces, *, seed: int, options: InferenceOptions, started: float
    ) -> SpeechJob:
        """Wait for a slot, then set up a stream. Raises EngineError (400/429/503).

        ``text`` is the whole text, or :class:`TextPieces` still arriving: generation then starts
        at once and pulls pieces as it needs them; the audio is the same as for the whole text.
        """
        await self.admission.acquire()
        state = RngState.from_seed(seed, self.model.device)

        def create():  # the stream forks the global RNG state here: seed it for this request only
            return run_isolated(
                state, lambda: generate(self.model, prompt, text, stream=True, inference_options=options)
            )

        try:
            stream = await asyncio.to_thread(create)
        except GenerationInputError as exc:
            self.admission.release()
            raise EngineError(400, str(exc), "invalid_input", "input") from None
        except BaseException:
            self.admission.release()
            raise
        return SpeechJob(self, stream, seed, started, text if isinstance(text, TextPieces) else None)

    def run(self, fn: Callable[[], T], seed: int = 0) -> concurrent.futures.Future:
        """Run other RNG-consuming work (voice encoding) on the worker with its own RNG state."""
        state = RngState.from_seed(seed, self.model.device)
        return self.executor.submit(run_isolated, state, fn)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.text_executor.shutdown(wait=False, cancel_futures=True)


# -- voices -----------------------------------------------------------------------------------
def check_voice_name(name: str) -> str:
    if not isinstance(name, str) or not VOICE_NAME.fullmatch(name):
        raise EngineError(
            400,
            "voice names use 1-64 letters, digits, '-' or '_' (no paths or extensions)",
            "invalid_voice_name",
            "voice",
        )
    return name


def _encoder_output_class():
    from ..codec.encoder import EncoderOutput

    return EncoderOutput


class VoiceStore:
    """Voices by name: ``NAME.voice`` files in ``directory`` plus the model's default voice."""

    def __init__(self, directory: str | os.PathLike | None, default: Any | None, model, *, cache_size: int = 16):
        self.directory = Path(directory) if directory is not None else None
        self.default = default
        self.model = model
        self._cache: collections.OrderedDict[str, tuple[tuple[int, int], Any]] = collections.OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{check_voice_name(name)}.voice"

    def list(self) -> list[dict[str, Any]]:
        voices = []
        if self.default is not None:
            voices.append({"id": "default", "object": "voice", "source": "builtin", "default": True})
        if self.directory is not None and self.directory.is_dir():
            for path in sorted(self.directory.glob("*.voice")):
                if VOICE_NAME.fullmatch(path.stem) and path.stem != "default":
                    voices.append({"id": path.stem, "object": "voice", "source": "file", "default": False})
        return voices

    def resolve(self, name: str | None) -> Any | None:
        """The prompt for ``name`` (blocking: may read a file). None means "no prompt" (model default)."""
        if name is None or name == "":
            return self.default
        path = self._path(name)
        if path is not None and path.is_file():
            return self._load(name, path)
        if name in OPENAI_VOICES:
            return self.default
        raise EngineError(
            400,
            f"voice {name!r} not found; available: {', '.join(v['id'] for v in self.list()) or '(none)'}",
            "voice_not_found",
            "voice",
        )

    def _load(self, name: str, path: Path):
        stat = path.stat()
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None and hit[0] == key:
                self._cache.move_to_end(name)
                return hit[1]
        data = path.read_bytes()
        voice = self.parse(data, max_seconds=None)
        with self._lock:
            self._cache[name] = (key, voice)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return voice

    def parse(self, data: bytes, *, max_seconds: float | None) -> Any:
        """Load and check an encoded voice (bytes of a ``.voice`` file); raises EngineError 400.

        ``.voice`` files are safetensors with JSON metadata (no pickle), so an upload cannot run code.
        """
        cls = _encoder_output_class()
        tmp = None
        try:
            import tempfile

            with tempfile.NamedTemporaryFile(suffix=".voice", delete=False) as handle:
                handle.write(data)
                tmp = handle.name
            voice = cls.load(tmp)
        except Exception:
            raise EngineError(
                400, "not a valid .voice file: create one with `tadastream encode-voice`", "invalid_voice_file"
            ) from None
        finally:
            if tmp is not None:
                os.unlink(tmp)
        self.check(voice, max_seconds)
        return voice

    def check(self, voice, max_seconds: float | None) -> None:
        """Reject voices too long or not matching the model (cheap: plans a generation, no compute)."""
        values = getattr(voice, "token_values", None)
        dim = self.model.config.acoustic_dim
        if not isinstance(values, torch.Tensor) or values.dim() != 3 or values.shape[-1] != dim:
            raise EngineError(
                400, f"the voice does not fit this model (expected {dim}-d acoustic tokens)", "voice_mismatch"
            )
        if max_seconds is not None:
            seconds = voice_seconds(voice)
            if seconds > max_seconds:
                raise EngineError(
                    413, f"the voice is {seconds:.1f} s long; the limit is {max_seconds:g} s", "voice_too_long"
                )
        try:
            from ..generation import plan_generation

            plan_generation(self.model, voice, "Hello.")
        except Exception as exc:
            raise EngineError(400, f"the voice cannot be used with this model: {exc}", "voice_mismatch") from None

    def save(self, name: str, voice_bytes: bytes, *, overwrite: bool) -> Path:
        """Store an already checked voice atomically as ``NAME.voice``."""
        path = self._path(name)
        if path is None:
            raise EngineError(403, "voice uploads are disabled: start the server with --voices DIR", "uploads_disabled")
        if name in OPENAI_VOICES:
            raise EngineError(400, f"{name!r} is reserved for the built-in voice", "invalid_voice_name", "name")
        if path.exists() and not overwrite:
            raise EngineError(409, f"voice {name!r} exists; send overwrite=true to replace it", "voice_exists", "name")
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.write_bytes(voice_bytes)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        with self._lock:
            self._cache.pop(name, None)
        return path


def voice_seconds(voice) -> float:
    """Duration of a voice prompt's audio in seconds (0 when unknown)."""
    rate = float(getattr(voice, "sample_rate", SAMPLE_RATE) or SAMPLE_RATE)
    length = getattr(voice, "audio_len", None)
    if isinstance(length, torch.Tensor) and length.numel():
        return float(length.reshape(-1)[0]) / rate
    audio = getattr(voice, "audio", None)
    return audio.shape[-1] / rate if isinstance(audio, torch.Tensor) else 0.0
