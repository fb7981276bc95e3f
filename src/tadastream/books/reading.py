"""Books in: EPUB, Markdown and HTML files read into a :class:`~tadastream.books.book.Book`.

A narrator should hear what a listener would: the chapters, not the cover, the table of contents or
the copyright page; the words, not footnote markers, scripts or image descriptions. So each reader
reduces its input to speakable blocks (headings, paragraphs, list items, quotations, table cells),
joined by a blank line, and lists what it left out in ``Book.skipped``.

**What is skipped** (EPUB). A spine document is left out, in this order of evidence:

1. it is the navigation document (``properties="nav"``): "table of contents";
2. the EPUB 3 landmarks or the EPUB 2 guide call it ``cover``, ``toc``, ``titlepage``/``title-page``,
   ``halftitlepage``, ``copyright-page``, ``colophon``, ``imprint``, ``index``, ``loi``, ``lot``,
   ``seriespage`` or a notes section (``footnotes``, ``endnotes``, ``rearnotes``, guide ``notes``);
   a reference to a ``#fragment`` counts only for a short document (under :data:`SHORT_DOCUMENT`
   characters), since some books point such a reference into a long chapter;
3. ``linear="no"`` in the spine: "outside the reading order";
4. its ``<body>`` (or the single element inside it) carries one of those ``epub:type`` values, or
   the matching DPUB-ARIA role (``doc-cover``, ``doc-toc``, ``doc-colophon``, ...);
5. without such semantics, by heuristics: a file name with a word ``cover``, ``toc``, ``contents``,
   ``copyright``, ``colophon``, ``titlepage``, ``halftitle`` or ``imprint``; or a first heading /
   ``<title>`` reading "Contents", "Table of Contents", "Copyright", "Title Page", "Colophon",
   "Cover" or "Index"; or "All rights reserved" / an ISBN. Except for a table of contents or an
   index, these apply to short documents only, so a chapter is never dropped for its name;
6. it has no speakable text (an image page): "no speakable text".

A spine document the manifest lists but the zip lacks is listed as "missing from the EPUB";
a missing image or font is ignored, as reading systems do.

Each spine document is one chapter, even where the navigation points at ``#fragments`` inside
it (several sections of one file read as one chapter, titled by the first entry). Titles come
from the navigation (EPUB 3 ``nav.xhtml`` toc, else the EPUB 2 NCX), else the document's first
heading, else its ``<title>`` (unless that is just the book's title), else "Chapter N".

For read-along, every EPUB chapter keeps its XHTML (``Chapter.document``) with an id on each
fragment: a sentence that lies inside one run of text is wrapped in ``<span id="tada-sN">``;
a block where some sentence crosses inline markup (``<em>``, a link, a line break) is one
fragment, on the block element (its own id, else ``tada-bN``), or on a new ``<span>`` holding
the run where the block also holds other blocks. A document that is not well-formed XML is
still read (with lxml's HTML parser) but has no document or fragments.

**Markdown and HTML files** are split into chapters at the highest heading level that gives more
than one chapter (``#``/setext or ``<h1>``, else the next level down). Text before the first
such heading is a chapter of its own ("Opening", or its own heading) when it holds prose; a
heading alone there (the book's title) opens the first chapter. Markdown keeps link text and
inline code, drops images, fenced code, comments, footnotes and markers, and joins hard-wrapped
lines; YAML front matter may give ``title``, ``author`` and ``lang``. These have no read-along.
"""

from __future__ import annotations

import bisect
import html as html_lib
import posixpath
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote

from ..scripts import display_width
from ..text import is_blank
from .book import Book, BookError, Chapter, Cover, Fragment

try:  # lxml comes with the [books] extra (ebooklib needs it); Markdown and plain text do without it
    from lxml import etree
    from lxml import html as lxml_html
except ImportError:  # pragma: no cover - exercised only without the extra
    etree = lxml_html = None

__all__ = ["CHARACTERS_PER_SECOND", "book_from_text", "chapter_listing", "read_book", "select_chapters"]

#: The speaking rate assumed for estimated audio times: about 900 characters a minute, what
#: narration of English prose runs at (roughly 150 words a minute).
CHARACTERS_PER_SECOND = 15

#: Characters of speakable text under which a document counts as short front matter for the
#: skip heuristics (a copyright page or a title page is far shorter; a chapter is longer).
SHORT_DOCUMENT = 2000

_EPUB_SUFFIXES = (".epub",)
_MARKDOWN_SUFFIXES = (".md", ".markdown")
_HTML_SUFFIXES = (".html", ".htm", ".xhtml")
_SUPPORTED = ", ".join(_EPUB_SUFFIXES + _MARKDOWN_SUFFIXES + _HTML_SUFFIXES)

_OPS_NS = "http://www.idpf.org/2007/ops"
_INSTALL_HINT = "install the books extra: pip install 'tadastream[books]'"


# --------------------------------------------------------------------------- public API


