"""Reading books: EPUB (chapters, skipped parts, metadata, read-along fragments), Markdown, HTML,
chapter selection and listing."""

from __future__ import annotations

import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from tadastream.books import Book, BookError, Chapter
from tadastream.books.reading import (
    CHARACTERS_PER_SECOND,
    book_from_text,
    chapter_listing,
    read_book,
    select_chapters,
)
from tadastream.scripts import display_width
from tests.helpers.books import AUTHOR, CHAPTER_TEXTS, NAV_TITLES, TITLE, build_epub, tiny_png

OPS = "{http://www.idpf.org/2007/ops}type"
NOT_SPOKEN = {"script", "style", "rt", "rp", "img"}


def spoken(element) -> str:
    """What a listener hears of an element: its text without notes, note markers, scripts, ruby
    annotations; soft hyphens out, whitespace collapsed (written independently of the reader)."""
    parts: list[str] = []

    def visit(el) -> None:
        if el.text:
            parts.append(el.text)
        for child in el:
            name = etree.QName(child).localname if isinstance(child.tag, str) else ""
            types = set((child.get(OPS) or "").split()) if name else set()
            note = types & {"noteref", "footnote", "pagebreak"} or (name == "sup" and child.find(".//{*}a") is not None)
            if name == "br":
                parts.append(" ")
            elif name and name not in NOT_SPOKEN and not note:
                visit(child)
            if child.tail:
                parts.append(child.tail)

    visit(element)
    return " ".join("".join(parts).replace("\u00ad", "").split())


def check_fragments(chapter: Chapter) -> None:
    """The read-along contract: well-formed document, unique ids, each fragment's text is its
    element's spoken text, fragments in order without overlap, and all speech covered."""
    root = etree.fromstring(chapter.document)
    ids = [el.get("id") for el in root.iter() if isinstance(el.tag, str) and el.get("id")]
    assert len(ids) == len(set(ids)), "ids are unique"
    by_id = {el.get("id"): el for el in root.iter() if isinstance(el.tag, str) and el.get("id")}
    assert chapter.fragments, "a chapter with text has fragments"
    covered = [False] * len(chapter.text)
    previous_end = 0
    for fragment in chapter.fragments:
        assert previous_end <= fragment.start < fragment.end <= len(chapter.text)
        previous_end = fragment.end
        assert spoken(by_id[fragment.element_id]) == chapter.text[fragment.start : fragment.end]
        covered[fragment.start : fragment.end] = [True] * (fragment.end - fragment.start)
    assert all(ok or ch.isspace() for ok, ch in zip(covered, chapter.text)), "every spoken character is in a fragment"


@pytest.fixture(scope="module")
def epub_path(tmp_path_factory) -> Path:
    return build_epub(tmp_path_factory.mktemp("books") / "lighthouse.epub")


@pytest.fixture(scope="module")
def book(epub_path) -> Book:
    return read_book(epub_path)


# --------------------------------------------------------------------------- EPUB content


def test_epub_chapters_in_spine_order_titled_by_the_navigation(book, epub_path):
    assert [c.title for c in book.chapters] == list(NAV_TITLES)
    assert [c.text for c in book.chapters] == list(CHAPTER_TEXTS)
    assert [c.href for c in book.chapters] == ["EPUB/chapter1.xhtml", "EPUB/chapter2.xhtml", "EPUB/chapter3.xhtml"]
    assert (book.title, book.author, book.language, book.kind, book.source) == (TITLE, AUTHOR, "en", "epub", epub_path)
    assert book.cover is not None and book.cover.media_type == "image/png" and book.cover.data == tiny_png()


def test_cover_toc_and_copyright_are_skipped_and_listed(book):
    assert book.skipped == ("cover (cover.xhtml)", "table of contents (nav.xhtml)", "copyright (copyright.xhtml)")
    assert not any("rights reserved" in c.text for c in book.chapters)


