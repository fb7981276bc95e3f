"""Subtitles and timestamps written as a book is spoken are those made of all its words at once."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tadastream.captions import SubtitleWriter, TimestampsWriter, line_width_for, timestamps_json, to_srt, to_vtt
from tadastream.timestamps import CharTiming, WordTiming

TEXT = "One two three. Four five six seven eight nine ten eleven twelve? 十三 十四。Fifteen, sixteen! Seventeen"


def timed_words(gaps: list[int]) -> list[WordTiming]:
    """TEXT's words, one after another, with a pause before word i when gaps[i] says so."""
    words, start, offset = [], 0.0, 0
    for i, word in enumerate(TEXT.split(" ")):
        begin = TEXT.index(word, offset)
        offset = begin + len(word)
        start += 0.5 if gaps[i % len(gaps)] else 0.0
        words.append(WordTiming(word, start, start + 0.4, begin, offset))
        start += 0.4
    return words


@settings(max_examples=40, deadline=None)
@given(gaps=st.lists(st.booleans(), min_size=1, max_size=8), cuts=st.lists(st.integers(0, 20), max_size=6))
def test_subtitles_written_in_pieces_equal_subtitles_made_at_once(tmp_path_factory, gaps, cuts):
    words = timed_words(gaps)
    folder = tmp_path_factory.mktemp("subs")
    for suffix, whole in ((".srt", to_srt), (".vtt", to_vtt)):
        width = line_width_for(words)
        writer = SubtitleWriter(folder / f"s{suffix}", width)
        previous = 0
        for cut in sorted(cuts) + [len(words)]:
            writer.add(words[previous:cut] if cut >= previous else [])
            previous = max(previous, cut)
        assert writer.close().read_text(encoding="utf-8") == whole(words, width)
    assert sorted(p.name for p in folder.iterdir()) == ["s.srt", "s.vtt"], "no temporary file is left"


def test_timestamps_of_one_text_keep_the_single_text_layout(tmp_path):
    words = timed_words([False])
    chars = [CharTiming(ch, 0.1 * i, 0.1 * i + 0.1, i) for i, ch in enumerate(TEXT[:5])]
    writer = TimestampsWriter(tmp_path / "t.json", None, seed=7)
    writer.chapter("t", TEXT, 0.0)
    writer.add(words[:3], chars[:2])
    writer.add(words[3:], chars[2:])
    writer.chapter_end(9.0)
    written = json.loads(writer.close(9.5).read_text(encoding="utf-8"))
    assert written == json.loads(timestamps_json(TEXT, words, chars, 9.5, seed=7))


def test_timestamps_of_a_book_have_its_chapters(tmp_path):
    words = timed_words([False])
    writer = TimestampsWriter(tmp_path / "b.json", "A book", seed=1)
    writer.chapter("One", TEXT, 0.0)
    writer.add(words[:2], [CharTiming("O", 0.0, 0.1, 0)])
    writer.chapter_end(4.0)
    writer.chapter("Two", "Empty.", 6.0)
    writer.chapter_end(6.5)
    book = json.loads(writer.close(6.5).read_text(encoding="utf-8"))
    assert book["title"] == "A book" and book["seed"] == 1 and book["audio_seconds"] == 6.5
    one, two = book["chapters"]
    assert (one["title"], one["start"], one["end"], len(one["words"]), len(one["characters"])) == ("One", 0, 4, 2, 1)
    assert (two["title"], two["words"], two["characters"]) == ("Two", [], [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]
