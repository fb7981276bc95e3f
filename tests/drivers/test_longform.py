"""Long-form generation: any text length, in segments, seamless, reproducible, in bounded memory."""

from __future__ import annotations

import resource

import pytest
import torch

from tadastream.drivers.longform import FADE_SECONDS, LongFormStream
from tadastream.drivers.segments import CLAUSE_PAUSE, PARAGRAPH_PAUSE, SENTENCE_PAUSE, Joiner, split_text
from tadastream.drivers.stream import AudioStream
from tadastream.generation import GenerationInputError, InferenceOptions, SpeechRequest, StreamRng, TextTooLongError
from tadastream.timeline import simulate_playback

FAST = InferenceOptions(num_flow_matching_steps=2)  # the demo model's audio is noise anyway: fewer ODE steps


# -- splitting ----------------------------------------------------------------------------------
def texts(segments) -> list[str]:
    return [s.text for s in segments]


def test_sentences_are_kept_whole_and_packed():
    text = "Dr. Smith paid $3.14 for it. Mrs. Jones did not. J. R. R. Tolkien wrote it, e.g. the Hobbit. Yes!"
    assert texts(split_text(text, 1000)) == [text]
    assert texts(split_text(text, 45)) == [
        "Dr. Smith paid $3.14 for it.",
        "Mrs. Jones did not.",
        "J. R. R. Tolkien wrote it, e.g. the Hobbit.",
        "Yes!",
    ]


def test_quotes_stay_with_their_sentence():
    text = '"Is that all?" she asked. "It is." He left (quietly.) Then silence...'
    assert texts(split_text(text, 30)) == [
        '"Is that all?" she asked.',
        '"It is." He left (quietly.)',
        "Then silence...",
    ]


def test_long_sentences_split_at_clauses_then_words_never_inside_one():
    sentence = "first part of it, second part of it; third part: and the very last part of the sentence."
    pieces = split_text(sentence, 40)
    assert texts(pieces) == [
        "first part of it, second part of it;",
        "third part:",
        "and the very last part of the sentence.",
    ]
    assert [p.pause_after for p in pieces] == [CLAUSE_PAUSE, CLAUSE_PAUSE, 0.0]
    words = "unpunctuated " * 50
    pieces = split_text(words, 60)
    assert all(len(p.text) <= 60 for p in pieces) and " ".join(texts(pieces)).split() == words.split()
    assert texts(split_text("x" * 90 + " y", 30)) == ["x" * 90, "y"], "a word longer than the limit stays whole"


def test_paragraph_breaks_get_a_longer_pause():
    text = "One. Two.\n\n  \nThree.\n\nFour."
    segments = split_text(text, 20)
    assert texts(segments) == ["One. Two.", "Three.", "Four."]
    assert [s.pause_after for s in segments] == [PARAGRAPH_PAUSE, PARAGRAPH_PAUSE, 0.0]
    three = split_text("First one. Second one. Third one.", 20)
    assert [s.pause_after for s in three] == [SENTENCE_PAUSE, SENTENCE_PAUSE, 0.0]
    assert split_text(" \n\n ", 100) == []
    with pytest.raises(ValueError, match="max_chars"):
        split_text("Hi.", 5)


# -- generation ---------------------------------------------------------------------------------
PARAGRAPHS = (
    "The first paragraph opens the story. It has two sentences.\n\n"
    "The second paragraph goes on; it is a little longer, and it has a clause or two.\n\n"
    "The end."
)


def test_streamed_equals_non_streamed_and_seeds_reproduce(demo_model, demo_voice):
    kwargs = dict(seed=11, long_form=True, segment_chars=60, inference_options=FAST)
    whole = demo_model.generate(demo_voice, PARAGRAPHS, **kwargs)
    stream = demo_model.generate(demo_voice, PARAGRAPHS, stream=True, **kwargs)
    assert isinstance(stream, LongFormStream) and len(stream.segments) >= 4
    streamed = torch.cat([chunk for chunk, _ in stream])
    assert torch.equal(streamed, whole.audio[0]), "streamed and non-streamed long-form audio are the same"
    assert stream.tokens_done == stream.tokens_total > 0
    assert stream.result.time_before.shape[-1] >= stream.tokens_total
    again = demo_model.generate(demo_voice, PARAGRAPHS, **kwargs)
    assert torch.equal(again.audio[0], whole.audio[0]), "the same seed gives the same long-form audio"


