"""Speaking a text of any length: its segments one after another, joined without a seam.

:class:`LongFormStream` splits the text (:func:`~tadastream.drivers.segments.split_text`), checks every
segment before any model work, then speaks them in order, each an
:class:`~tadastream.drivers.stream.AudioStream` conditioned on the same voice prompt, with a seed derived
from the request's (segment i draws from ``rng.derive(i)``), in one engine slot that is reused:
memory does not grow with the document. The joins: the last 5 ms of a segment fade out, the
next one's first 5 ms fade in (no click), and the pause its end calls for goes between
(:mod:`~tadastream.drivers.segments`). Generation of the next segment starts as soon as the previous
one has finished generating, while its audio is still being played.

Streaming and non-streaming run this same path, so their audio is the same.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..config import SAMPLE_RATE
from ..engine import Engine, engine_for
from ..generation import (
    GenerationInputError,
    GenerationOutput,
    GenerationPlan,
    PreparedPrompt,
    SpeechRequest,
    StreamRng,
    Text,
    TextTooLongError,
    prepare_prompt,
)
from ..playback import FirstChunkHold
from ..scripts import script_warning
from ..timestamps import CharTiming, WordTiming
from ..weights import TadaWeights
from .segments import FADE_SECONDS, Joiner, Segment, split_text
from .stream import AudioStream, ClosingStream

__all__ = [
    "FADE_SECONDS",
    "LongFormPlan",
    "LongFormStream",
    "open_stream",
    "plan_request",
    "plan_segments",
    "speak_whole",
    "warn_about_scripts",
]

logger = logging.getLogger("tadastream")

def warn_about_scripts(model: TadaWeights, text: Text) -> None:
    """Log a one-line warning when ``text`` (a string) is in a script ``model`` was not trained on."""
    if isinstance(text, str) and (warning := script_warning(text, model.languages)):
        logger.warning(warning)


@dataclass
class LongFormPlan:
    """A text in segments, every one planned (all checked before any model work), sharing one
    :class:`~tadastream.generation.plan.PreparedPrompt`."""

    segments: list[Segment]
    plans: list[GenerationPlan | None]  # a segment's plan is dropped once its stream has it
    tokens_total: int


def plan_request(model: TadaWeights, request: SpeechRequest) -> GenerationPlan | LongFormPlan:
    """``request`` as one generation, or in segments when it asks for that (``long_form=True``)
    or needs it (``None`` and a string too long for one generation): the one place that decides.
    ``long_form=False`` and text given in pieces re-raise the length error."""
    prepared = prepare_prompt(model, request)
    if not request.long_form:
        try:
            return prepared.plan(request.text)
        except TextTooLongError:
            if request.long_form is False or not request.whole:
                raise
    return plan_segments(prepared, request)


def plan_segments(prepared: PreparedPrompt, request: SpeechRequest) -> LongFormPlan:
    """``request``'s text split and each segment planned once; GenerationInputError for a text
    with a segment that cannot be spoken."""
    if not request.whole:
        raise GenerationInputError("long-form generation takes the whole text as a string")
    try:
        segments = split_text(request.text, request.segment_chars)
    except ValueError as exc:
        raise GenerationInputError(str(exc)) from None
    plans = [prepared.plan(s.text) for s in segments]
    return LongFormPlan(segments, plans, sum(p.tokens_spoken for p in plans))


def open_stream(
    model: TadaWeights, request: SpeechRequest, engine: Engine | None = None
) -> AudioStream | LongFormStream:
    """An :class:`AudioStream`, or a :class:`LongFormStream` for a string that asks for segments
    or needs them (see :func:`plan_request`)."""
    warn_about_scripts(model, request.text)
    model.require_decoder()
    plan = plan_request(model, request)
    if isinstance(plan, LongFormPlan):
        return LongFormStream(model, request, plan, engine=engine)
    return AudioStream(model, request, engine=engine, plan=plan)


def speak_whole(
    model: TadaWeights, request: SpeechRequest, plan: LongFormPlan, rng: StreamRng, engine: Engine | None = None
) -> GenerationOutput:
    """A text in segments, all its audio at once: the streaming path, so the audio is the same."""
    with LongFormStream(model, request, plan, engine=engine, rng=rng) as stream:
        chunks = [chunk for chunk, _ in stream]
    result = stream.result
    result.audio = [torch.cat(chunks) if chunks else torch.zeros(0)]
    return result


class LongFormStream(ClosingStream):
    """Iterate ``for chunk, sample_rate in stream`` (or ``async for``), as an :class:`AudioStream`.

    ``segments``, ``tokens_total`` and (once all is spoken) ``result`` describe the whole text;
    ``segment_index`` is the segment being generated. Raises :class:`GenerationInputError`
    before any work for a text that is empty or has a segment that cannot be spoken.
    """

    def __init__(
        self,
        model: TadaWeights,
        request: SpeechRequest,
        plan: LongFormPlan | None = None,
        *,
        engine: Engine | None = None,
        rng: StreamRng | None = None,
    ):
        """``plan`` (from :func:`plan_request`; made here when None) holds every segment, checked
        before any model work; ``rng`` defaults to the request's."""
        self.started_at = time.perf_counter()
        self.model, self.request, self.full_text = model, request, request.text
        if plan is None:
            plan = plan_segments(prepare_prompt(model, request), request)
        self._plans = plan.plans
        self.segments: list[Segment] = plan.segments
        self.tokens_total = plan.tokens_total
        model.require_decoder()
        self._rng = rng if rng is not None else request.rng(model.device)
        self._engine = engine_for(model, engine)
        self.text = None  # the whole text is known: nothing arrives in pieces
        self.sample_rate = SAMPLE_RATE
        self.on_token = None
        self.segment_index = -1
        self._current: AudioStream | None = None
        self._tokens_before = 0  # tokens of the segments already spoken
        # each segment's durations, for the merged result; not the segments' whole results, which
        # hold their acoustic features and ids (tens of KB a segment, kept for a whole book)
        self._time_before: list[torch.Tensor | None] = []
        self._joiner = Joiner(SAMPLE_RATE)
        self._ready: collections.deque[torch.Tensor] = collections.deque()
        self._done = False
        self.result: GenerationOutput | None = None
        self.time_to_first_audio: float | None = None
        self.chunk_times: list[float] = []
        self.chunk_samples: list[int] = []
        #: Words heard so far, timed in this stream's audio and placed in the whole text; the silence
        #: put between segments belongs to no word.
        self.words: list[WordTiming] = []
        self.characters: list[CharTiming] = []
        self._samples_before = 0  # samples of the segments (and pauses) before the current one
        self._open_next()  # the first segment starts at once, as an AudioStream does

    # -- segments ------------------------------------------------------------------------------
    def _open_next(self) -> None:
        index = self.segment_index + 1
        plan, self._plans[index] = self._plans[index], None
        # a player is already playing once a later segment starts: holding back would only starve it
        hold = FirstChunkHold(self.request.min_first_chunk_ms if index == 0 else 0)
        stream = AudioStream(
            self.model, self.request, engine=self._engine, plan=plan, rng=self._rng.derive(index), hold=hold
        )
        stream.on_token = self._token
        self._current, self.segment_index, self._words_seen = stream, index, 0
        self._joiner.start(fade_in=index > 0)

    def _token(self, step) -> None:
        if self.on_token is not None:
            self.on_token(step)

    def _take_words(self) -> None:
        """The current segment's new words, moved to this stream's time and text."""
        stream, seconds = self._current, self._samples_before / self.sample_rate
        chars = self.segments[self.segment_index].start
        self.words.extend(w.shifted(seconds, chars) for w in stream.words[self._words_seen :])
        self._words_seen = len(stream.words)

    def _segment_ended(self) -> bool:
        """Close the finished segment's books; True when another segment was opened."""
        stream = self._current
        if stream.result is None:  # cancelled or failed without an error of its own
            self._finish(None)
            return False
        self._take_words()
        self._time_before.append(stream.result.time_before)
        self._tokens_before += stream.tokens_done
        seconds, chars = self._samples_before / self.sample_rate, self.segments[self.segment_index].start
        self.characters.extend(c.shifted(seconds, chars) for c in (stream.result.characters or [[]])[0])
        last = self.segment_index == len(self.segments) - 1
        pause = None if last else self.segments[self.segment_index].pause_after
        self._samples_before += sum(stream.chunk_samples) + (round(pause * self.sample_rate) if pause else 0)
        self._queue(self._joiner.end(pause))
        if last:
            self._finish(self._merged_result())
            return False
        return True

    def _queue(self, samples: torch.Tensor) -> None:
        if samples.numel():
            self._ready.append(samples)

    def _finish(self, result: GenerationOutput | None) -> None:
        self._done, self._current, self.result = True, None, result

    def _merged_result(self) -> GenerationOutput:
        parts = self._time_before
        time_before = torch.cat(parts, dim=-1) if all(isinstance(p, torch.Tensor) for p in parts) else None
        out = GenerationOutput(text=[self.full_text], input_str=[self.full_text], time_before=time_before)
        out.words, out.characters = [list(self.words)], [list(self.characters)]
        self._stamp(out)
        out.total_time = time.perf_counter() - self.started_at
        return out

    def _record(self, chunk: torch.Tensor) -> torch.Tensor:
        super()._record(chunk)
        if self._done and not self._ready and self.result is not None:
            self._stamp(self.result)  # now with the last chunks, which were queued when it was made
            self.result.total_time = self.chunk_times[-1]  # the last chunk handed out
        return chunk

    # -- sync ----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        while (chunk := self._next_chunk()) is not None:
            yield chunk, self.sample_rate

    def _next_chunk(self) -> torch.Tensor | None:
        try:
            while not self._ready:
                if self._done:
                    return None
                chunk = self._current._next_chunk()
                if chunk is not None:
                    self._take_words()
                    self._queue(self._joiner.add(chunk))
                elif self._segment_ended():
                    self._open_next()
        except BaseException:
            self.close()
            raise
        return self._record(self._ready.popleft())

    # -- async ---------------------------------------------------------------------------------
    def __aiter__(self):
        return self._aiter()

    async def _aiter(self):
        try:
            while (chunk := await self.read()) is not None:
                yield chunk, self.sample_rate
        finally:
            if not self._done:
                self.close()

    async def read(self) -> torch.Tensor | None:
        """The next chunk, or None at the end."""
        try:
            while not self._ready:
                if self._done:
                    return None
                chunk = await self._current.read()
                if chunk is not None:
                    self._take_words()
                    self._queue(self._joiner.add(chunk))
                elif self._segment_ended():
                    await asyncio.to_thread(self._open_next)  # tokenizing stays off the event loop
        except BaseException:
            self.close()
            raise
        return self._record(self._ready.popleft())

    # -- lifetime ------------------------------------------------------------------------------
    @property
    def tokens_done(self) -> int:
        """Tokens of the text spoken so far, over all segments."""
        return self._tokens_before + (self._current.tokens_done if self._current is not None else 0)

    @property
    def realtime_factor(self) -> float | None:
        """The segment being spoken's :attr:`AudioStream.realtime_factor`."""
        return self._current.realtime_factor if self._current is not None else None

    @property
    def finished(self) -> bool:
        return self._done

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        """Stop: the segment being generated frees its slot now (or when the tick in progress ends)."""
        current = self._current
        self._finish(self.result)
        if current is not None:
            current.close()
