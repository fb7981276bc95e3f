"""Word and character timestamps: exact from the model's durations, in the text as written."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tadastream.codec.decoder import expand_tokens
from tadastream.config import SAMPLE_RATE, SAMPLES_PER_FRAME
from tadastream.demo import build_demo_model, demo_voice
from tadastream.generation import InferenceOptions, SpeechRequest, plan_generation
from tadastream.generation.outputs import leading_trim_frames
from tadastream.text import normalize_mapped, normalize_text
from tadastream.timestamps import WordClock, WordTiming, words_heard
from tests.helpers.paths import FIXTURES

TEXT = 'Hello — world, this is a "quick" test… of timing (twice)! Okay?'
FRAME = SAMPLES_PER_FRAME / SAMPLE_RATE


@pytest.fixture(scope="module")
def model():
    return build_demo_model()


@pytest.fixture(scope="module")
def voice(model):
    return demo_voice(model)


@pytest.fixture(scope="module")
def whole(model, voice):
    return model.generate(voice, TEXT, seed=11)


def spoken_chars(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


def check_tiling(words: list[WordTiming], text: str, audio_seconds: float) -> None:
    assert words, "some words were timed"
    assert words[0].start == 0.0
    for a, b in zip(words, words[1:]):
        assert a.end == b.start, "each word ends where the next begins"
        assert a.char_end <= b.char_start, "words follow the text in order"
    assert all(w.end >= w.start for w in words)
    assert words[-1].end == pytest.approx(audio_seconds, abs=1e-9)
    assert sum(w.end - w.start for w in words) == pytest.approx(audio_seconds, abs=1e-6)
    for w in words:
        assert w.word == text[w.char_start : w.char_end]
        assert w.word == w.word.strip()
    # every letter and digit of the text is in exactly one word, in order
    assert "".join(spoken_chars(w.word) for w in words) == spoken_chars(text)


# -- the character map of normalisation ------------------------------------------------------------
def test_normalize_mapped_is_normalize_text_with_a_map():
    fixture = json.loads((FIXTURES / "parity" / "text_normalization.json").read_text())
    alphabet = list("ab AB.,;:!?-()\"'  \u201c\u201d\u2014\u2026\u00ab\u00bbßİΣσ1\t\n") + ["ŉ"]
    rng = random.Random(5)
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16))) for _ in range(3000)]
    for text in [case["input"] for case in fixture["cases"]] + fuzz:
        mapped = normalize_mapped(text)
        assert str(mapped) == normalize_text(text)
        assert len(mapped.origin) == len(mapped)
        assert list(mapped.origin) == sorted(mapped.origin), "the map keeps the text's order"
        assert all(0 <= i < len(text) for i in mapped.origin)
    mapped = normalize_mapped('He said: "Wait — what?!"')
    assert str(mapped) == "He said, wait, what?!"
    source = 'He said: "Wait — what?!"'
    assert [source[i] for i in mapped.origin][7:15] == [":", " ", "W", "a", "i", "t", "—", "—"]


# -- the clock on durations chosen by hand -----------------------------------------------------------
class _Tokens:
    """Token spans given directly: what TextTokens works out from a tokenizer."""

    incremental = None

    def __init__(self, text: str, spans):
        self.text, self._spans = text, list(spans)

    @property
    def count(self) -> int:
        return len(self._spans)

    def span(self, j):
        return self._spans[j]


class _Plan:
    def __init__(self, head: int):
        self.head_ids = [0] * head
        self.decode_start = head - 2


def test_clock_reads_times_from_the_durations():
    text = "Hi - there, you"
    # tokens: "Hi", " -"(as ","), " there", ",", " you"
    spans = [(0, 2), (3, 4), (5, 10), (10, 11), (12, 15)]
    plan = _Plan(head=4)  # frame 2 is the header's last token, frames 3.. the text, then end tokens
    clock = WordClock(plan, _Tokens(text, spans))
    durations = [7, 3, 4, 0, 6, 2, 5, 9]  # frame 2 (trim 7), five text tokens, two end tokens
    seen = []
    for k, before in enumerate(durations):
        seen.append(clock.add(2 + k, before))
    last = clock.finish(total_samples=40 * SAMPLES_PER_FRAME)
    # vector frames: cumulative max(d, 1) - 1 - trim(7) -> onsets of the text tokens 2, 6, 7, 13, 15
    words = clock.words
    assert [w.word for w in words] == ["Hi -", "there,", "you"]
    assert [w.start for w in words] == [0.0, 7 * FRAME, 15 * FRAME]
    assert [w.end for w in words] == [7 * FRAME, 15 * FRAME, 40 * FRAME]
    assert [(w.char_start, w.char_end) for w in words] == [(0, 4), (5, 11), (12, 15)]
    # a word is handed out when the next word's first token is placed; the last at the end
    assert [len(batch) for batch in seen] == [0, 0, 0, 1, 0, 1, 0, 0] and last == [words[-1]]
    # characters share their token's time evenly; token boundaries are exact
    chars = {c.index: c for c in clock.characters}
    assert chars[0].start == 0.0 and chars[1].end == 6 * FRAME  # "Hi" from 0 to the dash token
    assert chars[3].start == 6 * FRAME and chars[3].end == 7 * FRAME  # the dash, spoken as a comma
    assert chars[10].start == 13 * FRAME and chars[10].end == 15 * FRAME  # the comma
    assert [chars[i].end for i in range(5, 10)] == pytest.approx([(7 + 6 * (n + 1) / 5) * FRAME for n in range(5)])


def test_clock_short_first_duration_is_trimmed_to_five_frames():
    clock = WordClock(_Plan(head=3), _Tokens("a b", [(0, 1), (2, 3)]))
    for k, before in enumerate([1, 2, 8, 3]):
        clock.add(1 + k, before)
    clock.finish(20 * SAMPLES_PER_FRAME)
    assert leading_trim_frames(1) == 5
    # vector frames 0 (trimmed), 2, 10 -> onsets max(0, 2 - 5) = 0 and 10 - 5 = 5
    assert [(w.start, w.end) for w in clock.words] == [(0.0, 5 * FRAME), (5 * FRAME, 20 * FRAME)]


# -- the model ------------------------------------------------------------------------------------
def test_words_tile_the_audio_of_generate(whole):
    audio = whole.audio[0]
    check_tiling(whole.words[0], TEXT, audio.numel() / SAMPLE_RATE)
    assert [w.word for w in whole.words[0]][:3] == ["Hello —", "world,", "this"]
    assert '"quick"' in [w.word for w in whole.words[0]] and "(twice)!" in [w.word for w in whole.words[0]]
    chars = whole.characters[0]
    assert [c.index for c in chars] == sorted(c.index for c in chars)
    assert all(TEXT[c.index] == c.char for c in chars)
    assert all(a.end == pytest.approx(b.start) for a, b in zip(chars, chars[1:]))


def test_word_starts_are_the_decoders_marked_frames(model, voice, whole):
    """Independent of the clock: where expand_tokens puts each text token's vector."""
    plan = plan_generation(model, SpeechRequest(TEXT, voice))
    time_before = whole.time_before[0]
    vectors = torch.ones(time_before.numel() - 1, 4)
    marks = (expand_tokens(vectors, time_before).abs().sum(-1) > 0).nonzero().flatten().tolist()
    trim = leading_trim_frames(int(time_before[0]))
    first_text = len(plan.head_ids) - 1 - plan.decode_start  # decoded frame of the first text token
    onsets = {max(0, m - trim) * FRAME for m in marks[first_text : first_text + len(plan.text_ids)]}
    starts = [w.start for w in whole.words[0][1:]]
    assert starts and all(any(abs(s - o) < 1e-9 for o in onsets) for s in starts)


