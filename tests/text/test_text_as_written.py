"""Text as people have it: hard-wrapped files, the ten languages of TADA-3B-ML, emoji and symbols.

Property tests (hypothesis) throw random Unicode at segmentation, the text the model reads, text
arriving in pieces and word timing; the fixture texts (``tests/fixtures/texts``, public-domain text
written out, see SOURCES.md there) go through each stage as a user's file would.
"""

from __future__ import annotations

import logging
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tadastream.captions import caption_cues, line_width_for, to_srt, to_vtt
from tadastream.config import SAMPLE_RATE, checkpoint_languages
from tadastream.drivers.segments import PARAGRAPH_PAUSE, SENTENCE_PAUSE, split_text
from tadastream.generation import EmptyTextError, SpeechRequest, plan_generation
from tadastream.scripts import (
    LANGUAGES,
    canonical_language,
    display_width,
    grapheme_bounds,
    script_warning,
    spaceless,
    unsupported_scripts,
    word_units,
)
from tadastream.text import IncrementalText, model_text, model_text_mapped, prepare_mapped, tokenize_joint
from tadastream.timestamps import WordClock, WordTiming
from tests.helpers.paths import FIXTURES

TEXTS = FIXTURES / "texts"
CHAPTER = (TEXTS / "alice-ch2-pool-of-tears.txt").read_text(encoding="utf-8")
PARAGRAPHS = {lang: (TEXTS / f"{lang}.txt").read_text(encoding="utf-8") for lang in LANGUAGES}


def crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


# -- random text as people have it -----------------------------------------------------------------
SPECIALS = [
    "\r\n", "\r", "\n", "\n\n", "\r\n\r\n", "\t", "\u00a0", "\u202f", "\u3000", "\u200b", "\u200d", "\u200e",
    "\u202e", "\u2029", "\u00ad", "\x1c", "\x00", "\ufeff", "\U0001f600", "\U0001f44d\U0001f3fd",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f1ef\U0001f1f5", "1\ufe0f\u20e3", "e\u0301", "\u0301",
    "。", "、", "！", "？", "「", "」", "¿", "¡", "؟", "،", "«", "»", " ", ". ", "? ", "! ", "... ", "Dr. ",
    "J. R. R. ", "3. Mai ", "z. B. ", "*", "_", "**", " - ", "—", "(", ")", '"', "'", "“", "”",
    "今日は良い天気ですね", "人人生而自由", "مرحبا بكم", "¿Qué tal?", "Vraiment\u202f?", "CHAPTER IV.",
    "The Pool of Tears", "a" * 300, "漢" * 250, "word " * 40,
]  # fmt: skip
_pieces = st.one_of(
    st.sampled_from(SPECIALS),
    st.text(st.characters(codec="utf-8"), max_size=12),
    st.text(st.sampled_from("abcXYZ .,;:!?\n"), max_size=60),
)
people_text = st.lists(_pieces, max_size=25).map("".join)


def spoken(text: str) -> list[str]:
    return [ch for ch in text if ch.isalnum()]


def check_segments(text: str, segments, max_chars: int) -> None:
    covered = set()
    for a, b in zip(segments, segments[1:]):
        assert a.end <= b.start, "segments follow the text in order"
    for s in segments:
        assert s.text == text[s.start : s.end], "a segment is a piece of the text"
        assert s.text == s.text.strip() and s.start < s.end
        assert any(ch.isalnum() for ch in s.text), "no segment without words"
        covered.update(range(s.start, s.end))
        wide = display_width(s.text) > max_chars
        one_word = not any(ch.isspace() for ch in s.text) and not spaceless(s.text)
        assert not wide or one_word or len(grapheme_bounds(s.text)) == 2, (s.text, max_chars)
    assert all(i in covered for i, ch in enumerate(text) if ch.isalnum()), "every letter and digit is spoken"
    assert segments == [] or segments[-1].pause_after == 0.0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(people_text, st.integers(20, 200))
def test_segments_are_pieces_that_cover_every_word(text, max_chars):
    check_segments(text, split_text(text, max_chars), max_chars)


