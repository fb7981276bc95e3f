"""Read-along EPUBs: the source book with its narration inside, highlighted as it is heard.

EPUB 3 Media Overlays pair each element of a chapter's document with a clip of its audio (a SMIL
file per chapter); reading systems play the clips in order and give the element being read the
class named by ``media:active-class``. The output is the source EPUB with every file copied as it
was except the narrated chapters' documents (replaced by ``Chapter.document``, whose fragments carry
ids, plus a highlight style) and the package document (OPF), plus the audio and SMIL files.

Only EPUB 3 books are taken ("read-along needs an EPUB 3 input"): Media Overlays are EPUB 3, and
upgrading an EPUB 2 book means a navigation document made from its NCX and every XHTML 1.1
document brought to EPUB 3's HTML, more than a writer that copies files as they are should do.
Existing overlays of the narrated chapters are replaced (with the audio only they played); those
of other chapters are kept.

Times are whole milliseconds: a clip runs from the start of the first word timed in its fragment
to the end of the last, clips never overlap or run back, and none ends after the audio does.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
import time
import zipfile
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from lxml import etree

from ..files import replacing
from ..timestamps import WordTiming
from .book import Book, BookError, Chapter

__all__ = ["AUDIO_MEDIA_TYPES", "ChapterAudio", "Clip", "clock_value", "fragment_clips", "write_readalong"]

#: Audio a read-along may carry, by suffix: the EPUB 3 core media types for audio.
AUDIO_MEDIA_TYPES = {".m4a": "audio/mp4", ".mp4": "audio/mp4", ".mp3": "audio/mpeg"}
ACTIVE_CLASS = "-epub-media-overlay-active"
_SCRIPT = re.compile(rb"<(?:[\w-]+:)?script[\s/>]")
#: A soft yellow that leaves the text's own colour readable on light and dark pages.
HIGHLIGHT_CSS = "background-color: rgba(255, 214, 10, 0.45);"

OPF = "http://www.idpf.org/2007/opf"
XHTML = "http://www.w3.org/1999/xhtml"
SMIL = "http://www.w3.org/ns/SMIL"
OPS = "http://www.idpf.org/2007/ops"
CONTAINER = "urn:oasis:names:tc:opendocument:xmlns:container"
MIMETYPE = b"application/epub+zip"
#: What a URL fragment may hold as it is (RFC 3986); ids with anything else are percent-encoded.
_FRAGMENT_SAFE = "!$&'()*+,;=:@/?-._~"


@dataclass(frozen=True)
class ChapterAudio:
    """A narrated chapter: its audio file, how long that lasts, and when each word is heard in it."""

    chapter: Chapter  # with href, document and fragments (an EPUB reader's chapter)
    audio: Path  # .m4a (AAC) or .mp3
    seconds: float
    words: Sequence[WordTiming]  # char offsets into chapter.text, times in this audio


@dataclass(frozen=True)
class Clip:
    """The audio of one fragment: milliseconds into the chapter's audio."""

    element_id: str
    begin_ms: int
    end_ms: int


def fragment_clips(chapter: Chapter, words: Sequence[WordTiming], seconds: float) -> list[Clip]:
    """A clip per fragment that has words, in text order.

    A word belongs to the first fragment its characters reach into (so a word starting just
    before a span, such as an opening quote left outside it, still counts). Fragments without
    words (punctuation alone) get no clip and are simply not highlighted; a clip is cut to start
    where the one before ended, and dropped if nothing is left of it.
    """
    fragments = chapter.fragments
    ends = [f.end for f in fragments]
    spans: dict[int, tuple[float, float]] = {}
    for word in words:
        k = bisect_right(ends, word.char_start)  # the first fragment ending after the word starts
        if k < len(fragments) and fragments[k].start < max(word.char_end, word.char_start + 1):
            begin, end = spans.get(k, (word.start, word.end))
            spans[k] = (min(begin, word.start), max(end, word.end))
    limit = math.floor(seconds * 1000 + 1e-6)
    clips: list[Clip] = []
    previous = 0
    for k in sorted(spans):
        begin = max(round(spans[k][0] * 1000), previous)
        end = min(round(spans[k][1] * 1000), limit)
        if end > begin:
            clips.append(Clip(fragments[k].element_id, begin, end))
            previous = end
    return clips