def test_non_linear_items_are_skipped_and_listed(tmp_path):
    book = read_book(build_epub(tmp_path / "b.epub", nonlinear=True))
    assert "outside the reading order (map.xhtml)" in book.skipped
    assert len(book.chapters) == 3


def test_footnotes_scripts_and_styles_are_not_spoken(book):
    text = "\n".join(c.text for c in book.chapters)
    for absent in ("never spoken", "one hundred and twelve", "text-indent", "stairs1", "The cover"):
        assert absent not in text
    assert "the stairs and lit the lamp" in text
    assert "\u00ad" not in text and "\u00a0" not in text


def test_fragments_cover_the_text_and_documents_stay_xhtml(book):
    for chapter in book.chapters:
        check_fragments(chapter)
        assert chapter.document.startswith(b"<?xml") and b"<!DOCTYPE html>" in chapter.document
        assert b'xmlns="http://www.w3.org/1999/xhtml"' in chapter.document


def test_sentences_in_one_text_node_get_spans_and_crossing_markup_gets_the_block(book):
    storm, ship = book.chapters[0], book.chapters[1]
    root = etree.fromstring(ship.document)
    crossing = next(f for f in ship.fragments if "very faint" in ship.text[f.start : f.end])
    element = root.find(f".//*[@id='{crossing.element_id}']")
    assert etree.QName(element).localname == "p"
    crossing_text = "At midnight she saw a light. It was very faint, far to the south."
    assert ship.text[crossing.start : crossing.end] == crossing_text
    spans = [f for f in storm.fragments if f.element_id.startswith("tada-s")]
    assert [storm.text[f.start : f.end] for f in spans][:3] == [
        "Chapter One: The Storm",
        "The wind rose at dusk.",
        "Waves struck the rocks below the tower.",
    ]
    assert b'<h1 id="c1">' in storm.document, "existing ids are kept"


def test_new_ids_never_clash_with_existing_ones(tmp_path):
    body = '<p id="tada-s1">Taken. Also taken.</p><p id="tada-b1">One <b>bold</b> move.</p><p>Free here.</p>'
    chapter = read_book(build_epub(tmp_path / "b.epub", chapters=[("Ids", "ids.xhtml", body)])).chapters[0]
    check_fragments(chapter)
    assert [f.element_id for f in chapter.fragments] == ["tada-s2", "tada-s3", "tada-b1", "tada-s4"]


def test_text_beside_blocks_is_wrapped_when_a_sentence_crosses_markup(tmp_path):
    body = "<div>Loose words here. And <b>bold</b> ones.<p>A paragraph.</p>Tail text, <i>inline</i>.</div>"
    chapter = read_book(build_epub(tmp_path / "b.epub", chapters=[("Mixed", "mixed.xhtml", body)])).chapters[0]
    assert chapter.text == "Loose words here. And bold ones.\n\nA paragraph.\n\nTail text, inline."
    check_fragments(chapter)
    root = etree.fromstring(chapter.document)
    wrappers = [el for el in root.iter("{*}span") if el.get("id", "").startswith("tada-b")]
    assert len(wrappers) == 2 and all(etree.QName(w.getparent()).localname == "div" for w in wrappers)


def test_ruby_annotations_and_page_breaks_are_not_spoken(tmp_path):
    body = (
        "<p><ruby>漢<rt>かん</rt>字<rt>じ</rt></ruby>を読む。次の文。</p>"
        '<p>Before<span epub:type="pagebreak" id="p7">7</span> after.</p>'
    )
    chapter = read_book(build_epub(tmp_path / "b.epub", chapters=[("R", "r.xhtml", body)])).chapters[0]
    assert chapter.text == "漢字を読む。次の文。\n\nBefore after."
    check_fragments(chapter)