@settings(max_examples=300, deadline=None)
@given(people_text)
def test_what_the_model_reads_keeps_every_word_and_maps_back(text):
    for normalize in (False, True):
        mapped = model_text_mapped(text, normalize)
        assert all(0 <= i < len(text) for i in mapped.origin)
        assert list(mapped.origin) == sorted(mapped.origin), "the map follows the text"
        if not normalize:
            assert spoken(mapped) == spoken(text), "letters and digits are never dropped"
            for ch, i in zip(mapped, mapped.origin):
                assert ch == text[i] or ch in " .。", (ch, text[i])
        assert not any(ch.isspace() and ch != " " for ch in mapped), "line breaks, tabs, NBSP read as spaces"
    lf = text.replace("\r\n", "\n").replace("\r", "\n")
    assert model_text(crlf(lf)) == model_text(lf) == model_text(lf.replace("\n", "\r")), "CRLF and CR read like LF"


@pytest.fixture(scope="module")
def tokenizer():
    from tadastream.demo import demo_tokenizer

    return demo_tokenizer()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(people_text, st.randoms(use_true_random=False))
def test_text_in_pieces_gives_the_ids_of_the_whole(tokenizer, text, rnd):
    expected = tokenize_joint(tokenizer, "", model_text(text)) if model_text(text).strip() else []
    cuts = sorted(rnd.sample(range(1, len(text)), min(len(text) - 1, rnd.randint(0, 10)))) if len(text) > 1 else []
    incremental = IncrementalText(tokenizer)
    released = []
    for a, b in zip([0, *cuts], [*cuts, len(text)]):
        released += incremental.push(text[a:b])
    released += incremental.finish()
    assert released == expected


# -- word timing ---------------------------------------------------------------------------------
@pytest.fixture
def model(demo_model):
    return demo_model  # the session's demo model (conftest)


@pytest.fixture
def voice(demo_voice):
    return demo_voice


def check_words(words, text: str, audio_seconds: float) -> None:
    assert words[0].start == 0.0 and words[-1].end == pytest.approx(audio_seconds, abs=1e-6)
    for a, b in zip(words, words[1:]):
        assert a.end == b.start, "words tile the audio"
        assert a.char_end <= b.char_start, "and follow the text"
    for w in words:
        assert 0 <= w.char_start < w.char_end <= len(text) and w.word == text[w.char_start : w.char_end]
        assert w.word == w.word.strip() and w.start <= w.end


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(people_text.filter(lambda t: any(ch.isalnum() for ch in t)), st.randoms(use_true_random=False))
def test_words_tile_the_audio_for_any_text(model, text, rnd):
    plan = plan_generation(model, SpeechRequest(text))
    steps = len(plan.text_ids) + 8
    durations = [rnd.randint(0, 12) for _ in range(steps)]
    total = (sum(max(d, 1) for d in durations) + 3) * 480
    clock = WordClock.of(plan, model.tokenizer).replay(durations, total)
    words = clock.words
    check_words(words, text, total / SAMPLE_RATE)
    # every letter and digit the model reads belongs to exactly one word, in order
    read = prepare_mapped(text)
    timed = [i for w in words for i in range(w.char_start, w.char_end)]
    assert [i for ch, i in zip(read, read.origin) if ch.isalnum()] == [i for i in timed if text[i].isalnum()]


# -- the languages ---------------------------------------------------------------------------------
@pytest.mark.parametrize("lang", LANGUAGES)
def test_each_language_segments_times_and_subtitles(model, voice, lang):
    text = PARAGRAPHS[lang]
    segments = split_text(text, 120)
    check_segments(text, segments, 120)
    assert len(segments) >= 3, "a paragraph of several sentences splits at 120 columns"
    first = text[: segments[1].end]  # two segments: enough to time, quick on the demo model
    out = model.generate(voice, first, seed=3)
    words = out.words[0]
    check_words(words, first, out.audio[0].numel() / SAMPLE_RATE)
    srt = to_srt(words)
    width = line_width_for(words)
    for block in srt.split("\n\n"):
        lines = block.strip().split("\n")[2:]
        assert 1 <= len(lines) <= 2
        assert all(display_width(line) <= width for line in lines) or len(lines) == 1
    if lang in ("ja", "zh"):
        assert len(words) >= 6 and max(len(w.word) for w in words) <= 12, "phrases, not the whole paragraph"
        captions = [line for block in srt.split("\n\n") for line in block.strip().split("\n")[2:]]
        assert not any(" " in line for line in captions), "no spaces are put between Chinese or Japanese words"
        assert width == (26 if lang == "ja" else 32)
    else:
        assert width == 42