def clock_value(ms: int) -> str:
    """A SMIL full clock value, ``h:mm:ss.fff``, as ``media:duration`` wants it."""
    seconds, ms = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}.{ms:03d}"


def _timecount(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}s"


_CLOCK = re.compile(r"^(?:(?:(\d+):)?([0-5]?\d):)?(\d+(?:\.\d+)?)$")
_TIMECOUNT = re.compile(r"^(\d+(?:\.\d+)?)(h|min|s|ms)$")


def _parse_clock(value: str) -> int:
    """Milliseconds of a SMIL clock value (full, partial or a timecount), for a book's own overlays."""
    value = value.strip()
    if match := _TIMECOUNT.match(value):
        scale = {"h": 3_600_000, "min": 60_000, "s": 1000, "ms": 1}[match[2]]
        return round(float(match[1]) * scale)
    if match := _CLOCK.match(value):
        hours, minutes = int(match[1] or 0), int(match[2] or 0)
        return round((hours * 3600 + minutes * 60 + float(match[3])) * 1000)
    raise BookError(f"the book's media:duration {value!r} is not a clock value; fix or remove it in its OPF")


def _href(from_dir: str, path: str) -> str:
    """A relative URL from the folder ``from_dir`` to the zip path ``path``."""
    return quote(posixpath.relpath(path, from_dir or "."), safe="/")


def _resolve(base_dir: str, href: str) -> str | None:
    """The zip path a relative URL points to, or None for a remote one."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc:
        return None
    return posixpath.normpath(posixpath.join(base_dir, unquote(parts.path)))


def _unique(name: str, taken: set[str], fold=str) -> str:
    """``name``, or it with ``-2``, ``-3``... before its suffix, whichever ``taken`` does not hold yet."""
    stem, dot, suffix = name.rpartition(".") if "." in posixpath.basename(name) else (name, "", "")
    candidate, n = name, 1
    while fold(candidate) in taken:
        n += 1
        candidate = f"{stem}-{n}{dot}{suffix}"
    taken.add(fold(candidate))
    return candidate


def _css_class(name: str) -> str:
    """``name`` as a CSS class selector (escaping what an identifier cannot hold)."""
    return "." + "".join(ch if ch.isalnum() or ch in "-_" else f"\\{ord(ch):x} " for ch in name)


def _parse_xml(data: bytes, what: str) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
    try:
        return etree.fromstring(data, parser)
    except etree.XMLSyntaxError as error:
        raise BookError(f"{what} is not well-formed XML ({error}); the book cannot be made a read-along") from error


def _highlighted(chapter: Chapter, css_class: str) -> tuple[bytes, set[str]]:
    """The chapter's document with a style for the highlight class, and the ids it holds."""
    root = _parse_xml(chapter.document or b"", f"the document of chapter {chapter.title!r}")
    if root.tag != f"{{{XHTML}}}html":
        raise BookError(f"the document of chapter {chapter.title!r} is not XHTML (its root is {root.tag!r})")
    head = root.find(f"{{{XHTML}}}head")
    if head is None:
        head = etree.Element(f"{{{XHTML}}}head")
        root.insert(0, head)
    rule = f"{_css_class(css_class)} {{ {HIGHLIGHT_CSS} }}"
    if not any(style.text == rule for style in head.iterfind(f"{{{XHTML}}}style")):  # a read-along read again
        _append(head, f"{{{XHTML}}}style", {}).text = rule
    ids = {str(value) for value in root.xpath("//@id")}
    return etree.tostring(root.getroottree(), xml_declaration=True, encoding="utf-8"), ids


def _smil(chapter_path: str, audio_path: str, smil_path: str, clips: list[Clip]) -> bytes:
    """The Media Overlay of one chapter: a ``par`` per clip, straight in the body.

    No ``seq``: its ``epub:textref`` must carry a fragment for epubcheck 4 (EPUB 3.0/3.2 wording), and
    a whole-chapter seq would need an id added to the document's body for nothing a reader uses.
    """
    here = posixpath.dirname(smil_path)
    text, audio = _href(here, chapter_path), _href(here, audio_path)
    root = etree.Element(f"{{{SMIL}}}smil", nsmap={None: SMIL, "epub": OPS}, version="3.0")
    body = etree.SubElement(root, f"{{{SMIL}}}body")
    for n, clip in enumerate(clips, 1):
        par = etree.SubElement(body, f"{{{SMIL}}}par", id=f"par{n}")
        etree.SubElement(par, f"{{{SMIL}}}text", src=f"{text}#{quote(clip.element_id, safe=_FRAGMENT_SAFE)}")
        etree.SubElement(
            par, f"{{{SMIL}}}audio", src=audio, clipBegin=_timecount(clip.begin_ms), clipEnd=_timecount(clip.end_ms)
        )
    etree.indent(root)
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")