def test_epub2_with_an_ncx_only(tmp_path):
    path = build_epub(tmp_path / "old.epub", epub2=True)
    with zipfile.ZipFile(path) as archive:
        assert 'version="2.0"' in archive.read("EPUB/content.opf").decode()
        assert "EPUB/nav.xhtml" not in archive.namelist()
    book = read_book(path)
    assert [c.title for c in book.chapters] == list(NAV_TITLES)
    assert [c.text for c in book.chapters] == list(CHAPTER_TEXTS)
    assert book.skipped == ("cover (cover.xhtml)", "copyright (copyright.xhtml)")
    assert book.cover is not None and book.cover.data == tiny_png()
    for chapter in book.chapters:  # XHTML 1.1 doctype with &nbsp; and no DTD to resolve it
        check_fragments(chapter)
        assert b"-//W3C//DTD XHTML 1.1//EN" in chapter.document


def test_titles_fall_back_to_the_heading_then_chapter_number(tmp_path):
    chapters = [
        ("Named", "a.xhtml", "<h2>Heading A</h2><p>Alpha text.</p>"),
        (None, "b.xhtml", "<h2>Heading B</h2><p>Beta text.</p>"),
        (None, "c.xhtml", "<p>Gamma text without a heading.</p>"),
    ]
    book = read_book(build_epub(tmp_path / "b.epub", chapters=chapters, cover=False, copyright_page=False))
    assert [c.title for c in book.chapters] == ["Named", "Heading B", "Chapter 3"]


def test_front_matter_without_semantics_is_found_by_name_and_text(tmp_path):
    long_text = "<p>" + "The cover story went on and on. " * 100 + "</p>"
    chapters = [
        ("Colophon", "colophon.xhtml", "<p>Set in Garamond.</p>"),
        ("Legal", "part0002.xhtml", "<p>Published 2024. ISBN 978-3-16-148410-0</p>"),
        ("Contents", "front.xhtml", "<h1>Contents</h1><p>One</p><p>Two</p>"),
        ("The Cover Story", "cover-story.xhtml", long_text),
    ]
    book = read_book(build_epub(tmp_path / "b.epub", chapters=chapters, cover=False, copyright_page=False))
    assert book.skipped == (
        "table of contents (nav.xhtml)",
        "colophon (colophon.xhtml)",
        "copyright (part0002.xhtml)",
        "table of contents (front.xhtml)",
    )
    assert [c.title for c in book.chapters] == ["The Cover Story"]


def test_a_document_that_is_not_xml_is_read_without_read_along(tmp_path):
    path = build_epub(tmp_path / "b.epub", chapters=[("Loose", "loose.xhtml", "<p>Unclosed <b>bold.</p>")])
    chapter = read_book(path).chapters[0]
    assert chapter.text == "Unclosed bold."
    assert chapter.document is None and chapter.fragments == ()


# --------------------------------------------------------------------------- EPUB errors


@pytest.mark.parametrize("drm", [True, "rights"])
def test_drm_protected_epub_is_refused_clearly(tmp_path, drm):
    with pytest.raises(BookError, match="DRM-protected.*cannot read it"):
        read_book(build_epub(tmp_path / "locked.epub", drm=drm))


def test_obfuscated_fonts_alone_are_not_drm(tmp_path):
    path = build_epub(tmp_path / "fonts.epub", obfuscated_fonts=True)
    with zipfile.ZipFile(path) as archive:
        assert "META-INF/encryption.xml" in archive.namelist()
    assert [c.text for c in read_book(path).chapters] == list(CHAPTER_TEXTS)


def test_not_a_zip_is_not_a_readable_epub(tmp_path):
    path = tmp_path / "fake.epub"
    path.write_text("just some text")
    with pytest.raises(BookError, match=r"fake.epub is not a readable EPUB \(not a zip archive\): .*check"):
        read_book(path)


def test_a_zip_without_a_package_is_not_a_readable_epub(tmp_path):
    path = tmp_path / "other.epub"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(BookError, match="not a readable EPUB"):
        read_book(path)