def read_book(path: Path) -> Book:
    """Read the book at ``path``, by its suffix: EPUB 2 or 3, Markdown, or HTML.

    Raises :class:`BookError` (one line saying how to fix it) before any long work for a missing
    or unreadable file, an unsupported suffix, a broken or DRM-protected EPUB; and for a book
    with nothing to speak once the front matter is left out.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _EPUB_SUFFIXES + _MARKDOWN_SUFFIXES + _HTML_SUFFIXES:
        raise BookError(
            f"{path.name}: tadastream reads books in these formats: {_SUPPORTED}; "
            "convert it to EPUB first (e.g. with Calibre), or give plain text as text"
        )
    if not path.exists():
        raise BookError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise BookError(f"{path} is a folder, not a book file; give the path of the book itself")
    try:
        with path.open("rb"):
            pass
    except OSError as err:
        raise BookError(f"{path} cannot be read ({err.strerror or err}); check its permissions") from err
    if suffix in _EPUB_SUFFIXES:
        return _read_epub(path)
    if suffix in _MARKDOWN_SUFFIXES:
        return _read_markdown(path)
    return _read_html_file(path)


def book_from_text(text: str, title: str) -> Book:
    """Plain text as a one-chapter book, so text and files go through the same narration path."""
    cleaned = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00ad", "").strip()
    if is_blank(cleaned):
        raise BookError("the text has nothing to speak (no letters or digits); give the words to read")
    title = _collapse(title) or "Text"
    return Book(title=title, chapters=(Chapter(title=title, text=cleaned),), kind="text")


_SPEC_FORMS = 'a chapter "3", a range "3-7", from a chapter on "5-", up to one "-4", or a list "1,3,5-"'


def select_chapters(book: Book, spec: str) -> Book:
    """The book with only the chapters ``spec`` names (1-based), in book order, each once.

    Accepts ``"2"``, ``"3-7"``, ``"5-"``, ``"-4"`` and comma-separated lists of them (spaces
    allowed); anything out of range or malformed is a :class:`BookError` naming both.
    """
    count = len(book.chapters)

    def fail(why: str) -> BookError:
        has = f"{count} chapter{'' if count == 1 else 's'}"
        return BookError(f"chapters {spec.strip()!r}: {why}; the book has {has}, give {_SPEC_FORMS}")

    chosen: set[int] = set()
    parts = [part.strip() for part in spec.split(",")]
    if not spec.strip() or any(not part for part in parts):
        raise fail("empty selection")
    for part in parts:
        match = re.fullmatch(r"(\d*)\s*-\s*(\d*)|(\d+)", part)
        if not match or match.group(0) == "-":
            raise fail(f"{part!r} is not a chapter number or range")
        if match.group(3) is not None:
            first = last = int(match.group(3))
        else:
            first = int(match.group(1)) if match.group(1) else 1
            last = int(match.group(2)) if match.group(2) else count
        if not (1 <= first <= count and 1 <= last <= count):
            raise fail(f"{part!r} is out of range")
        if first > last:
            raise fail(f"{part!r} runs backwards")
        chosen.update(range(first, last + 1))
    chapters = tuple(chapter for number, chapter in enumerate(book.chapters, 1) if number in chosen)
    return replace(book, chapters=chapters)


def chapter_listing(book: Book) -> list[str]:
    """Lines for ``--list-chapters``: number, title, characters and estimated audio time per
    chapter (at :data:`CHARACTERS_PER_SECOND`), what was left out, and a total."""
    title_width = min(60, max([len("Title")] + [display_width(c.title) for c in book.chapters]))
    number_width = max(1, len(str(len(book.chapters))))
    chars_width = max(len("Characters"), len(f"{book.characters:,}"))
    lines = [f"{'#':>{number_width}}  {_fit('Title', title_width)}  {'Characters':>{chars_width}}  {'Audio':>8}"]
    for number, chapter in enumerate(book.chapters, 1):
        lines.append(
            f"{number:>{number_width}}  {_fit(chapter.title, title_width)}  {len(chapter.text):>{chars_width},}"
            f"  {_clock(len(chapter.text) / CHARACTERS_PER_SECOND):>8}"
        )
    for what in book.skipped:
        lines.append(f"{'-':>{number_width}}  skipped: {what}")
    count = len(book.chapters)
    lines.append(
        f"Total: {count} chapter{'s' if count != 1 else ''}, {book.characters:,} characters, "
        f"about {_clock(book.characters / CHARACTERS_PER_SECOND)} of audio "
        f"(at {CHARACTERS_PER_SECOND} characters a second)"
    )
    return lines


def _fit(text: str, width: int) -> str:
    """``text`` cut (ending in …) or padded to ``width`` screen columns: a CJK character takes two."""
    if display_width(text) > width:
        while text and display_width(text) > width - 1:
            text = text[:-1]
        text += "…"
    return text + " " * (width - display_width(text))


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# --------------------------------------------------------------------------- speakable text of (X)HTML

_BLOCK_TAGS = frozenset(
    "address article aside blockquote body caption center dd details dialog div dl dt fieldset figcaption"
    " figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr html li main nav ol p pre section summary table"
    " tbody td tfoot th thead tr ul".split()
)
# Elements whose content is never spoken (their tail, the text after them, still is).
_SILENT_TAGS = frozenset(
    "head title script style nav template noscript rt rp math svg object video audio iframe canvas select"
    " textarea button img input map area embed".split()
)
# epub:type values and DPUB-ARIA roles of notes, note references and page-break markers.
_NOTE_SEMANTICS = frozenset(
    "noteref footnote endnote rearnote note footnotes endnotes rearnotes annoref annotation pagebreak"
    " doc-noteref doc-footnote doc-endnote doc-endnotes doc-pagebreak doc-backlink".split()
)
# A note marker's text: 1, [12], (3), *, †, iv, [a].
_MARKER = re.compile(r"\s*[\[(]?\s*(?:\d{1,4}|[*†‡§¶#]+|[ivxlcdm]{1,6}|[a-z])\s*[\])]?\s*", re.IGNORECASE)
_HEADING = re.compile(r"h([1-6])")


def _local(el) -> str:
    tag = el.tag
    return tag.rpartition("}")[2].lower() if isinstance(tag, str) else ""


def _semantics(el) -> set[str]:
    """The element's ``epub:type`` tokens and ARIA roles, lower-cased."""
    value = el.get(f"{{{_OPS_NS}}}type") or el.get("epub:type") or ""
    return set(value.lower().split()) | set((el.get("role") or "").lower().split())