def test_sentence_and_clause_ends_in_every_language():
    def texts(text, max_chars=400):
        return [s.text for s in split_text(text, max_chars)]

    # widths in columns: a full-width character counts two
    assert texts("今日は良い天気ですね。明日は雨でしょう。", 30) == ["今日は良い天気ですね。", "明日は雨でしょう。"]
    assert texts("「そうか！」と言った。次の日。", 22) == ["「そうか！」と言った。", "次の日。"], "a particle goes on"
    assert texts("他说：“我们走吧！”然后走了。", 20) == ["他说：“我们走吧！”", "然后走了。"]
    assert texts("¿Qué hora es? ¡Son las tres! —preguntó él.", 40) == ["¿Qué hora es?", "¡Son las tres! —preguntó él."]
    french = "« Bonjour\u00a0! » dit-il. Vraiment\u202f? Oui."
    assert texts(french, 30) == ["« Bonjour\u00a0! » dit-il.", "Vraiment\u202f? Oui."]
    german = "Am 3. Mai kam er. Das 1. Kapitel, z. B. hier. Dann ging er."
    assert texts(german, 20) == ["Am 3. Mai kam er.", "Das 1. Kapitel,", "z. B. hier.", "Dann ging er."]
    assert texts("Spotkanie jest 2. maja, np. w domu. Potem tzw. obiad.", 40) == [
        "Spotkanie jest 2. maja, np. w domu.",
        "Potem tzw. obiad.",
    ]
    assert texts("هل أنت بخير؟ نعم، شكرا. إلى اللقاء.", 20) == ["هل أنت بخير؟", "نعم، شكرا.", "إلى اللقاء."]
    assert texts("C’era una volta...\n— Un re! — diranno subito.", 30) == [
        "C’era una volta...",
        "— Un re! — diranno subito.",
    ]
    # a Japanese sentence wider than a segment: at its clause marks, then between phrases, then characters
    long = "吾輩は猫である、名前はまだ無い、どこで生れたかとんと見当がつかぬ。"
    pieces = split_text(long, 20)
    assert [p.text for p in pieces] == [
        "吾輩は猫である、",
        "名前はまだ無い、",
        "どこで生れたかとんと",
        "見当がつかぬ。",
    ]
    assert [p.pause_after for p in pieces] == [0.0, 0.0, 0.0, 0.0]
    assert texts("漢" * 45, 20) == ["漢" * 10] * 4 + ["漢" * 5]
    assert texts("x" * 90 + " y", 30) == ["x" * 90, "y"], "a word of a script with spaces stays whole"
    emoji = "\U0001f468\u200d\U0001f469\u200d\U0001f467" * 12 + "。" + "字" * 30
    assert all(len(grapheme_bounds(p)) >= 2 for p in texts(emoji, 20)), "grapheme clusters are never cut"


def _timed(text: str, segments) -> list[WordTiming]:
    """Each segment's words, a second each, with the pause that long form puts after the segment."""
    words, clock = [], 0.0
    for segment in segments:
        for a, b in word_units(text, segment.start, segment.end):
            words.append(WordTiming(text[a:b], clock, clock + 1.0, a, b))
            clock += 1.0
        clock += segment.pause_after
    return words


def test_a_hard_wrapped_chapter_reads_as_paragraphs():
    for text in (CHAPTER, crlf(CHAPTER), CHAPTER.replace("\n", "\r")):
        segments = split_text(text)
        check_segments(text, segments, 400)
        assert [s.text for s in segments[:2]] == ["CHAPTER II.", "The Pool of Tears"], "headings stand alone"
        assert segments[0].pause_after == segments[1].pause_after == PARAGRAPH_PAUSE
        assert {s.pause_after for s in segments} <= {0.0, PARAGRAPH_PAUSE, SENTENCE_PAUSE}
    cues = [" ".join(w.word for w in cue) for cue in caption_cues(_timed(text, segments))]
    assert cues[:2] == ["CHAPTER II.", "The Pool of Tears"], "a heading is a cue of its own"
    reads = model_text(crlf(CHAPTER))
    assert reads == model_text(CHAPTER) and "\n" not in reads and "\r" not in reads
    assert reads.startswith("Chapter ii. The pool of tears. Curiouser and curiouser!"), reads[:80]
    assert "_" not in reads, "emphasis marks are not read"