def _opf_path(archive: zipfile.ZipFile) -> str:
    try:
        container = _parse_xml(archive.read("META-INF/container.xml"), "META-INF/container.xml")
    except KeyError:
        raise BookError("the EPUB has no META-INF/container.xml; it is not a valid EPUB") from None
    for rootfile in container.iter(f"{{{CONTAINER}}}rootfile"):
        if rootfile.get("media-type") == "application/oebps-package+xml" and rootfile.get("full-path"):
            return rootfile.get("full-path")
    raise BookError("the EPUB's container.xml names no package document (OPF); it is not a valid EPUB")


def _append(parent: etree._Element, tag: str, attrib: dict[str, str]) -> etree._Element:
    """A new last child of ``parent``, indented as its siblings are so the OPF stays readable."""
    element = etree.Element(tag, attrib)
    children = list(parent)
    if children:
        element.tail = children[-1].tail
        children[-1].tail = children[-2].tail if len(children) > 1 else parent.text
    parent.append(element)
    return element


def check_readalong(source: Path, book: Book) -> None:
    """Raise :class:`BookError` now, before hours of narration, when ``book`` (read from ``source``)
    cannot become a read-along EPUB: not EPUB 3, or a chapter without its document."""
    for chapter in book.chapters:
        if chapter.document is None:
            raise BookError(
                f"chapter {chapter.title!r} is not well-formed XHTML, so its sentences cannot be marked for "
                "read-along; write an audiobook (-o book.m4b) instead"
            )
    with _epub(source) as archive:
        package = _Package(archive)
        for chapter in book.chapters:
            package.item(chapter)


