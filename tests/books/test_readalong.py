"""The read-along writer on a small EPUB 3 made here: what it keeps, what it adds, and epubcheck's verdict."""

from __future__ import annotations

import json
import posixpath
import re
import struct
import subprocess
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
from ebooklib import epub
from lxml import etree

from tadastream.books import Book, BookError, Chapter, Fragment
from tadastream.books.readalong import (
    ACTIVE_CLASS,
    ChapterAudio,
    Clip,
    clock_value,
    fragment_clips,
    write_readalong,
)
from tadastream.timestamps import WordTiming
from tests.helpers.books import epubcheck_command

OPF = "{http://www.idpf.org/2007/opf}"
SMIL = "{http://www.w3.org/ns/SMIL}"
OPS = "{http://www.idpf.org/2007/ops}"
RATE = 24000
#: The source's dcterms:modified, set long ago so that the read-along's can be seen to be newer.
OLD_DATE, MODIFIED = rb">\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ<", b">2001-02-03T04:05:06Z<"
WORD_SECONDS = 0.25

#: Chapters as blocks of sentences; "* * *" is a fragment without a spoken word.
CHAPTERS = [
    (
        "Chapter One",
        [["Chapter One"], ["It was a quiet night.", "The rain had stopped."], ["* * *"], ["Then, a knock."]],
    ),
    ("Chapter Two", [["Chapter Two"], ["Nobody answered the door.", "Who would, at this hour?"]]),
    ("Chapter Three", [["Chapter Three"], ["Morning came.", "Everything was as before, or so it seemed."]]),
]


def png_bytes(width: int = 4, height: int = 4) -> bytes:
    """A tiny valid grey PNG, made with zlib alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def chapter_parts(blocks: list[list[str]]) -> tuple[str, str, tuple[Fragment, ...]]:
    """The chapter's text, its body markup with a span per sentence, and the fragments."""
    text, body, fragments, n = "", [], [], 0
    for k, block in enumerate(blocks):
        if text:
            text += "\n\n"
        spans = []
        for j, sentence in enumerate(block):
            if j:
                text += " "
            n += 1
            fragments.append(Fragment(f"tada-s{n}", len(text), len(text) + len(sentence)))
            spans.append(f'<span id="tada-s{n}">{sentence}</span>')
            text += sentence
        tag = "h1" if k == 0 else "p"
        body.append(f"<{tag}>{' '.join(spans)}</{tag}>")
    return text, "\n".join(body), tuple(fragments)


def word_timings(text: str) -> list[WordTiming]:
    """Words as the narrator times them: runs without a letter join the word before; they tile the audio."""
    spans: list[list[int]] = []
    for match in re.finditer(r"\S+", text):
        if spans and not any(ch.isalnum() for ch in match[0]):
            spans[-1][1] = match.end()
        else:
            spans.append([match.start(), match.end()])
    return [
        WordTiming(text[a:b], round(k * WORD_SECONDS, 6), round((k + 1) * WORD_SECONDS, 6), a, b)
        for k, (a, b) in enumerate(spans)
    ]