def test_japanese_and_chinese_get_phrase_units():
    text = "今日は良い天気ですね。明日は雨でしょう。"
    assert [text[a:b] for a, b in word_units(text)] == ["今日は", "良い", "天気ですね。", "明日は", "雨でしょう。"]
    assert [t[a:b] for t in ["2026年12月3日"] for a, b in word_units(t)][0].startswith("2026"), "numbers stay whole"
    assert word_units("Hello, world") == [(0, 6), (7, 12)]


def test_a_six_sentence_chinese_text_gets_a_cue_per_sentence(model, voice):
    text = "今天天气很好。我们去公园吧。公园里人很多。孩子们在玩。老人在下棋。我们很开心。"
    out = model.generate(voice, text, seed=5)
    cues = caption_cues(out.words[0])
    assert len(cues) == 6 and all(cue[-1].word.endswith("。") for cue in cues)
    vtt = to_vtt(out.words[0])
    first_cue = vtt.split("\n\n")[1].split("\n", 1)[1]
    assert re.sub(r"<[^>]*>", "", first_cue).strip() == "今天天气很好。", "a cue's words joined without spaces"


def test_nothing_to_say_is_refused_before_any_work(model, voice):
    for text in ["\U0001f600\U0001f600\U0001f389\U0001f389", "!!! ... ???", "\u200b\u200b", "", "  \n "]:
        with pytest.raises(EmptyTextError, match="nothing to speak"):
            model.generate(voice, text)
        with pytest.raises(EmptyTextError):
            model.generate(voice, text, stream=True, long_form=True)
    assert split_text("\U0001f600 * * *\n\n\U0001f389") == []
    # text in pieces: refused when it ends, with nothing generated for its symbols
    stream = model.generate(voice, iter(["\U0001f600 ", "!!! ", "..."]), stream=True)
    with pytest.raises(EmptyTextError):
        list(stream)


def test_emoji_are_left_out_of_what_the_model_reads_and_offsets_still_index_the_text(model, voice):
    text = "Great news \U0001f389\U0001f389! We won \U0001f44d\U0001f3fd, really."
    plain = "Great news ! We won , really."
    assert model_text(text) == model_text(plain)
    out = model.generate(voice, text, seed=2)
    assert out.audio[0].numel() > 0
    words = out.words[0]
    check_words(words, text, out.audio[0].numel() / SAMPLE_RATE)
    assert [w.word for w in words][:2] == ["Great", "news \U0001f389\U0001f389!"]


def test_languages_and_script_warnings(model, voice, caplog):
    assert canonical_language("ch") == "zh" and canonical_language(" JA ") == "ja"
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        canonical_language("xx")
    assert {"Han", "Hiragana"} <= set(unsupported_scripts(PARAGRAPHS["ja"], ["en"])) <= {"Han", "Hiragana", "Katakana"}
    assert all(unsupported_scripts(PARAGRAPHS[lang], LANGUAGES) == [] for lang in LANGUAGES)
    assert unsupported_scripts("Привет, мир", LANGUAGES) == ["Cyrillic"]
    assert script_warning("Hello there.", ["en"]) is None
    assert model.languages == LANGUAGES, "the demo model stands in for either checkpoint"

    class OneB:
        hidden_size, languages = 2048, None

    assert checkpoint_languages(OneB()) == ("en",)
    OneB.hidden_size = 3072
    assert checkpoint_languages(OneB()) == LANGUAGES
    model.config.languages = ["en"]  # as TADA-1B
    try:
        with caplog.at_level(logging.WARNING, logger="tadastream"):
            out = model.generate(voice, "今日は良い天気ですね。", seed=1)
        warnings = [r.getMessage() for r in caplog.records if r.name == "tadastream"]
        assert len(warnings) == 1 and "Han, Hiragana" in warnings[0] and "\n" not in warnings[0]
        assert out.audio[0].numel() > 0, "a warning, not a refusal"
    finally:
        model.config.languages = list(LANGUAGES)


def test_random_fixture_cuts_keep_the_text_in_pieces_exact(tokenizer):
    rng = random.Random(7)
    for lang, text in PARAGRAPHS.items():
        expected = tokenize_joint(tokenizer, "", model_text(text))
        cuts = sorted(rng.sample(range(1, len(text)), 25))
        incremental = IncrementalText(tokenizer)
        released = []
        for a, b in zip([0, *cuts], [*cuts, len(text)]):
            released += incremental.push(text[a:b])
        assert released + incremental.finish() == expected, lang
