"""Reading a book aloud: every chapter's segments, several at once on one engine, in order.

:func:`plan_book` splits each chapter into segments (as long form does) and plans every one of
them before any model work, so a book with a segment that cannot be spoken fails at once.
:class:`Narrator` then speaks them: up to ``parallel`` segments generate side by side on one
engine (batched steps; a stream batched with others is its solo audio), and their audio is
handed on strictly in book order, joined as long form joins segments (fades, pauses) with
``CHAPTER_GAP`` of silence between chapters.

Each segment draws from its own generators, ``rng.derive(g)`` for the book's ``g``-th segment, so
its audio does not depend on how many run beside it, nor on where an interrupted run resumed.
The narrator holds at most ``parallel`` segments' audio; what it yields is the caller's to write.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..config import SAMPLE_RATE
from ..drivers.segments import Joiner, Segment, split_text
from ..drivers.stream import AudioStream
from ..engine import Engine
from ..generation import GenerationInputError, GenerationPlan, SpeechRequest, prepare_prompt
from ..playback import FirstChunkHold
from ..timestamps import CharTiming, WordTiming
from ..weights import TadaWeights
from .book import Book

__all__ = [
    "CHAPTER_GAP",
    "Audio",
    "BookPlan",
    "ChapterEnd",
    "ChapterStart",
    "Narrator",
    "SegmentDone",
    "Words",
    "plan_book",
]

#: Seconds of silence between two chapters of one audio file.
CHAPTER_GAP = 2.0


@dataclass
class BookPlan:
    """A book's chapters in segments, each planned; ``first[c]`` is chapter ``c``'s first segment
    in book order (a chapter with nothing to say has none)."""

    book: Book
    segments: list[list[Segment]]
    plans: list[GenerationPlan | None]  # in book order; dropped once its segment is spoken
    tokens: list[int]  # tokens of each segment, in book order
    first: list[int]

    @property
    def total(self) -> int:
        return len(self.plans)

    def locate(self, index: int) -> tuple[int, int]:
        """(chapter, segment within it) of the book's ``index``-th segment."""
        for chapter in range(len(self.first) - 1, -1, -1):
            if self.first[chapter] <= index and self.segments[chapter]:
                return chapter, index - self.first[chapter]
        raise IndexError(index)


def plan_book(model: TadaWeights, book: Book, request: SpeechRequest) -> BookPlan:
    """Every chapter of ``book`` split (``request.segment_chars``) and every segment planned with
    ``request``'s voice and layout; GenerationInputError naming the chapter of one that cannot be."""
    prepared = prepare_prompt(model, request)
    segments: list[list[Segment]] = []
    plans: list[GenerationPlan | None] = []
    tokens: list[int] = []
    first: list[int] = []
    for number, chapter in enumerate(book.chapters, 1):
        try:
            pieces = split_text(chapter.text, request.segment_chars)
            chapter_plans = [prepared.plan(piece.text) for piece in pieces]
        except (ValueError, GenerationInputError) as exc:
            raise GenerationInputError(f"chapter {number} ({chapter.title}): {exc}") from None
        first.append(len(plans))
        segments.append(pieces)
        plans.extend(chapter_plans)
        tokens.extend(p.tokens_spoken for p in chapter_plans)
    if not plans:
        raise GenerationInputError(f"{book.title}: nothing to say in the chapters chosen")
    return BookPlan(book, segments, plans, tokens, first)


# -- what the narrator yields, in book order ----------------------------------------------------


@dataclass(frozen=True)
class ChapterStart:
    """Chapter ``index`` begins with the next audio."""

    index: int
    title: str


@dataclass(frozen=True)
class Audio:
    """The next samples of the book (float32 mono, 24 kHz); ``gap`` marks the silence between chapters."""

    samples: torch.Tensor
    gap: bool = False


@dataclass(frozen=True)
class Words:
    """A segment's words and characters, timed in its chapter's audio and placed in its chapter's text."""

    chapter: int
    words: list[WordTiming]
    characters: list[CharTiming]


@dataclass(frozen=True)
class ChapterEnd:
    """Chapter ``index`` ended: it lasts ``samples`` (the gap after it not counted)."""

    index: int
    samples: int