def rewritten(source: Path, target: Path, changes: dict[str, bytes | None]) -> Path:
    """A copy of the zip at ``source`` with some files replaced (bytes) or left out (None)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = changes.get(info.filename, old.read(info))
            if data is not None:
                new.writestr(info, data)
    return target


@pytest.mark.parametrize(
    "changes",
    [{"EPUB/content.opf": None}, {"EPUB/content.opf": b"<package><unclosed></package>"}],
    ids=["package missing", "package not XML"],
)
def test_a_broken_package_is_not_a_readable_epub(tmp_path, epub_path, changes):
    with pytest.raises(BookError, match=r"broken.epub is not a readable EPUB \(ebooklib: .*\): .*check that"):
        read_book(rewritten(epub_path, tmp_path / "broken.epub", changes))


def test_files_missing_from_the_zip_are_skipped_not_fatal(tmp_path, epub_path):
    changes = {"EPUB/chapter2.xhtml": None, "EPUB/images/cover.png": None}
    book = read_book(rewritten(epub_path, tmp_path / "lossy.epub", changes))
    assert [c.title for c in book.chapters] == [NAV_TITLES[0], NAV_TITLES[2]]
    assert "missing from the EPUB (chapter2.xhtml)" in book.skipped
    assert book.cover is None


def test_a_book_with_nothing_to_speak(tmp_path):
    chapters = [("Pictures", "pics.xhtml", '<p><img src="images/cover.png" alt="A picture of the sea"/></p>')]
    with pytest.raises(BookError, match="no speakable text.*pics.xhtml"):
        read_book(build_epub(tmp_path / "b.epub", chapters=chapters))


def test_missing_file_folder_and_unsupported_suffix(tmp_path):
    with pytest.raises(BookError, match="no such file"):
        read_book(tmp_path / "absent.epub")
    (tmp_path / "dir.epub").mkdir()
    with pytest.raises(BookError, match="folder"):
        read_book(tmp_path / "dir.epub")
    (tmp_path / "book.pdf").write_bytes(b"%PDF")
    with pytest.raises(BookError, match=r"\.epub, \.md, \.markdown, \.html, \.htm, \.xhtml"):
        read_book(tmp_path / "book.pdf")


# --------------------------------------------------------------------------- Markdown and HTML

MARKDOWN = """---
title: Notes from the Cape
author: Ada Quill
---
# My Book

An opening line
that wraps onto a second.

<!-- a comment nobody hears -->

## One