def _is_note_link(el) -> bool:
    """An ``<a>`` that is a footnote marker: a link into a document whose text is a marker, set
    as a superscript or in brackets."""
    if "#" not in (el.get("href") or ""):
        return False
    text = "".join(el.itertext())
    if not _MARKER.fullmatch(text):
        return False
    parent = el.getparent()
    raised = (parent is not None and _local(parent) in ("sup", "sub")) or any(
        _local(d) in ("sup", "sub") for d in el.iterdescendants()
    )
    return raised or text.strip()[:1] in ("[", "(")


def _silent(el) -> bool:
    """Whether nothing inside ``el`` is spoken: comments, scripts, notes and their markers, images, ruby."""
    if not isinstance(el.tag, str):
        return True  # comment, processing instruction, unresolved entity
    name = _local(el)
    if name in _SILENT_TAGS or el.get("hidden") is not None:
        return True
    if _semantics(el) & _NOTE_SEMANTICS:
        return True
    if name == "a":
        return _is_note_link(el)
    if name == "sup":  # a superscript holding a link is a note marker; x<sup>2</sup> is spoken
        return any(_local(d) == "a" and d.get("href") for d in el.iterdescendants())
    return False


@dataclass
class _Run:
    """A stretch of inline content read as one block: ``container.text`` (no anchor) or an
    anchor's tail, then ``nodes`` (the container's inline children) with their tails.

    ``segments`` map the collapsed text back to the text slots it came from: each is
    (start in text, piece index or -1 for a line break, offset in that piece), contiguous until
    the next segment starts."""

    container: object
    anchor: object | None
    whole: bool  # the container holds nothing but this run: it can carry the fragment itself
    nodes: list = field(default_factory=list)
    pieces: list[tuple[object, str]] = field(default_factory=list)
    chars: list[str] = field(default_factory=list)
    segments: list[tuple[int, int, int]] = field(default_factory=list)
    length: int = 0
    space: tuple[int, int] | None = None  # where a pending collapsed space comes from
    space_pending: bool = False
    starts: list[int] | None = None  # segment starts, for locate

    @property
    def text(self) -> str:
        return "".join(self.chars)

    def add(self, raw: str | None, el, slot: str) -> None:
        if not raw:
            return
        piece = len(self.pieces)
        self.pieces.append((el, slot))
        for match in _TOKENS.finditer(raw):
            chunk = match.group()
            if chunk[0] == "\u00ad":
                continue
            if chunk[0].isspace():
                if not self.space_pending:
                    self.space_pending, self.space = True, (piece, match.start())
                continue
            self._flush_space()
            self.segments.append((self.length, piece, match.start()))
            self.chars.append(chunk)
            self.length += len(chunk)

    def line_break(self) -> None:
        if not self.space_pending:
            self.space_pending, self.space = True, (-1, 0)

    def _flush_space(self) -> None:
        if self.space_pending and self.length:
            self.segments.append((self.length, *self.space))
            self.chars.append(" ")
            self.length += 1
        self.space_pending = False

    def locate(self, start: int, end: int) -> tuple[int, int, int] | None:
        """The piece and raw range holding ``text[start:end]``, or None where it crosses markup."""
        if self.starts is None:
            self.starts = [segment[0] for segment in self.segments]
        starts = self.starts
        first = bisect.bisect_right(starts, start) - 1
        last = bisect.bisect_right(starts, end - 1) - 1
        pieces = {self.segments[i][1] for i in range(first, last + 1)}
        if len(pieces) != 1 or -1 in pieces:
            return None
        piece = pieces.pop()
        raw_start = self.segments[first][2] + start - self.segments[first][0]
        raw_end = self.segments[last][2] + (end - 1) - self.segments[last][0] + 1
        return piece, raw_start, raw_end


# Whitespace (nbsp included: str.isspace), soft hyphens, and everything else, in runs.
_TOKENS = re.compile(r"\s+|\u00ad+|[^\s\u00ad]+")


def _structural(body) -> set:
    """Elements that break the flow of text: block elements and elements holding one."""
    found: set = set()
    for el in reversed(list(body.iter())):
        if isinstance(el.tag, str) and (_local(el) in _BLOCK_TAGS or any(child in found for child in el)):
            found.add(el)
    return found


def _runs(body) -> list[_Run]:
    """The runs of ``body`` in reading order; a run's text is collapsed, possibly blank."""
    structural = _structural(body)
    runs: list[_Run] = []

    def inline(run: _Run, el) -> None:
        if _local(el) == "br":
            run.line_break()
            return
        run.add(el.text, el, "text")
        for child in el:
            if not _silent(child):
                inline(run, child)
            run.add(child.tail, child, "tail")

    def walk(container) -> None:
        whole = not any(child in structural for child in container)
        run = _Run(container, None, whole)
        run.add(container.text, container, "text")
        for child in container:
            if child in structural:
                runs.append(run)
                if not _silent(child):
                    walk(child)
                run = _Run(container, child, False)
            else:
                run.nodes.append(child)
                if not _silent(child):
                    inline(run, child)
            run.add(child.tail, child, "tail")
        runs.append(run)

    walk(body)
    return [run for run in runs if run.length]


def _body(root):
    for el in root.iter():
        if _local(el) == "body":
            return el
    return root


def _heading_level(run: _Run) -> int | None:
    el = run.container
    while el is not None:
        match = _HEADING.fullmatch(_local(el))
        if match:
            return int(match.group(1))
        el = el.getparent()
    return None


