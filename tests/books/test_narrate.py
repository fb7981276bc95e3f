"""The book narrator: segments in book order, the same audio however many run at once and
wherever a run starts, and long form's audio for a one-chapter book."""

from __future__ import annotations

import pytest
import torch

from tadastream.books import Book, Chapter
from tadastream.books.narrate import (
    CHAPTER_GAP,
    Audio,
    ChapterEnd,
    ChapterStart,
    Narrator,
    SegmentDone,
    Words,
    plan_book,
)
from tadastream.drivers.longform import LongFormStream
from tadastream.engine import Engine
from tadastream.generation import GenerationInputError, InferenceOptions, SpeechRequest

FAST = InferenceOptions(num_flow_matching_steps=2)


@pytest.fixture(scope="module")
def demo():
    """The demo model laid out for inference as the CLI loads it: there, batched is solo bit for bit."""
    from tadastream.loading import load_model

    return load_model("demo", dtype="float32")

BOOK = Book(
    "A small book",
    (
        Chapter("One", "Chapter one.\n\nThe first chapter has two paragraphs. This is the second sentence of it."),
        Chapter("Two", "Chapter two.\n\nShort and sweet, the second chapter ends here."),
        Chapter("Three", "Chapter three.\n\nThe last one. It says goodbye, and then it stops."),
    ),
)


def request(voice, text="A book.", seed=5) -> SpeechRequest:
    return SpeechRequest(text, voice=voice, options=FAST, seed=seed, segment_chars=40)


def narrate(model, voice, *, parallel=1, start=0, book=BOOK, seed=5):
    speech = request(voice, seed=seed)
    plan = plan_book(model, book, speech)
    with Narrator(model, plan, speech, Engine(model, max_streams=parallel), parallel=parallel, start=start) as n:
        return plan, list(n)


def audio_of(events, gaps=True) -> torch.Tensor:
    return torch.cat([e.samples for e in events if isinstance(e, Audio) and (gaps or not e.gap)])


def test_events_come_in_book_order_and_add_up(demo):
    plan, events = narrate(*demo)
    assert plan.total > 3, "the chapters are in several segments"
    starts = [e for e in events if isinstance(e, ChapterStart)]
    ends = [e for e in events if isinstance(e, ChapterEnd)]
    assert [(s.index, s.title) for s in starts] == [(0, "One"), (1, "Two"), (2, "Three")]
    assert [e.index for e in ends] == [0, 1, 2]
    done = [e for e in events if isinstance(e, SegmentDone)]
    assert [d.index for d in done] == list(range(plan.total))
    audio = audio_of(events)
    assert done[-1].samples == audio.numel() and done[-1].tokens == sum(plan.tokens)
    gaps = [e for e in events if isinstance(e, Audio) and e.gap]
    assert len(gaps) == 2 and all(g.samples.numel() == round(CHAPTER_GAP * 24000) for g in gaps)
    assert sum(e.samples for e in ends) + sum(g.samples.numel() for g in gaps) == audio.numel()
    # every word of every chapter is heard, in its chapter's text and time
    for c, chapter in enumerate(BOOK.chapters):
        words = [w for e in events if isinstance(e, Words) and e.chapter == c for w in e.words]
        spoken = [chapter.text[w.char_start : w.char_end] for w in words]
        assert spoken == [w.word for w in words] and " ".join(spoken).replace(" ", "") == "".join(
            ch for ch in chapter.text if not ch.isspace()
        )
        assert all(a.start <= b.start for a, b in zip(words, words[1:]))
        assert words[-1].end <= ends[c].samples / 24000 + 1e-6


def test_parallel_segments_equal_serial_ones(demo):
    _, serial = narrate(*demo, parallel=1)
    _, parallel = narrate(*demo, parallel=4)
    assert torch.equal(audio_of(serial), audio_of(parallel)), "batched segments are their solo audio"
    words = [[w for e in run if isinstance(e, Words) for w in e.words] for run in (serial, parallel)]
    assert words[0] == words[1]


def test_a_run_started_at_any_segment_continues_the_same_audio(demo):
    _, whole = narrate(*demo)
    done = [e for e in whole if isinstance(e, SegmentDone)]
    for cut in (2, 4):
        resumed_from = done[cut - 1]  # segments 0..cut-1 were written before the interruption
        _, rest = narrate(*demo, start=cut)
        head = audio_of(whole)[: resumed_from.samples]
        assert torch.equal(torch.cat([head, audio_of(rest)]), audio_of(whole))


def test_a_one_chapter_book_is_long_forms_audio(demo):
    text = BOOK.chapters[0].text + "\n\n" + BOOK.chapters[1].text
    book = Book("t", (Chapter("t", text),))
    _, events = narrate(*demo, book=book, parallel=2)
    model, voice = demo
    with LongFormStream(model, request(voice, text)) as stream:
        expected = torch.cat([chunk for chunk, _ in stream])
    assert torch.equal(audio_of(events), expected)


def test_a_chapter_that_cannot_be_spoken_is_named_before_any_work(demo):
    model, voice = demo
    book = Book("b", (Chapter("Fine", "Hello there."), Chapter("Broken", "x" * 9000)))
    with pytest.raises(GenerationInputError, match=r"chapter 2 \(Broken\)"):
        plan_book(model, book, SpeechRequest("A book.", voice=voice, segment_chars=20))