def test_streamed_words_equal_generated_and_come_with_their_audio(model, voice, whole):
    stream = model.generate(voice, TEXT, seed=11, stream=True)
    taken, arrival = 0, {}
    for chunk, _ in stream:
        for w in stream.words:
            arrival.setdefault(w, taken)
        taken += chunk.numel()
    assert stream.words == whole.words[0]
    assert stream.result.words[0] == whole.words[0] and stream.result.characters == whole.characters
    for w in stream.words:  # known before all of the word's audio was handed out
        assert arrival[w] < round(w.end * SAMPLE_RATE), w


def test_text_in_pieces_gives_the_same_words(model, voice, whole):
    pieces = [TEXT[i : i + 3] for i in range(0, len(TEXT), 3)]
    stream = model.generate(voice, iter(pieces), seed=11, stream=True)
    audio = torch.cat([chunk for chunk, _ in stream])
    assert torch.allclose(audio, whole.audio[0], atol=1e-4)
    assert stream.words == whole.words[0]


def test_speed_scales_the_times(model, voice, whole):
    fast = model.generate(voice, TEXT, seed=11, inference_options=InferenceOptions(speed_up_factor=2.0))
    seconds = fast.audio[0].numel() / SAMPLE_RATE
    check_tiling(fast.words[0], TEXT, seconds)
    assert seconds < 0.75 * whole.audio[0].numel() / SAMPLE_RATE


def test_long_form_words_are_placed_in_the_whole_text(model, voice):
    text = "First sentence is here. Second one follows, with a clause.\n\nA new paragraph! Does it work?"
    out = model.generate(voice, text, seed=4, long_form=True, segment_chars=30)
    words = out.words[0]
    assert all(w.word == text[w.char_start : w.char_end] for w in words)
    assert "".join(spoken_chars(w.word) for w in words) == spoken_chars(text)
    assert words[0].start == 0.0 and words[-1].end == pytest.approx(out.audio[0].numel() / SAMPLE_RATE)
    gaps = [round(b.start - a.end, 4) for a, b in zip(words, words[1:]) if b.start != a.end]
    assert gaps and all(g in (0.12, 0.5) for g in gaps), "only the pauses put between segments are wordless"
    stream = model.generate(voice, text, seed=4, stream=True, long_form=True, segment_chars=30)
    for _ in stream:
        pass
    assert stream.words == words and stream.result.characters == out.characters


def test_words_heard_stop_where_playback_stopped():
    words = [WordTiming("a", 0.0, 0.5, 0, 1), WordTiming("b", 0.5, 1.0, 2, 3), WordTiming("c", 1.0, 2.0, 4, 5)]
    assert words_heard(words, 0.75) == [words[0], WordTiming("b", 0.5, 0.75, 2, 3)]
    assert words_heard(words, 1.0) == words[:2] and words_heard(words, 5.0) == words
    assert words_heard(words, 0.0) == []