def _collapse(text: str | None) -> str:
    return " ".join((text or "").replace("\u00ad", "").split())


def _head_title(root) -> str:
    for el in root.iter():
        if _local(el) == "title":
            return _collapse("".join(el.itertext()))
        if _local(el) == "body":
            break
    return ""


_NAMED_ENTITY = re.compile(rb"&([A-Za-z][A-Za-z0-9]{1,31});")
_XML_ENTITIES = frozenset(b"amp lt gt quot apos".split())


def _numeric_entities(data: bytes) -> bytes:
    """HTML named entities (``&nbsp;``) as character references: XML without the XHTML DTD has none."""

    def numeric(match: re.Match) -> bytes:
        name = match.group(1)
        if name in _XML_ENTITIES:
            return match.group()
        value = html_lib.entities.html5.get(name.decode() + ";")
        return "".join(f"&#{ord(ch)};" for ch in value).encode() if value else match.group()

    return _NAMED_ENTITY.sub(numeric, data)


def _parse(data: bytes):
    """(root, True) for well-formed XHTML, (root, False) read as HTML, or (None, False)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
    try:
        return etree.fromstring(_numeric_entities(data), parser), True
    except (etree.XMLSyntaxError, ValueError):
        pass
    try:
        return lxml_html.document_fromstring(data), False
    except (etree.ParserError, etree.XMLSyntaxError, ValueError):
        return None, False


@dataclass
class _Document:
    """One (X)HTML document read: its runs' texts with heading levels, title and skip hints."""

    root: object
    is_xml: bool
    runs: list[_Run]
    texts: list[str]
    levels: list[int | None]
    title: str

    @property
    def text(self) -> str:
        return "\n\n".join(self.texts)

    @property
    def first_heading(self) -> str:
        return next((t for t, level in zip(self.texts, self.levels) if level), "")


def _read_document(data: bytes) -> _Document | None:
    root, is_xml = _parse(data)
    if root is None:
        return None
    runs = [run for run in _runs(_body(root)) if not is_blank(run.text)]
    return _Document(root, is_xml, runs, [r.text for r in runs], [_heading_level(r) for r in runs], _head_title(root))


# --------------------------------------------------------------------------- read-along fragments


class _Ids:
    """New ids for the fragments, never one the document already uses."""

    def __init__(self, root):
        self.taken = {
            value for el in root.iter() if isinstance(el.tag, str) for value in (el.get("id"), el.get(_XML_ID)) if value
        }
        self.counts = {"s": 0, "b": 0}

    def new(self, kind: str) -> str:
        while True:
            self.counts[kind] += 1
            candidate = f"tada-{kind}{self.counts[kind]}"
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate


_XML_ID = "{http://www.w3.org/XML/1998/namespace}id"


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """Sentences of one block, as the narrator's splitter finds them; a piece with nothing to say
    (a dash, a lone quote) joins its neighbour so every fragment is heard."""
    # The narrator's own sentence rules (imported here: the drivers package loads the engine).
    from ..drivers.segments import sentences

    spans: list[tuple[int, int]] = []
    carry: int | None = None
    for start, end in sentences(text, 0, len(text)):
        if is_blank(text[start:end]):
            if spans:
                spans[-1] = (spans[-1][0], end)
            elif carry is None:
                carry = start
            continue
        spans.append((start if carry is None else carry, end))
        carry = None
    return spans


def _mark_fragments(doc: _Document) -> tuple[bytes, tuple[Fragment, ...]]:
    """Give every fragment of the document an id; the serialized document and the fragments
    (char ranges into ``doc.text``)."""
    root = doc.root
    ids = _Ids(root)
    namespace = etree.QName(root).namespace
    span_tag = f"{{{namespace}}}span" if namespace else "span"
    fragments: list[Fragment] = []
    offset = 0
    for run in doc.runs:
        text = run.text
        spans = _sentence_spans(text)
        located = [run.locate(start, end) for start, end in spans]
        if all(located):
            by_piece: dict[int, list[tuple[int, int, str]]] = {}
            for (start, end), (piece, raw_start, raw_end) in zip(spans, located):
                element_id = ids.new("s")
                by_piece.setdefault(piece, []).append((raw_start, raw_end, element_id))
                fragments.append(Fragment(element_id, offset + start, offset + end))
            for piece, ranges in by_piece.items():
                _wrap_sentences(*run.pieces[piece], ranges, span_tag)
        else:
            fragments.append(Fragment(_block_id(run, ids, span_tag), offset, offset + len(text)))
        offset += len(text) + 2
    document = etree.tostring(root.getroottree(), encoding="utf-8", xml_declaration=True)
    return document, tuple(fragments)


def _wrap_sentences(el, slot: str, ranges: list[tuple[int, int, str]], span_tag: str) -> None:
    """Wrap each raw range of ``el``'s text or tail in a new span with its id."""
    raw = getattr(el, slot)
    if slot == "text":
        parent, index = el, 0
    else:
        parent = el.getparent()
        index = parent.index(el) + 1
    setattr(el, slot, raw[: ranges[0][0]])
    for k, (start, end, element_id) in enumerate(ranges):
        span = parent.makeelement(span_tag, {"id": element_id})
        span.text = raw[start:end]
        span.tail = raw[end : ranges[k + 1][0] if k + 1 < len(ranges) else len(raw)]
        parent.insert(index + k, span)