def write_audio(path: Path, seconds: float) -> None:
    """A sine of ``seconds`` at 24 kHz: AAC in MP4 for .m4a, MP3 for .mp3."""
    codec, container = ("aac", "ipod") if path.suffix == ".m4a" else ("libmp3lame", "mp3")
    samples = (0.2 * np.sin(2 * np.pi * 440 * np.arange(round(seconds * RATE)) / RATE)).astype(np.float32)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=RATE, layout="mono")
        for start in range(0, len(samples), 1152):
            frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1152], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = RATE, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def build_epub(path: Path) -> list[tuple[str, str, str, tuple[Fragment, ...]]]:
    """An EPUB 3 with a cover, a nav, an NCX and the chapters; returns (title, href, text, fragments) each."""
    book = epub.EpubBook()
    book.set_identifier("urn:uuid:7d0c8b3e-2f4a-4c1e-9a55-0e1f2a3b4c5d")
    book.set_title("A Quiet Night")
    book.set_language("en")
    book.add_author("Test Author")
    book.set_cover("cover.png", png_bytes())
    style = epub.EpubItem(uid="style", file_name="style.css", media_type="text/css", content=b"p { margin: 0; }")
    book.add_item(style)
    items, chapters = [], []
    for n, (title, blocks) in enumerate(CHAPTERS, 1):
        text, body, fragments = chapter_parts(blocks)
        file_name = "text/ch2.xhtml" if n == 2 else f"ch{n}.xhtml"  # one in a folder: relative paths differ
        item = epub.EpubHtml(title=title, file_name=file_name, lang="en")
        item.content = f"<html><head><title>{title}</title></head><body>{body}</body></html>"
        if n != 2:  # ebooklib links it as "style.css" from wherever the chapter is
            item.add_item(style)
        book.add_item(item)
        items.append(item)
        chapters.append((title, f"EPUB/{file_name}", text, fragments))
    book.toc = items
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *items]
    epub.write_epub(str(path), book)
    return chapters


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The source EPUB, its Book, the narration, and the read-along written from them."""
    folder = tmp_path_factory.mktemp("readalong")
    parts = build_epub(folder / "built.epub")
    source = rewritten(folder / "built.epub", folder / "book.epub", lambda opf: re.sub(OLD_DATE, MODIFIED, opf))
    with zipfile.ZipFile(source) as archive:
        chapters = tuple(
            Chapter(title, text, href, archive.read(href), fragments) for title, href, text, fragments in parts
        )
    book = Book("A Quiet Night", chapters, "Test Author", "en", source=source, kind="epub")
    narration = []
    for n, chapter in enumerate(chapters, 1):
        words = word_timings(chapter.text)
        seconds = words[-1].end
        audio = folder / f"narration-{n}{'.mp3' if n == 3 else '.m4a'}"
        write_audio(audio, seconds)
        narration.append(ChapterAudio(chapter, audio, seconds, words))
    target = folder / "readalong.epub"
    write_readalong(target, source, book, narration)
    return source, book, narration, target


def opf_of(archive: zipfile.ZipFile) -> tuple[str, etree._Element]:
    container = etree.fromstring(archive.read("META-INF/container.xml"))
    path = container.find(".//{*}rootfile").get("full-path")
    return path, etree.fromstring(archive.read(path))


def overlays(archive: zipfile.ZipFile) -> dict[str, tuple[str, list[tuple[str, str, float, float]]]]:
    """Per chapter document: its SMIL path and (document, fragment id, clip begin, clip end) per par."""
    opf_path, package = opf_of(archive)
    base = posixpath.dirname(opf_path)
    items = {item.get("id"): item for item in package.iter(f"{OPF}item")}
    found = {}
    for item in items.values():
        if not item.get("media-overlay"):
            continue
        document = posixpath.join(base, item.get("href"))
        smil_path = posixpath.join(base, items[item.get("media-overlay")].get("href"))
        smil = etree.fromstring(archive.read(smil_path))
        here = posixpath.dirname(smil_path)
        pars = []
        for par in smil.iter(f"{SMIL}par"):
            text, audio = par.find(f"{SMIL}text"), par.find(f"{SMIL}audio")
            href, _, fragment = text.get("src").partition("#")
            pars.append(
                (
                    posixpath.normpath(posixpath.join(here, href)),
                    fragment,
                    float(audio.get("clipBegin").rstrip("s")),
                    float(audio.get("clipEnd").rstrip("s")),
                    posixpath.normpath(posixpath.join(here, audio.get("src"))),
                )
            )
        found[document] = (smil_path, pars)
    return found


def clock_seconds(value: str) -> float:
    hours, minutes, seconds = value.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def test_container_is_a_valid_ocf_zip(made):
    _, _, _, target = made
    with zipfile.ZipFile(target) as archive:
        first, *rest = archive.infolist()
        assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED and not first.extra
        assert archive.read("mimetype") == b"application/epub+zip"
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in rest if not info.is_dir())
        assert archive.testzip() is None
    assert not list(target.parent.glob(".*.tmp")), "the temporary file was left behind"


def test_opf_declares_overlays_and_durations(made):
    source, _, narration, target = made
    with zipfile.ZipFile(target) as archive:
        opf_path, package = opf_of(archive)
        assert package.get("version") == "3.0"
        items = {item.get("id"): item for item in package.iter(f"{OPF}item")}
        chapter_items = [item for item in items.values() if item.get("media-overlay")]
        assert {posixpath.join("EPUB", i.get("href")) for i in chapter_items} == {a.chapter.href for a in narration}
        metas = [meta for meta in package.iter(f"{OPF}meta") if meta.get("property")]
        durations = {m.get("refines"): m.text for m in metas if m.get("property") == "media:duration"}
        total = durations.pop(None)
        assert set(durations) == {f"#{item.get('media-overlay')}" for item in chapter_items}
        for item in chapter_items:
            smil = items[item.get("media-overlay")]
            assert smil.get("media-type") == "application/smil+xml"
            assert posixpath.join("EPUB", smil.get("href")) in archive.namelist()
        assert clock_seconds(total) == pytest.approx(sum(clock_seconds(v) for v in durations.values()), abs=1e-9)
        assert clock_seconds(total) == pytest.approx(sum(a.seconds for a in narration), abs=0.003)
        assert [m.text for m in metas if m.get("property") == "media:active-class"] == [ACTIVE_CLASS]
        modified = [m.text for m in metas if m.get("property") == "dcterms:modified"]
        assert len(modified) == 1 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", modified[0])
        audio_types = sorted(i.get("media-type") for i in items.values() if i.get("media-type").startswith("audio/"))
        assert audio_types == ["audio/mp4", "audio/mp4", "audio/mpeg"]
        with zipfile.ZipFile(source) as original:
            assert MODIFIED in original.read(opf_path)
        assert modified[0] > MODIFIED[1:-1].decode()
        assert opf_path == "EPUB/content.opf"


def test_smil_points_at_ids_in_the_replaced_documents_with_clips_inside_the_audio(made):
    _, _, narration, target = made
    with zipfile.ZipFile(target) as archive:
        found = overlays(archive)
        assert set(found) == {a.chapter.href for a in narration}
        for entry in narration:
            chapter = entry.chapter
            document = etree.fromstring(archive.read(chapter.href))
            ids = set(document.xpath("//@id"))
            _, pars = found[chapter.href]
            assert pars, chapter.title
            previous_end = 0.0
            for href, fragment, begin, end, audio in pars:
                assert href == chapter.href and fragment in ids
                assert previous_end <= begin < end <= entry.seconds
                assert archive.read(audio) == entry.audio.read_bytes()
                previous_end = end
            spoken = [f.element_id for f in chapter.fragments if chapter.text[f.start : f.end] != "* * *"]
            assert [p[1] for p in pars] == spoken  # every sentence with a word, in order; "* * *" skipped
            style = document.find(".//{http://www.w3.org/1999/xhtml}style")
            assert style is not None and f".{ACTIVE_CLASS}" in style.text


def test_everything_else_is_copied_byte_for_byte(made):
    source, _, narration, target = made
    chapter_docs = {a.chapter.href for a in narration}
    with zipfile.ZipFile(source) as before, zipfile.ZipFile(target) as after:
        opf_path, _ = opf_of(before)
        for info in before.infolist():
            if info.filename not in chapter_docs | {opf_path}:
                assert after.read(info.filename) == before.read(info.filename), info.filename
        assert {"EPUB/cover.png", "EPUB/nav.xhtml", "EPUB/toc.ncx", "EPUB/style.css"} <= set(before.namelist())
        blank = etree.XMLParser(remove_blank_text=True)  # the style's indentation is not the point
        for entry in narration:  # the reader's document, with only a style added
            new = etree.fromstring(after.read(entry.chapter.href), blank)
            for style in new.iter("{http://www.w3.org/1999/xhtml}style"):
                style.getparent().remove(style)
            given = etree.fromstring(entry.chapter.document, blank)
            assert etree.tostring(new, method="c14n") == etree.tostring(given, method="c14n")


def test_narrating_a_read_along_again_replaces_its_overlays(made, tmp_path):
    _, book, narration, first = made
    again = tmp_path / "again.epub"
    with zipfile.ZipFile(first) as archive:  # as the reader would give it: the read-along's own document
        chapter = replace(narration[0].chapter, document=archive.read("EPUB/ch1.xhtml"))
    audio = tmp_path / "shorter.m4a"
    write_audio(audio, narration[0].seconds - 0.5)
    shorter = replace(narration[0], chapter=chapter, audio=audio, seconds=narration[0].seconds - 0.5)
    write_readalong(again, first, book, [shorter])
    with zipfile.ZipFile(first) as before, zipfile.ZipFile(again) as after:
        _, package = opf_of(after)
        smils = [i for i in package.iter(f"{OPF}item") if i.get("media-type") == "application/smil+xml"]
        assert len(smils) == 3  # chapter 1's old overlay is gone, chapters 2 and 3 keep theirs
        audio_names = sorted(name for name in after.namelist() if "/audio/" in name)
        assert audio_names == ["EPUB/audio/chapter-001.m4a", "EPUB/audio/chapter-002.m4a", "EPUB/audio/chapter-003.mp3"]
        assert after.read("EPUB/audio/chapter-001.m4a") == audio.read_bytes()  # the old narration is not carried
        assert len(set(after.namelist())) == len(after.namelist())
        metas = [m for m in package.iter(f"{OPF}meta") if m.get("property") == "media:duration"]
        durations = {m.get("refines"): m.text for m in metas}
        assert len(durations) == len(metas) == 4
        total = clock_seconds(durations.pop(None))
        assert total == pytest.approx(sum(clock_seconds(v) for v in durations.values()), abs=1e-9)
        assert total == pytest.approx(sum(a.seconds for a in narration) - 0.5, abs=0.003)
        pars = overlays(after)["EPUB/ch1.xhtml"][1]
        assert pars[-1][3] <= shorter.seconds
        assert overlays(after)["EPUB/text/ch2.xhtml"] == overlays(before)["EPUB/text/ch2.xhtml"]
        styles = etree.fromstring(after.read("EPUB/ch1.xhtml")).findall(".//{http://www.w3.org/1999/xhtml}style")
        assert len(styles) == 1


@pytest.mark.skipif(epubcheck_command() is None, reason="epubcheck (and Java) is not installed; CI installs it")
def test_epubcheck_finds_no_errors(made, tmp_path):
    _, _, _, target = made
    report = tmp_path / "report.json"
    done = subprocess.run(
        [*epubcheck_command(), str(target), "--json", str(report)], capture_output=True, text=True, timeout=120
    )
    messages = json.loads(report.read_text())["messages"]
    problems = [
        f"{m['severity']} {m['ID']}: {m['message']} at {[loc.get('path') for loc in m['locations']]}"
        for m in messages
        if m["severity"] in ("FATAL", "ERROR", "WARNING")
    ]
    assert done.returncode == 0 and not problems, "\n".join(problems) or done.stdout + done.stderr


def test_fragment_clips_skip_wordless_fragments_and_never_overlap():
    text = "Hello there. -- Bye now."
    chapter = Chapter(
        "t",
        text,
        fragments=(Fragment("a", 0, 12), Fragment("dash", 13, 15), Fragment("b", 16, 24)),
    )
    words = [
        WordTiming("Hello", 0.0, 0.4, 0, 5),
        WordTiming("there. --", 0.4, 1.0004, 6, 15),  # punctuation joined to the word before
        WordTiming("Bye", 0.9, 1.5, 16, 19),  # starts before the last word ended
        WordTiming("now.", 1.5, 2.4, 20, 24),  # ends after the audio does
    ]
    assert fragment_clips(chapter, words, 2.0) == [Clip("a", 0, 1000), Clip("b", 1000, 2000)]
    squeezed = [WordTiming("Hello", 0.0, 1.0, 0, 5), WordTiming("Bye", 0.5, 0.9, 16, 19)]
    assert fragment_clips(chapter, squeezed, 2.0) == [Clip("a", 0, 1000)]
    assert fragment_clips(chapter, [], 2.0) == []


def test_clock_values():
    assert clock_value(0) == "0:00:00.000"
    assert clock_value(83_456) == "0:01:23.456"
    assert clock_value(3_723_004) == "1:02:03.004"


def rewritten(source: Path, target: Path, change) -> Path:
    """A copy of the EPUB with its package document changed by ``change`` (bytes -> bytes)."""
    with zipfile.ZipFile(source) as before, zipfile.ZipFile(target, "w") as after:
        opf_path, _ = opf_of(before)
        for info in before.infolist():
            data = before.read(info.filename)
            after.writestr(info, change(data) if info.filename == opf_path else data)
    return target


def test_epub2_is_refused_in_one_line_and_nothing_is_written(made, tmp_path):
    source, book, narration, _ = made
    old = rewritten(source, tmp_path / "old.epub", lambda opf: opf.replace(b'version="3.0"', b'version="2.0"'))
    target = tmp_path / "out.epub"
    with pytest.raises(BookError, match="^read-along needs an EPUB 3 input; this book is EPUB 2.0$"):
        write_readalong(target, old, book, narration)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.epub"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: replace(a, chapter=replace(a.chapter, document=None)), "has no EPUB document"),
        (lambda a: replace(a, chapter=replace(a.chapter, href="EPUB/missing.xhtml")), "not an XHTML document"),
        (lambda a: replace(a, audio=a.audio.with_suffix(".wav")), r"is not \.m4a \(AAC\) or \.mp3"),
        (lambda a: replace(a, audio=a.audio.with_name("gone.m4a")), "is not a file"),
        (lambda a: replace(a, words=[]), "no fragment of its document has a timed word"),
        (
            lambda a: replace(a, chapter=replace(a.chapter, document=a.chapter.document.replace(b"tada-s2", b"x"))),
            "no element with id 'tada-s2'",
        ),
    ],
)
def test_a_chapter_that_cannot_be_narrated_is_a_book_error(made, tmp_path, change, message):
    source, book, narration, _ = made
    target = tmp_path / "out.epub"
    target.write_bytes(b"left alone")
    with pytest.raises(BookError, match=message):
        write_readalong(target, source, book, [narration[0], change(narration[1])])
    assert target.read_bytes() == b"left alone" and sorted(tmp_path.iterdir()) == [target]