@dataclass(frozen=True)
class SegmentDone:
    """Segment ``index`` (book order) and everything before it has been yielded: a point a run can
    resume from. ``tokens`` of the book and ``samples`` of audio so far."""

    index: int
    tokens: int
    samples: int


Event = ChapterStart | Audio | Words | ChapterEnd | SegmentDone


class Narrator:
    """Iterate the events of speaking ``plan``'s book from segment ``start`` on.

    ``parallel`` segments generate at once on ``engine`` (which needs that many slots); the first
    ones start when iteration does. ``close()`` (or leaving a ``with`` block) stops the segments
    in flight.
    """

    def __init__(
        self,
        model: TadaWeights,
        plan: BookPlan,
        request: SpeechRequest,
        engine: Engine,
        *,
        parallel: int = 1,
        start: int = 0,
        samples_before: int = 0,
    ):
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        if not 0 <= start <= plan.total:
            raise ValueError(f"start must be a segment of the book (0..{plan.total}), got {start}")
        self.model, self.plan, self.request, self.engine = model, plan, request, engine
        self.parallel, self.start = parallel, start
        self.samples = samples_before  # of the whole book, gaps included
        self.tokens = sum(plan.tokens[:start])
        self.started_at = time.perf_counter()
        self._rng = request.rng(model.device)
        self._window: collections.deque[tuple[int, AudioStream]] = collections.deque()
        self._opened = start

    def __enter__(self) -> Narrator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        while self._window:
            self._window.popleft()[1].close()

    def _fill(self) -> None:
        """Keep ``parallel`` segments generating: submitted in book order, so they batch from the start."""
        while len(self._window) < self.parallel and self._opened < self.plan.total:
            index = self._opened
            plan, self.plan.plans[index] = self.plan.plans[index], None
            stream = AudioStream(
                self.model,
                self.request,
                engine=self.engine,
                plan=plan,
                rng=self._rng.derive(index),
                hold=FirstChunkHold(0),  # a file, not a player: nothing to hold back
            )
            self._window.append((index, stream))
            self._opened += 1

    def __iter__(self) -> Iterator[Event]:
        plan, joiner = self.plan, Joiner(SAMPLE_RATE)
        chapter_samples = 0  # of the current chapter, before the segment being spoken
        try:
            for index in range(self.start, plan.total):
                self._fill()
                chapter, within = plan.locate(index)
                segments = plan.segments[chapter]
                if within == 0:
                    chapter_samples = 0
                    yield ChapterStart(chapter, plan.book.chapters[chapter].title)
                _, stream = self._window[0]
                joiner.start(fade_in=within > 0)
                for chunk, _rate in stream:
                    if (joined := joiner.add(chunk)).numel():
                        self.samples += joined.numel()
                        yield Audio(joined)
                self._window.popleft()
                if stream.result is None:
                    raise RuntimeError(f"segment {index + 1} of the book stopped before it finished")
                segment, last = segments[within], within == len(segments) - 1
                yield self._words(chapter, segment, stream, chapter_samples)
                pause = None if last else segment.pause_after
                tail = joiner.end(pause)
                chapter_samples += sum(stream.chunk_samples) + (round(pause * SAMPLE_RATE) if pause else 0)
                if tail.numel():
                    self.samples += tail.numel()
                    yield Audio(tail)
                self.tokens += plan.tokens[index]
                if last:
                    yield ChapterEnd(chapter, chapter_samples)
                    if index < plan.total - 1:
                        gap = torch.zeros(round(CHAPTER_GAP * SAMPLE_RATE))
                        self.samples += gap.numel()
                        yield Audio(gap, gap=True)
                yield SegmentDone(index, self.tokens, self.samples)
        finally:
            self.close()

    @staticmethod
    def _words(chapter: int, segment: Segment, stream: AudioStream, samples_before: int) -> Words:
        seconds = samples_before / SAMPLE_RATE
        characters = (stream.result.characters or [[]])[0]
        return Words(
            chapter,
            [w.shifted(seconds, segment.start) for w in stream.words],
            [c.shifted(seconds, segment.start) for c in characters],
        )