def _block_id(run: _Run, ids: _Ids, span_tag: str) -> str:
    """The id of the element holding the whole run: the container itself, or a new span around it."""
    if run.whole:
        element_id = run.container.get("id")
        if not element_id:
            element_id = ids.new("b")
            run.container.set("id", element_id)
        return element_id
    container, anchor = run.container, run.anchor
    element_id = ids.new("b")
    span = container.makeelement(span_tag, {"id": element_id})
    if anchor is None:
        span.text, container.text, index = container.text, None, 0
    else:
        span.text, anchor.tail, index = anchor.tail, None, container.index(anchor) + 1
    for node in run.nodes:
        span.append(node)  # moves it, with its tail
    container.insert(index, span)
    return element_id


# --------------------------------------------------------------------------- EPUB

_FONT_OBFUSCATION = frozenset({"http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC"})
_DRM_FILES = {
    "meta-inf/rights.xml": "Adobe DRM",
    "meta-inf/license.lcpl": "Readium LCP DRM",
    "meta-inf/sinf.xml": "Apple FairPlay DRM",
}
_DOCUMENT_TYPES = frozenset({"application/xhtml+xml", "text/html"})

# Semantics (landmarks, guide, epub:type, roles) of documents that are not narrated.
_SKIP_KINDS = {
    "cover": "cover",
    "doc-cover": "cover",
    "toc": "table of contents",
    "doc-toc": "table of contents",
    "titlepage": "title page",
    "title-page": "title page",
    "halftitlepage": "title page",
    "copyright-page": "copyright",
    "copyright": "copyright",
    "colophon": "colophon",
    "doc-colophon": "colophon",
    "imprint": "imprint",
    "index": "index",
    "doc-index": "index",
    "loi": "list of illustrations",
    "lot": "list of tables",
    "seriespage": "series page",
    "footnotes": "notes",
    "endnotes": "notes",
    "rearnotes": "notes",
    "notes": "notes",
    "doc-endnotes": "notes",
}
_NAME_WORDS = {
    "cover": "cover",
    "toc": "table of contents",
    "contents": "table of contents",
    "copyright": "copyright",
    "colophon": "colophon",
    "titlepage": "title page",
    "halftitle": "title page",
    "halftitlepage": "title page",
    "imprint": "imprint",
}
_TITLE_WORDS = {
    "contents": "table of contents",
    "table of contents": "table of contents",
    "copyright": "copyright",
    "copyright page": "copyright",
    "title page": "title page",
    "colophon": "colophon",
    "cover": "cover",
    "index": "index",
}
_ANY_LENGTH = frozenset({"table of contents", "index"})
_COPYRIGHT_TEXT = re.compile(r"all rights reserved|\bISBN(?:-1[03])?:?\s*[\dX][\d\s-]{8,}", re.IGNORECASE)


def _broken(path: Path, why: str, detail: object) -> BookError:
    return BookError(
        f"{path.name} is not a readable EPUB ({why}): {detail}; "
        "check that the download finished, or convert the book to EPUB again (e.g. with Calibre)"
    )


def _check_container(path: Path) -> None:
    """Refuse a file that is no zip, has no container, or is DRM-protected, before any parsing."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {name.lower(): name for name in archive.namelist()}
            if "meta-inf/container.xml" not in names:
                raise _broken(path, "no META-INF/container.xml", "not an EPUB package")
            for marker, scheme in _DRM_FILES.items():
                if marker in names:
                    raise _drm(path, scheme)
            if "meta-inf/encryption.xml" in names:
                _check_encryption(path, archive.read(names["meta-inf/encryption.xml"]))
    except zipfile.BadZipFile as err:
        raise _broken(path, "not a zip archive", err) from err
    except (OSError, zipfile.LargeZipFile) as err:
        raise _broken(path, "zip archive cannot be opened", err) from err


def _drm(path: Path, scheme: str) -> BookError:
    return BookError(
        f"{path.name} is DRM-protected ({scheme}); tadastream cannot read it: use a DRM-free edition of the book"
    )


def _check_encryption(path: Path, data: bytes) -> None:
    """Encrypted resources mean DRM, except fonts obfuscated as EPUB allows (the text is plain)."""
    try:
        root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as err:
        raise _broken(path, "META-INF/encryption.xml is not XML", err) from err
    for encrypted in root.iter():
        if _local(encrypted) != "encrypteddata":
            continue
        algorithm = next((m.get("Algorithm", "") for m in encrypted.iter() if _local(m) == "encryptionmethod"), "")
        if algorithm not in _FONT_OBFUSCATION:
            uri = next((r.get("URI", "") for r in encrypted.iter() if _local(r) == "cipherreference"), "")
            raise _drm(path, f"{uri or 'its content'} is encrypted with {algorithm or 'an unnamed cipher'}")


def _resolve(base: str, href: str | None) -> tuple[str, str] | None:
    """An href inside the package as (path relative to the OPF folder, as manifest items are; fragment)."""
    href = (href or "").strip()
    if not href or re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", href):
        return None
    path, _, fragment = href.partition("#")
    if not path:
        return None
    return posixpath.normpath(posixpath.join(base, unquote(path))), fragment


def _nav_entries(data: bytes, base: str) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, set[str]]]]:
    """The EPUB 3 navigation document's toc entries (path, fragment, title) and landmarks
    (path, fragment, types)."""
    root, _ = _parse(data)
    toc: list[tuple[str, str, str]] = []
    landmarks: list[tuple[str, str, set[str]]] = []
    if root is None:
        return toc, landmarks
    for nav in root.iter():
        if _local(nav) != "nav":
            continue
        kinds = _semantics(nav)
        for link in nav.iter():
            if _local(link) != "a" or not (target := _resolve(base, link.get("href"))):
                continue
            if "toc" in kinds or "doc-toc" in kinds:
                toc.append((*target, _collapse("".join(link.itertext()))))
            elif "landmarks" in kinds:
                landmarks.append((*target, _semantics(link)))
    return toc, landmarks


def _ncx_entries(data: bytes, base: str) -> list[tuple[str, str, str]]:
    """The EPUB 2 NCX's navPoints in document order: (path, fragment, title)."""
    try:
        root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True, recover=True))
    except etree.XMLSyntaxError:
        return []
    if root is None:
        return []
    entries = []
    for point in root.iter():
        if _local(point) != "navpoint":
            continue
        label, target = "", None
        for child in point:
            if _local(child) == "navlabel":
                label = _collapse(" ".join(t.text or "" for t in child.iter() if _local(t) == "text"))
            elif _local(child) == "content":
                target = _resolve(base, child.get("src"))
        if target:
            entries.append((*target, label))
    return entries