def test_joins_are_faded_and_paused(demo_model, demo_voice):
    first, second = "The first sentence is here.", "The second one follows it."
    joined = demo_model.generate(
        demo_voice, f"{first}\n\n{second}", long_form=True, segment_chars=40, seed=5, inference_options=FAST
    ).audio[0]
    # each segment alone, with the seed long-form derives for it (segment i: rng.derive(i))
    alone = [
        torch.cat(
            [
                c
                for c, _ in AudioStream(
                    demo_model, SpeechRequest(t, demo_voice, options=FAST), rng=StreamRng.from_seed(5).derive(i)
                )
            ]
        )  # fmt: skip
        for i, t in enumerate((first, second))
    ]
    fade, pause = round(FADE_SECONDS * 24000), round(PARAGRAPH_PAUSE * 24000)
    ramp = Joiner(24000).fade_in
    n0 = alone[0].numel()
    assert joined.numel() == n0 + pause + alone[1].numel()
    assert torch.equal(joined[: n0 - fade], alone[0][: n0 - fade]), "a segment's audio is untouched but its ends"
    assert torch.allclose(joined[n0 - fade : n0], alone[0][n0 - fade :] * ramp.flip(0)), "it fades out"
    assert torch.count_nonzero(joined[n0 : n0 + pause]) == 0, "then the paragraph's pause, silent"
    assert torch.allclose(joined[n0 + pause : n0 + pause + fade], alone[1][:fade] * ramp), "the next fades in"
    assert torch.equal(joined[n0 + pause + fade :], alone[1][fade:])


def test_a_text_too_long_for_one_generation_is_spoken_in_segments(demo_model, demo_voice):
    text = "word " * 5000  # over the demo model's 4096 positions
    with pytest.raises(TextTooLongError, match="long form"):
        demo_model.generate(demo_voice, text, long_form=False)
    with pytest.raises(TextTooLongError):
        AudioStream(demo_model, SpeechRequest(text, demo_voice))
    stream = demo_model.generate(demo_voice, text, stream=True, seed=1, inference_options=FAST)
    assert isinstance(stream, LongFormStream)
    stream.close()
    with pytest.raises(GenerationInputError, match="empty"):
        LongFormStream(demo_model, SpeechRequest("  \n\n  ", demo_voice))
    with pytest.raises(GenerationInputError, match="long_form must be"):
        demo_model.generate(demo_voice, "Hi.", long_form="yes")
    with pytest.raises(GenerationInputError, match="whole text as a string"):
        demo_model.generate(demo_voice, iter(["Hi ", "there."]), stream=True, long_form=True)


@pytest.mark.slow
def test_twenty_thousand_characters_stream_to_the_end_in_bounded_memory(demo_model, demo_voice):
    sentence = "Narration reads whole chapters, one sentence after another, without a pause for breath. "
    paragraph = sentence * 6 + "\n\n"
    text = (paragraph * (20_000 // len(paragraph) + 1))[:20_000]
    opts = InferenceOptions(num_flow_matching_steps=1)
    stream = demo_model.generate(demo_voice, text, stream=True, seed=2, inference_options=opts)
    assert isinstance(stream, LongFormStream) and len(stream.segments) > 40
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    samples, kv_bytes, first_rss = 0, set(), None
    for chunk, _ in stream:
        samples += chunk.numel()
        kv_bytes.add(stream.engine.stats()["kv_cache_bytes"])
        if first_rss is None and stream.segment_index >= 2:
            first_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"\n20,000 chars: {len(stream.segments)} segments, {samples / 24000:.0f} s of audio, "
        f"first audio {stream.result.time_to_first_audio:.2f} s, KV cache {sorted(kv_bytes)} bytes, "
        f"peak RSS {rss_start / 1024:.0f} -> {rss_end / 1024:.0f} MiB (after 2 segments {first_rss / 1024:.0f})"
    )
    assert stream.segment_index == len(stream.segments) - 1 and stream.tokens_done == stream.tokens_total
    assert max(kv_bytes) <= min(kv_bytes) * 2, "the KV cache does not grow with the document"
    seconds = [n / 24000 for n in stream.result.chunk_samples]
    playback = simulate_playback(stream.result.chunk_times, seconds)
    # a player starting at the first (short) chunk may wait a few ms for the second; after that, never
    late = [stall for stall in playback.stalls if stall[0] > 1.0]
    assert not late and playback.stall_time < 0.1, "it never stops between segments (this hardware keeps up)"
    assert rss_end - first_rss < 200 * 1024, "memory stays flat after the first segments (< 200 MiB growth)"