Some *emphasis*, **strong** and a [link](http://example.com) here.
An image ![the sea](sea.png) is dropped; `inline code` stays; snake_case_name too.

- first item
- second item
  continued

> quoted words
> on two lines

```python
print("fenced code is not read")
```

Two
---

Setext chapter text.[^1]

[^1]: A footnote.
"""


def test_markdown_chapters_at_headings_with_hard_wraps_joined(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text(MARKDOWN, encoding="utf-8")
    book = read_book(path)
    assert (book.title, book.author, book.kind) == ("Notes from the Cape", "Ada Quill", "markdown")
    assert [c.title for c in book.chapters] == ["My Book", "One", "Two"]
    opening, one, two = (c.text for c in book.chapters)
    assert opening == "My Book\n\nAn opening line that wraps onto a second."
    assert one == (
        "One\n\nSome emphasis, strong and a link here. An image is dropped; inline code stays; snake_case_name too."
        "\n\nfirst item\n\nsecond item continued\n\nquoted words on two lines"
    )
    assert two == "Two\n\nSetext chapter text."
    assert all(c.document is None and not c.fragments for c in book.chapters)


def test_markdown_title_from_a_single_top_heading_and_headings_only_preamble(tmp_path):
    path = tmp_path / "story.markdown"
    path.write_text("Story Title\n===========\n\n## Part A\n\nAlpha.\n\n## Part B\n\nBeta.\n", encoding="utf-8")
    book = read_book(path)
    assert book.title == "Story Title"
    assert [(c.title, c.text) for c in book.chapters] == [
        ("Part A", "Story Title\n\nPart A\n\nAlpha."),
        ("Part B", "Part B\n\nBeta."),
    ]


def test_markdown_without_headings_is_one_chapter_named_by_the_file(tmp_path):
    path = tmp_path / "plain-notes.md"
    path.write_text("Just a paragraph\nof text.\n", encoding="utf-8")
    book = read_book(path)
    assert [(c.title, c.text) for c in book.chapters] == [("plain-notes", "Just a paragraph of text.")]


HTML = """<html><head><title>Essays</title><style>body {}</style></head>
<body><h1>First</h1><p>One&nbsp;para.<br>Next line
<p>Second para<sup><a href="#n1">1</a></sup>.
<h1>Second</h1><p>Two.<script>alert("x")</script>
<aside epub:type="footnote" id="n1">A note.</aside>
</body></html>"""


def test_html_file_splits_at_the_top_heading_level(tmp_path):
    path = tmp_path / "essays.html"
    path.write_text(HTML, encoding="utf-8")
    book = read_book(path)
    assert (book.title, book.kind) == ("Essays", "html")
    assert [(c.title, c.text) for c in book.chapters] == [
        ("First", "First\n\nOne para. Next line\n\nSecond para."),
        ("Second", "Second\n\nTwo."),
    ]


def test_book_from_text():
    book = book_from_text("  Hello there.\r\n\r\nSecond paragraph.  ", "Greeting")
    assert book.kind == "text" and book.title == "Greeting"
    assert [(c.title, c.text) for c in book.chapters] == [("Greeting", "Hello there.\n\nSecond paragraph.")]
    with pytest.raises(BookError, match="nothing to speak"):
        book_from_text(" ... ", "Empty")


# --------------------------------------------------------------------------- selection and listing


def numbered(count: int) -> Book:
    return Book("B", tuple(Chapter(f"C{n}", "x" * (15 * n)) for n in range(1, count + 1)), skipped=("cover (c.xhtml)",))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("3-7", [3, 4, 5, 6, 7]),
        ("2", [2]),
        ("1,3,5-", [1, 3, 5, 6, 7, 8]),
        ("-4", [1, 2, 3, 4]),
        ("5-", [5, 6, 7, 8]),
        (" 6 , 2 - 3 , 2 ", [2, 3, 6]),
        ("1-8", [1, 2, 3, 4, 5, 6, 7, 8]),
    ],
)
def test_select_chapters(spec, expected):
    chosen = select_chapters(numbered(8), spec)
    assert [c.title for c in chosen.chapters] == [f"C{n}" for n in expected]
    assert chosen.skipped == ("cover (c.xhtml)",)


@pytest.mark.parametrize("spec", ["0", "9", "3-9", "9-", "5-2", "", "a", "1,,2", "-", "2-3-4", "1.5"])
def test_select_chapters_refuses_what_does_not_fit(spec):
    with pytest.raises(BookError, match=r"the book has 8 chapters, give .*\"3-7\"") as raised:
        select_chapters(numbered(8), spec)
    assert "\n" not in str(raised.value)


def test_chapter_listing(book):
    lines = chapter_listing(book)
    assert lines[0].split() == ["#", "Title", "Characters", "Audio"]
    rows = lines[1:4]
    assert len({len(line) for line in lines[:4]}) == 1, "columns line up"
    for row, chapter in zip(rows, book.chapters):
        assert chapter.title in row and f"{len(chapter.text):,}" in row
    assert rows[0].rstrip().endswith(f"0:00:{round(len(book.chapters[0].text) / CHARACTERS_PER_SECOND):02d}")
    assert [line.split("skipped: ")[1] for line in lines[4:7]] == list(book.skipped)
    assert lines[-1].startswith(f"Total: 3 chapters, {book.characters:,} characters, about 0:00:")
    assert f"{CHARACTERS_PER_SECOND} characters a second" in lines[-1]


def test_chapter_listing_aligns_wide_titles_and_cuts_long_ones():
    book = Book("B", (Chapter("灯台守の夜", "x" * 30), Chapter("A" * 80, "y" * 15), Chapter("Short", "z")))
    lines = chapter_listing(book)
    assert len({display_width(line) for line in lines[:4]}) == 1, "columns line up on screen"
    assert "A" * 59 + "…" in lines[2]


def test_chapter_listing_times_in_hours():
    book = Book("Long", (Chapter("Epic", "x" * (CHARACTERS_PER_SECOND * 3725)),))
    assert "1:02:05" in chapter_listing(book)[1]


# --------------------------------------------------------------------------- property: fragments match

_LETTERS = list("abcdefgXYZéß1") + list("日本語のテキスト漢字") + list("كتابعربي") + ["\u00ad"]
_WORD = st.text(alphabet=st.sampled_from(_LETTERS), min_size=1, max_size=7)
_END = st.sampled_from([".", "!", "?", "。", "؟", "", ","])
_SPACE = st.sampled_from([" ", "  ", "\n   ", "\u00a0", " \u00a0 "])


@st.composite
def paragraphs(draw) -> list[str]:
    """XHTML paragraph contents: sentences of words in several scripts, some words in <em>."""
    result = []
    for _ in range(draw(st.integers(1, 4))):
        parts = []
        for _ in range(draw(st.integers(1, 4))):
            words = [escape(w) for w in draw(st.lists(_WORD, min_size=1, max_size=5))]
            if draw(st.booleans()) and len(words) > 1:
                k = draw(st.integers(0, len(words) - 1))
                words[k] = f"<em>{words[k]}</em>"
            parts.append(draw(_SPACE).join(words) + draw(_END))
        result.append(draw(_SPACE).join(parts))
    return result


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paragraphs())
def test_fragments_match_their_elements_for_any_text(tmp_path, paras):
    body = "<h1>Heading</h1>" + "".join(f"<p>{p}</p>" for p in paras)
    chapter = read_book(build_epub(tmp_path / "p.epub", chapters=[("T", "t.xhtml", body)], cover=False)).chapters[0]
    check_fragments(chapter)
    root = etree.fromstring(f"<body>{body}</body>")
    expected = [spoken(el) for el in root]
    assert chapter.text == "\n\n".join(t for t in expected if any(ch.isalnum() for ch in t))


# --------------------------------------------------------------------------- a hand-made EPUB 2 package

_XHTML11 = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.1//EN" "http://www.w3.org/TR/xhtml11/DTD/xhtml11.dtd">\n'
    '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Sea Tales</title>'
    '<link rel="stylesheet" href="../Styles/style.css" type="text/css"/></head><body>{}</body></html>'
)
_LONG = " ".join(["The tide came in and went out again, as tides do."] * 50)
_PACKAGE = {
    "mimetype": "application/epub+zip",
    "META-INF/container.xml": '<?xml version="1.0"?><container version="1.0" '
    'xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles>'
    '<rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles></container>',
    "OEBPS/content.opf": """<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="2.0" unique-identifier="uid">
 <metadata xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:opf="http://www.idpf.org/2007/opf">
  <dc:title>Sea Tales</dc:title><dc:identifier id="uid">x-1</dc:identifier>
  <dc:creator opf:role="aut">Jon Brine</dc:creator><dc:creator opf:role="ill">Ink Maker</dc:creator>
  <dc:language>en-GB</dc:language><meta name="cover" content="cover-jpg"/>
 </metadata>
 <manifest>
  <item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/>
  <item id="title" href="Text/title.xhtml" media-type="application/xhtml+xml"/>
  <item id="ch1" href="Text/ch1.xhtml" media-type="application/xhtml+xml"/>
  <item id="ch2" href="Text/chapter%20two.xhtml" media-type="application/xhtml+xml"/>
  <item id="notes" href="Text/notes.xhtml" media-type="application/xhtml+xml"/>
  <item id="cover-jpg" href="Images/cover.jpg" media-type="image/jpeg"/>
  <item id="css" href="Styles/style.css" media-type="text/css"/>
 </manifest>
 <spine toc="ncx">
  <itemref idref="title"/><itemref idref="ch1"/><itemref idref="ch2"/><itemref idref="notes" linear="no"/>
 </spine>
 <guide>
  <reference type="title-page" title="Title" href="Text/title.xhtml"/>
  <reference type="toc" title="Contents" href="Text/ch1.xhtml#contents"/>
 </guide>
</package>""",
    "OEBPS/toc.ncx": """<?xml version="1.0" encoding="utf-8"?>
<ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" version="2005-1"><head/><docTitle><text>Sea Tales</text></docTitle>
<navMap>
 <navPoint id="n1" playOrder="1"><navLabel><text>
   I. The   Tide</text></navLabel><content src="Text/ch1.xhtml#chap1"/>
  <navPoint id="n1a" playOrder="2"><navLabel><text>A Section</text></navLabel>
   <content src="Text/ch1.xhtml#sec"/></navPoint>
 </navPoint>
 <navPoint id="n2" playOrder="3"><navLabel><text>II. The Wreck</text></navLabel>
  <content src="Text/chapter%20two.xhtml"/></navPoint>
</navMap></ncx>""",
    "OEBPS/Text/title.xhtml": _XHTML11.format("<h1>Sea Tales</h1><p>by Jon Brine</p>"),
    "OEBPS/Text/ch1.xhtml": _XHTML11.format(
        '<div id="contents"><p>Contents: I, II.</p></div><hr/>'
        '<h2 id="chap1">I.&nbsp;The Tide</h2>'
        '<p>It rose&mdash;and fell.<a href="notes.xhtml#n1" class="pginternal">[1]</a> Again.</p>'
        f'<p>&#160;</p><p>{_LONG}</p><h3 id="sec">A Section</h3>'
        "<p class='poem'>Wave upon wave,<br/>\nstone upon stone.</p>"
    ),
    "OEBPS/Text/chapter two.xhtml": _XHTML11.format("<h2>II. The Wreck</h2><p>Timbers creaked.</p>"),
    "OEBPS/Text/notes.xhtml": _XHTML11.format('<p id="n1">[1] A note about tides.</p>'),
    "OEBPS/Images/cover.jpg": b"\xff\xd8\xff\xe0" + b"\x00" * 32 + b"\xff\xd9",
    "OEBPS/Styles/style.css": "p { margin: 0 }",
}


def test_a_hand_made_epub2_package_in_subfolders(tmp_path):
    path = tmp_path / "sea.epub"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in _PACKAGE.items():
            archive.writestr(name, data)
    book = read_book(path)
    assert (book.title, book.author, book.language) == ("Sea Tales", "Jon Brine", "en-GB")
    assert book.cover is not None and book.cover.media_type == "image/jpeg"
    assert book.skipped == ("title page (Text/title.xhtml)", "outside the reading order (Text/notes.xhtml)")
    tide, wreck = book.chapters
    assert (tide.title, tide.href) == ("I. The Tide", "OEBPS/Text/ch1.xhtml")
    assert (wreck.title, wreck.href) == ("II. The Wreck", "OEBPS/Text/chapter two.xhtml")
    assert tide.text.startswith("Contents: I, II.\n\nI. The Tide\n\nIt rose\u2014and fell. Again.\n\nThe tide came")
    assert tide.text.endswith("A Section\n\nWave upon wave, stone upon stone.")
    for chapter in book.chapters:
        check_fragments(chapter)