def _load_epub(path: Path):
    """ebooklib's view of the package, the OPF's folder, and the manifest files missing from the zip.

    Two leniencies readers have too: ebooklib's nav/NCX parsing is left out (it fails on odd but
    readable navigation; :func:`_nav_entries` and :func:`_ncx_entries` tolerate it), and a file the
    manifest lists but the zip lacks reads as empty instead of failing the book (a lost image is
    common); only the package document itself must be there."""
    from ebooklib import epub

    class Reader(epub.EpubReader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.missing: set[str] = set()

        def read_file(self, name):
            try:
                return super().read_file(name)
            except KeyError:
                if not self.opf_file or posixpath.normpath(name) == posixpath.normpath(self.opf_file):
                    raise
                self.missing.add(posixpath.normpath(name))
                return b""

        def _parse_nav(self, data, base_path, navtype="toc"):  # parsed by _nav_entries
            pass

        def _parse_ncx(self, data):  # parsed by _ncx_entries
            pass

    reader = Reader(str(path), {"ignore_ncx": True})
    book = reader.load()
    reader.process()
    return book, reader.opf_dir, reader.missing


def _metadata(book, name: str) -> list[tuple[str, dict]]:
    try:
        return [(value, attrs or {}) for value, attrs in book.get_metadata("DC", name) if value and value.strip()]
    except KeyError:
        return []


def _cover(book) -> Cover | None:
    """The cover image: EPUB 3 ``cover-image``, EPUB 2 ``<meta name="cover">``, else an image named cover."""
    from ebooklib import epub

    candidates = [item for item in book.get_items() if isinstance(item, epub.EpubCover)]
    try:
        metas = book.get_metadata("OPF", "cover")
    except KeyError:
        metas = []
    for _, attrs in metas:
        ref = (attrs or {}).get("content")
        item = (book.get_item_with_id(ref) or book.get_item_with_href(ref)) if ref else None
        if item is not None:
            candidates.append(item)
    candidates += [
        item
        for item in book.get_items()
        if (item.media_type or "").startswith("image/") and "cover" in f"{item.id} {item.file_name}".lower()
    ]
    for item in candidates:
        data = item.content or b""
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return Cover(data, "image/png")
        if data.startswith(b"\xff\xd8\xff"):
            return Cover(data, "image/jpeg")
    return None


def _read_epub(path: Path) -> Book:
    if etree is None:
        raise BookError(f"reading {path.name} needs lxml and ebooklib: {_INSTALL_HINT}")
    try:
        import ebooklib.epub as epub
    except ImportError as err:
        raise BookError(f"reading {path.name} needs ebooklib: {_INSTALL_HINT}") from err
    _check_container(path)
    try:
        book, opf_dir, missing = _load_epub(path)
    except Exception as err:  # ebooklib raises whatever its parsing meets on a broken package
        raise _broken(path, f"ebooklib: {type(err).__name__}", err) from err

    nav_item = next((item for item in book.get_items() if isinstance(item, epub.EpubNav)), None)
    toc: list[tuple[str, str, str]] = []
    landmarks: list[tuple[str, str, set[str]]] = []
    if nav_item is not None:
        toc, landmarks = _nav_entries(nav_item.content, posixpath.dirname(nav_item.file_name))
    if not toc:
        ncx = next((item for item in book.get_items() if isinstance(item, epub.EpubNcx)), None)
        if ncx is not None:
            toc = _ncx_entries(ncx.content, posixpath.dirname(ncx.file_name))
    nav_titles: dict[str, str] = {}
    for target, _, title in toc:
        if title:
            nav_titles.setdefault(target, title)
    semantics: dict[str, list[tuple[str, bool]]] = {}
    for target, fragment, kinds in landmarks:
        for kind in kinds:
            semantics.setdefault(target, []).append((kind, bool(fragment)))
    for reference in getattr(book, "guide", None) or []:
        if target := _resolve("", reference.get("href")):
            semantics.setdefault(target[0], []).append(((reference.get("type") or "").lower(), bool(target[1])))

    titles = _metadata(book, "title")
    book_title = _collapse(titles[0][0]) if titles else path.stem
    chapters: list[Chapter] = []
    skipped: list[str] = []
    for idref, linear in book.spine:
        item = book.get_item_with_id(idref)
        if item is None:
            skipped.append(f"missing from the manifest ({idref})")
            continue
        name = item.file_name
        if (item.media_type or "").lower() not in _DOCUMENT_TYPES:
            skipped.append(f"not a text document ({name})")
            continue
        if item is nav_item:
            skipped.append(f"table of contents ({name})")
            continue
        href = posixpath.normpath(posixpath.join(opf_dir, name)) if opf_dir else name
        if href in missing:
            skipped.append(f"missing from the EPUB ({name})")
            continue
        doc = _read_document(item.content or b"")
        short = doc is None or len(doc.text) < SHORT_DOCUMENT
        label = next(
            (
                _SKIP_KINDS[kind]
                for kind, fragment in semantics.get(name, [])
                if kind in _SKIP_KINDS and (short or not fragment)
            ),
            None,
        )
        if label is None and (linear or "yes").lower() == "no":
            label = "outside the reading order"
        if label is None and doc is not None:
            label = _body_kind(doc.root) or _guess_kind(name, doc, book_title)
        if label is None and (doc is None or not doc.texts):
            label = "no speakable text"
        if label is not None:
            skipped.append(f"{label} ({name})")
            continue
        title = nav_titles.get(name) or doc.first_heading
        if not title and doc.title and doc.title.casefold() != book_title.casefold():
            title = doc.title
        title = title or f"Chapter {len(chapters) + 1}"
        if doc.is_xml:
            document, fragments = _mark_fragments(doc)
            chapters.append(Chapter(title, doc.text, href, document, fragments))
        else:
            chapters.append(Chapter(title, doc.text, href))

    if not chapters:
        raise _nothing_to_speak(path, skipped)
    creators = _metadata(book, "creator")
    authors = [v for v, attrs in creators if _role(attrs) in ("aut", None)] or [v for v, _ in creators]
    languages = _metadata(book, "language")
    return Book(
        title=book_title,
        chapters=tuple(chapters),
        author=", ".join(_collapse(a) for a in authors) or None,
        language=languages[0][0].strip() if languages else None,
        cover=_cover(book),
        skipped=tuple(skipped),
        source=path,
        kind="epub",
    )


def _role(attrs: dict) -> str | None:
    for key, value in attrs.items():
        if key.rpartition("}")[2] == "role":
            return (value or "").strip().lower() or None
    return None


def _body_kind(root) -> str | None:
    """A skip label from the body's semantics, or those of the single element inside it."""
    body = _body(root)
    elements = [child for child in body if isinstance(child.tag, str)]
    kinds = _semantics(body) | (_semantics(elements[0]) if len(elements) == 1 else set())
    return next((_SKIP_KINDS[kind] for kind in sorted(kinds) if kind in _SKIP_KINDS), None)


def _guess_kind(name: str, doc: _Document, book_title: str) -> str | None:
    """A skip label from the file name, title or text of a document without semantics."""
    short = len(doc.text) < SHORT_DOCUMENT
    words = [re.sub(r"\d+", "", w) for w in re.split(r"[^a-z0-9]+", posixpath.basename(name).lower().rsplit(".", 1)[0])]
    for word in words:
        label = _NAME_WORDS.get(word)
        if label and (short or label in _ANY_LENGTH):
            return label
    for title in (doc.first_heading, doc.title if doc.title.casefold() != book_title.casefold() else ""):
        label = _TITLE_WORDS.get(re.sub(r"[^\w ]+", "", title).strip().lower())
        if label and (short or label in _ANY_LENGTH):
            return label
    if short and _COPYRIGHT_TEXT.search(doc.text):
        return "copyright"
    return None


def _nothing_to_speak(path: Path, skipped: list[str]) -> BookError:
    left_out = f" (left out: {', '.join(skipped)})" if skipped else ""
    return BookError(f"{path.name} has no speakable text{left_out}; a scanned or image-only book needs OCR first")


# --------------------------------------------------------------------------- chapters from headings


def _split_at_headings(blocks: list[tuple[str, int | None]], whole_title: str) -> list[Chapter]:
    """Blocks into chapters at the top heading level that makes more than one chapter.

    Text before the first such heading is a chapter of its own (titled by its own heading, else
    "Opening") when it has more than headings; headings alone (a book title) open the first chapter."""
    for level in sorted({lvl for _, lvl in blocks if lvl}):
        starts = [i for i, (_, lvl) in enumerate(blocks) if lvl == level]
        preamble = blocks[: starts[0]]
        has_prose = any(lvl is None for _, lvl in preamble)
        if len(starts) + has_prose > 1:
            break
    else:
        return [Chapter(title=whole_title, text="\n\n".join(t for t, _ in blocks))]
    chapters = []
    lead: list[str] = []
    if has_prose:
        title = next((t for t, lvl in preamble if lvl), "Opening")
        chapters.append(Chapter(title=title, text="\n\n".join(t for t, _ in preamble)))
    else:
        lead = [t for t, _ in preamble]
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(blocks)
        texts = (lead if k == 0 else []) + [t for t, _ in blocks[start:end]]
        chapters.append(Chapter(title=blocks[start][0], text="\n\n".join(texts)))
    return chapters


# --------------------------------------------------------------------------- HTML files


def _read_html_file(path: Path) -> Book:
    if etree is None:
        raise BookError(f"reading {path.name} needs lxml: {_INSTALL_HINT}")
    doc = _read_document(path.read_bytes())
    if doc is None or not doc.texts:
        raise _nothing_to_speak(path, [])
    h1 = next((t for t, level in zip(doc.texts, doc.levels) if level == 1), "")
    title = doc.title or h1 or path.stem
    language = None
    root = doc.root
    if isinstance(root.tag, str):
        language = root.get("{http://www.w3.org/XML/1998/namespace}lang") or root.get("lang") or None
    chapters = _split_at_headings(list(zip(doc.texts, doc.levels)), title)
    return Book(title=title, chapters=tuple(chapters), language=language, source=path, kind="html")


# --------------------------------------------------------------------------- Markdown

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")
_SETEXT = re.compile(r" {0,3}(=+|-+)[ \t]*")
_THEMATIC = re.compile(r" {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*")
_QUOTE = re.compile(r" {0,3}>[ ]?")
_LIST_ITEM = re.compile(r"[ \t]*(?:[-*+]|\d{1,9}[.)])(?:[ \t]+|$)")
_DEFINITION = re.compile(r" {0,3}\[\^?[^\]]+\]:")  # link reference or footnote definition
_TABLE_RULE = re.compile(r"[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*")
_FRONT_MATTER = re.compile(r"---[ \t]*\n(.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|$)", re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_ESCAPED = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>~<])")
_INLINE_RULES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"!\[[^\]]*\](?:\([^)]*\)|\[[^\]]*\])"), ""),  # images
    (re.compile(r"\[\^[^\]]+\]"), ""),  # footnote references
    (re.compile(r"\[([^\]]*)\](?:\([^)]*\)|\[[^\]]*\])"), r"\1"),  # links keep their text
    (re.compile(r"<((?:https?|ftp|mailto):[^>\s]+)>"), r"\1"),  # autolinks
    (re.compile(r"</?[A-Za-z][^>]*>"), ""),  # inline HTML tags
    (re.compile(r"(\*{1,3})(?=\S)(.+?)(?<=\S)\1"), r"\2"),  # *emphasis*, **strong**
    (re.compile(r"(?<!\w)(_{1,3})(?=\S)(.+?)(?<=\S)\1(?!\w)"), r"\2"),  # _emphasis_, not snake_case
    (re.compile(r"~~(?=\S)(.+?)(?<=\S)~~"), r"\1"),  # ~~strike~~
)
_CODE = re.compile(r"(`+)(.+?)\1")