def _epub(source: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as error:
        raise BookError(f"cannot read {source} as an EPUB: {error}") from error


def write_readalong(target: Path, source: Path, book: Book, chapters: Sequence[ChapterAudio]) -> None:
    """Write ``source`` (an EPUB 3) to ``target`` with ``chapters`` narrated as Media Overlays.

    Chapters are numbered as in ``book`` (audio ``audio/chapter-003.m4a`` and its SMIL beside the
    package document). Raises :class:`BookError` for a book or chapter that cannot be made a
    read-along; ``target`` is then left as it was.
    """
    if not chapters:
        raise BookError("no narrated chapters to put in the read-along EPUB")
    with _epub(source) as archive:
        package = _Package(archive)
        items = [package.item(entry.chapter) for entry in chapters]
        package.drop_overlays([item for _, item in items])
        for position, (entry, (path, item)) in enumerate(zip(chapters, items)):
            chapter = entry.chapter
            number = next((k for k, c in enumerate(book.chapters, 1) if c is chapter or c == chapter), position + 1)
            package.narrate(entry, path, item, number)
        package.finish()
        _write_zip(Path(target), archive, package.replaced, package.added, package.dropped)


class _Package:
    """The source's package document (OPF) as it is changed, and what the new zip replaces, adds and drops."""

    def __init__(self, archive: zipfile.ZipFile):
        self.archive = archive
        self.path = _opf_path(archive)
        try:
            self.root = _parse_xml(archive.read(self.path), self.path)
        except KeyError:
            raise BookError(f"the EPUB's package document {self.path} is missing") from None
        version = self.root.get("version", "")
        if not version.startswith("3"):
            raise BookError(f"read-along needs an EPUB 3 input; this book is EPUB {version or '(no version)'}")
        # An unused xmlns:opf beside the default namespace would make lxml write the new elements as opf:meta.
        etree.cleanup_namespaces(self.root)
        self.dir = posixpath.dirname(self.path)
        self.metadata, self.manifest = self.root.find(f"{{{OPF}}}metadata"), self.root.find(f"{{{OPF}}}manifest")
        if self.metadata is None or self.manifest is None:
            raise BookError(f"the package document {self.path} has no metadata or manifest; it is not a valid EPUB")
        self.items = {}
        for item in self.manifest.iterfind(f"{{{OPF}}}item"):
            if (path := _resolve(self.dir, item.get("href", ""))) is not None:
                self.items[path] = item
        self.ids = {str(value) for value in self.root.xpath("//@id")}
        self.names = {name.casefold() for name in archive.namelist()}
        active = [m for m in self._metas("media:active-class") if m.get("refines") is None]
        self.css_class = (active[0].text or "").strip() if active else ""
        self.css_class = self.css_class or ACTIVE_CLASS
        self.replaced: dict[str, bytes] = {}
        self.added: list[tuple[str, Path | bytes]] = []
        self.dropped: set[str] = set()

    def _metas(self, prop: str) -> list[etree._Element]:
        return [meta for meta in self.metadata.iterfind(f"{{{OPF}}}meta") if meta.get("property") == prop]

    def _set_meta(self, prop: str, value: str, refines: str | None = None) -> None:
        """Set the one ``<meta property=prop>`` (refining ``refines``) to ``value``, adding it if missing."""
        found = [meta for meta in self._metas(prop) if meta.get("refines") == refines]
        for extra in found[1:]:
            self.metadata.remove(extra)
        attrib = {"property": prop} | ({"refines": refines} if refines is not None else {})
        meta = found[0] if found else _append(self.metadata, f"{{{OPF}}}meta", attrib)
        meta.text = value

    def item(self, chapter: Chapter) -> tuple[str, etree._Element]:
        """The chapter document's zip path and manifest item."""
        title = chapter.title
        if not chapter.href or chapter.document is None:
            raise BookError(f"chapter {title!r} has no EPUB document; read-along needs chapters read from an EPUB")
        path = posixpath.normpath(chapter.href)
        item = self.items.get(path)
        if item is None or item.get("media-type") != "application/xhtml+xml" or path not in self.archive.NameToInfo:
            raise BookError(f"chapter {title!r}: {chapter.href} is not an XHTML document in this EPUB's manifest")
        return path, item

    def _audio_of(self, smil_item: etree._Element) -> set[str]:
        """The zip paths of the audio a SMIL file of the book plays."""
        path = _resolve(self.dir, smil_item.get("href", ""))
        if path is None or path not in self.archive.NameToInfo:
            return set()
        smil = _parse_xml(self.archive.read(path), path)
        here = posixpath.dirname(path)
        return {p for audio in smil.iter(f"{{{SMIL}}}audio") if (p := _resolve(here, audio.get("src", "")))}

    def drop_overlays(self, narrated: list[etree._Element]) -> None:
        """Take the book's own overlays off the documents about to be narrated, and remove those no
        other document uses, with the audio that only they played (unless a document names it), so
        a read-along narrated again does not carry its old narration along."""
        old = {item.attrib.pop("media-overlay", None) for item in narrated} - {None}
        items = list(self.manifest.iterfind(f"{{{OPF}}}item"))
        in_use = {item.get("media-overlay") for item in items}
        gone = [item for item in items if item.get("id") in old - in_use]
        if not gone:
            return
        kept = [i for i in items if i.get("media-type") == "application/smil+xml" and i not in gone]
        orphans = set().union(*(self._audio_of(i) for i in gone)) - set().union(*(self._audio_of(i) for i in kept))
        documents = [path for path, i in self.items.items() if i.get("media-type") == "application/xhtml+xml"]
        for path in documents:
            if orphans and path in self.archive.NameToInfo:
                data = self.archive.read(path)
                orphans = {audio for audio in orphans if posixpath.basename(audio).encode() not in data}
        gone += [self.items[path] for path in orphans if path in self.items]
        for item in gone:
            self.manifest.remove(item)
            for meta in list(self.metadata.iterfind(f"{{{OPF}}}meta")):
                if meta.get("refines") == f"#{item.get('id')}":
                    self.metadata.remove(meta)
            self.ids.discard(item.get("id"))
            if (path := _resolve(self.dir, item.get("href", ""))) is not None:
                self.dropped.add(path)
                self.names.discard(path.casefold())

    def narrate(self, entry: ChapterAudio, path: str, item: etree._Element, number: int) -> None:
        """Add chapter ``number``'s overlay: its document, audio and SMIL, and their manifest entries."""
        chapter = entry.chapter
        if path in self.replaced:
            raise BookError(f"chapter {chapter.title!r}: {chapter.href} is narrated twice; give each document once")
        suffix = entry.audio.suffix.lower()
        if suffix not in AUDIO_MEDIA_TYPES:
            raise BookError(f"chapter {chapter.title!r}: {entry.audio.name} is not .m4a (AAC) or .mp3 audio")
        if not entry.audio.is_file():
            raise BookError(f"chapter {chapter.title!r}: its audio {entry.audio} is not a file")
        clips = fragment_clips(chapter, entry.words, entry.seconds)
        if not clips:
            raise BookError(
                f"chapter {chapter.title!r}: no fragment of its document has a timed word; "
                "the word timings must index the chapter's text"
            )
        document, document_ids = _highlighted(chapter, self.css_class)
        if missing := [clip.element_id for clip in clips if clip.element_id not in document_ids]:
            raise BookError(f"chapter {chapter.title!r}: its document has no element with id {missing[0]!r}")

        stem = f"chapter-{number:03d}"
        audio_path = _unique(posixpath.join(self.dir, "audio", stem + suffix), self.names, str.casefold)
        smil_path = _unique(posixpath.join(self.dir, "smil", stem + ".smil"), self.names, str.casefold)
        audio_id, smil_id = (
            _unique(f"tada-audio-{number:03d}", self.ids),
            _unique(f"tada-overlay-{number:03d}", self.ids),
        )
        for item_id, item_path, media_type in (
            (audio_id, audio_path, AUDIO_MEDIA_TYPES[suffix]),
            (smil_id, smil_path, "application/smil+xml"),
        ):
            attrib = {"id": item_id, "href": _href(self.dir, item_path), "media-type": media_type}
            _append(self.manifest, f"{{{OPF}}}item", attrib)
        item.set("media-overlay", smil_id)
        if _SCRIPT.search(document):  # EPUB 3 asks a scripted document's item to say so
            properties = (item.get("properties") or "").split()
            if "scripted" not in properties:
                item.set("properties", " ".join([*properties, "scripted"]))
        self._set_meta("media:duration", clock_value(math.floor(entry.seconds * 1000 + 1e-6)), f"#{smil_id}")
        self.replaced[path] = document
        self.added += [(audio_path, entry.audio), (smil_path, _smil(path, audio_path, smil_path, clips))]

    def finish(self) -> None:
        """Total the durations, name the highlight class, date the change, and serialize the OPF."""
        total = sum(_parse_clock(meta.text or "") for meta in self._metas("media:duration") if meta.get("refines"))
        self._set_meta("media:duration", clock_value(total))
        self._set_meta("media:active-class", self.css_class)
        self._set_meta("dcterms:modified", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        self.replaced[self.path] = etree.tostring(self.root.getroottree(), xml_declaration=True, encoding="utf-8")


def _write_zip(
    target: Path,
    archive: zipfile.ZipFile,
    replaced: dict[str, bytes],
    added: list[tuple[str, Path | bytes]],
    dropped: set[str],
) -> None:
    """The OCF container: ``mimetype`` first and stored, the rest deflated; written whole or not at all."""
    now = time.localtime()[:6]
    with replacing(target) as temp:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as out:
                out.writestr(zipfile.ZipInfo("mimetype", now), MIMETYPE, compress_type=zipfile.ZIP_STORED)
                for info in archive.infolist():
                    name = info.filename
                    if name == "mimetype" or name in dropped:
                        continue
                    copy = zipfile.ZipInfo(name, now if name in replaced else info.date_time)
                    copy.external_attr = info.external_attr
                    if info.is_dir():
                        out.mkdir(copy)
                        continue
                    data = replaced[name] if name in replaced else archive.read(name)
                    out.writestr(copy, data, compress_type=zipfile.ZIP_DEFLATED)
                for name, content in added:
                    if isinstance(content, Path):
                        out.write(content, name, compress_type=zipfile.ZIP_DEFLATED)
                    else:
                        out.writestr(zipfile.ZipInfo(name, now), content, compress_type=zipfile.ZIP_DEFLATED)
            handle.flush()
            os.fsync(handle.fileno())