def _markdown_inline(text: str) -> str:
    """Markdown inline syntax reduced to the words: link text kept, images and markers dropped."""
    # Escaped and code characters are set aside (private-use stand-ins) so no rule reads them as syntax.
    kept: list[str] = []

    def keep(value: str) -> str:
        kept.append(value)
        return f"\ue000{len(kept) - 1}\ue001"

    text = _CODE.sub(lambda m: keep(m.group(2).strip()), text)
    text = _ESCAPED.sub(lambda m: keep(m.group(1)), text)
    for _ in range(2):  # nested emphasis (**bold _and italic_**)
        for pattern, replacement in _INLINE_RULES:
            text = pattern.sub(replacement, text)
    text = re.sub("\ue000(\\d+)\ue001", lambda m: kept[int(m.group(1))], text)
    return _collapse(html_lib.unescape(text))


def _front_matter(text: str) -> tuple[dict[str, str], str]:
    """YAML front matter's simple ``key: value`` lines, and the text after it."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    fields = {}
    for line in match.group(1).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and not key.startswith((" ", "\t")):
            fields[key.strip().lower()] = value.strip().strip("\"'")
    return fields, text[match.end() :]


def _markdown_blocks(text: str) -> list[tuple[str, int | None]]:
    """Speakable blocks of a Markdown text, with heading levels."""
    blocks: list[tuple[str, int | None]] = []
    paragraph: list[str] = []
    paragraph_is_item = False
    fence: str | None = None
    depth = 0

    def flush() -> None:
        nonlocal paragraph_is_item
        if paragraph:
            block = _markdown_inline(" ".join(line.rstrip("\\").strip() for line in paragraph))
            if not is_blank(block):
                blocks.append((block, None))
            paragraph.clear()
        paragraph_is_item = False

    def heading(raw: str, level: int) -> None:
        flush()
        block = _markdown_inline(raw)
        if not is_blank(block):
            blocks.append((block, level))

    for line in _COMMENT.sub("", text).split("\n"):
        if fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
            continue
        if match := _FENCE.match(line):
            flush()
            fence = match.group(1)
            continue
        quote_depth = 0
        while match := _QUOTE.match(line):
            line, quote_depth = line[match.end() :], quote_depth + 1
        if quote_depth != depth:
            flush()
            depth = quote_depth
        if not line.strip():
            flush()
        elif match := _ATX.fullmatch(line):
            heading(match.group(2) or "", len(match.group(1)))
        elif paragraph and not paragraph_is_item and (match := _SETEXT.fullmatch(line)):
            raw = " ".join(paragraph)
            paragraph.clear()
            heading(raw, 1 if match.group(1)[0] == "=" else 2)
        elif _THEMATIC.fullmatch(line) or _DEFINITION.match(line):
            flush()
        elif "-" in line and "|" in line and _TABLE_RULE.fullmatch(line):
            continue  # a table's header rule
        elif match := _LIST_ITEM.match(line):
            flush()
            paragraph.append(line[match.end() :])
            paragraph_is_item = True
        elif line.lstrip().startswith("|"):
            flush()
            cells = [_markdown_inline(cell) for cell in line.strip().strip("|").split("|")]
            row = ", ".join(cell for cell in cells if cell)
            if not is_blank(row):
                blocks.append((row, None))
        else:
            paragraph.append(line)
    flush()
    return blocks


def _read_markdown(path: Path) -> Book:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BookError(f"{path.name} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from err
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    fields, text = _front_matter(text)
    blocks = _markdown_blocks(text)
    if not blocks:
        raise _nothing_to_speak(path, [])
    top = [t for t, level in blocks if level == 1]
    title = fields.get("title") or (top[0] if len(top) == 1 else path.stem)
    chapters = _split_at_headings(blocks, title)
    return Book(
        title=title,
        chapters=tuple(chapters),
        author=fields.get("author") or None,
        language=fields.get("lang") or fields.get("language") or None,
        source=path,
        kind="markdown",
    )
