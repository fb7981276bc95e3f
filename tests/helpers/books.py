"""Small, realistic books for tests: EPUB 3 (or EPUB 2) files built with ebooklib, and a tiny PNG.

The default book, "The Lighthouse Keeper" by Ada Quill (language ``en``), has in spine order:

- ``cover.xhtml``: the cover image page (a landmark / guide ``cover``);
- ``nav.xhtml``: the navigation document, in the spine as many books have it (EPUB 3 only);
- ``copyright.xhtml``: ``<section epub:type="copyright-page">`` (EPUB 2: a guide ``copyright-page``);
- three chapters, titled in the navigation :data:`NAV_TITLES` (their headings differ: "Chapter
  One: The Storm", ...), whose speakable text is :data:`CHAPTER_TEXTS`:

  1. a footnote (``<sup><a epub:type="noteref">1</a></sup>`` and an ``<aside epub:type="footnote">``),
     a ``<script>``, a ``<style>`` in the head, an ``&nbsp;`` entity;
  2. a sentence crossing ``<em>`` markup, and a three-item list;
  3. a soft hyphen, a blockquote, curly quotes.

Also a PNG cover image (``images/cover.png``, EPUB 3 ``cover-image``, EPUB 2 ``<meta name="cover">``).
"""

from __future__ import annotations

import datetime
import io
import re
import shutil
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

XHTML_NS = "http://www.w3.org/1999/xhtml"

TITLE = "The Lighthouse Keeper"
AUTHOR = "Ada Quill"
LANGUAGE = "en"

#: (navigation title, file name, body XHTML) of the default chapters.
CHAPTERS: tuple[tuple[str, str, str], ...] = (
    (
        "The Storm",
        "chapter1.xhtml",
        """<h1 id="c1">Chapter One: The Storm</h1>
<p>The wind rose at dusk. Waves struck the rocks below the tower.</p>
<p>Mara climbed the stairs<sup><a epub:type="noteref" href="#fn1" id="ref1">1</a></sup> and lit the lamp.
   Its beam swept the dark&nbsp;water.</p>
<aside epub:type="footnote" id="fn1"><p>There were one hundred and twelve stairs.</p></aside>
<script type="text/javascript">var secret = "never spoken";</script>""",
    ),
    (
        "The Ship",
        "chapter2.xhtml",
        """<h1>Chapter Two: The Ship</h1>
<p>At midnight she saw a light. It was <em>very</em> faint, far to the south.</p>
<ul>
  <li>A red flare.</li>
  <li>A green flare.</li>
  <li>Then nothing at all.</li>
</ul>""",
    ),
    (
        "Morning",
        "chapter3.xhtml",
        """<h1>Chapter Three: Morning</h1>
<p>By dawn the storm had passed. The ship lay safe in the har\u00adbour.</p>
<blockquote><p>\u201cYou kept the light burning,\u201d the captain said.</p></blockquote>
<p>Mara smiled and went to sleep.</p>""",
    ),
)

NAV_TITLES = tuple(title for title, _, _ in CHAPTERS)

#: ``Chapter.text`` of each default chapter, as a reader must produce it.
CHAPTER_TEXTS = (
    "Chapter One: The Storm\n\nThe wind rose at dusk. Waves struck the rocks below the tower.\n\n"
    "Mara climbed the stairs and lit the lamp. Its beam swept the dark water.",
    "Chapter Two: The Ship\n\nAt midnight she saw a light. It was very faint, far to the south.\n\n"
    "A red flare.\n\nA green flare.\n\nThen nothing at all.",
    "Chapter Three: Morning\n\nBy dawn the storm had passed. The ship lay safe in the harbour.\n\n"
    "\u201cYou kept the light burning,\u201d the captain said.\n\nMara smiled and went to sleep.",
)

COPYRIGHT_BODY = """<section epub:type="copyright-page">
<p>Copyright \u00a9 2024 Ada Quill. All rights reserved.</p>
<p>First published as an example.</p>
</section>"""

NONLINEAR_BODY = "<h1>A Map of the Coast</h1>\n<p>The tower stands on the northern cape.</p>"

_STYLE = "p { text-indent: 1em; } h1 { text-align: center; }"


def tiny_png(width: int = 4, height: int = 4, rgb: tuple[int, int, int] = (200, 60, 40)) -> bytes:
    """A valid RGB PNG of one colour, made without an image library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def xhtml(title: str, body: str, *, epub2: bool = False, style: bool = True) -> bytes:
    """A complete XHTML content document around ``body`` (EPUB 3: HTML5 doctype; EPUB 2: XHTML 1.1)."""
    doctype = (
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.1//EN" "http://www.w3.org/TR/xhtml11/DTD/xhtml11.dtd">'
        if epub2
        else "<!DOCTYPE html>"
    )
    head_style = f"<style type='text/css'>{_STYLE}</style>" if style else ""
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n{doctype}\n'
        f'<html xmlns="{XHTML_NS}" xmlns:epub="http://www.idpf.org/2007/ops" xml:lang="en" lang="en">\n'
        f"<head><title>{title}</title>{head_style}</head>\n<body>\n{body}\n</body>\n</html>\n"
    ).encode()


def build_epub(
    path: Path,
    *,
    chapters: Sequence[tuple[str | None, str, str]] = CHAPTERS,
    title: str = TITLE,
    author: str = AUTHOR,
    language: str = LANGUAGE,
    cover: bool = True,
    nav: bool = True,
    copyright_page: bool = True,
    nonlinear: bool = False,
    drm: bool | str = False,
    obfuscated_fonts: bool = False,
    epub2: bool = False,
) -> Path:
    """Write a small book to ``path`` and return it.

    ``chapters``: (navigation title or None to leave it out of the navigation, file name, body
    XHTML) each; its documents' ``<title>`` is the book's title. ``nav``: an EPUB 3 navigation
    document (in the spine); without it, and always for ``epub2``, titles come from the NCX only.
    ``nonlinear``: add ``map.xhtml`` (text) with ``linear="no"``. ``drm``: True or "encryption"
    adds a META-INF/encryption.xml encrypting the chapters with AES, "rights" an Adobe
    META-INF/rights.xml. ``obfuscated_fonts``: a font obfuscated the IDPF way (not DRM).
    ``epub2``: an EPUB 2.0 package (version 2.0, guide, ``<meta name="cover">``, NCX only).
    """
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("urn:uuid:12345678-1234-5678-1234-567812345678")
    book.set_title(title)
    book.set_language(language)
    book.add_author(author)
    spine: list = []
    guide: list[dict[str, str]] = []

    def document(uid: str, name: str, doc_title: str, body: str) -> epub.EpubItem:
        item = epub.EpubItem(
            uid=uid, file_name=name, media_type="application/xhtml+xml", content=xhtml(doc_title, body, epub2=epub2)
        )
        book.add_item(item)
        return item

    if cover:
        book.set_cover("images/cover.png", tiny_png(), create_page=False)
        image = '<div><img src="images/cover.png" alt="The cover"/></div>'
        spine.append(document("cover-page", "cover.xhtml", "Cover", image))
        guide.append({"href": "cover.xhtml", "title": "Cover", "type": "cover"})
    if nav and not epub2:
        nav_item = epub.EpubNav()
        book.add_item(nav_item)
        spine.append(nav_item)
    if copyright_page:
        spine.append(document("copyright", "copyright.xhtml", "Copyright", COPYRIGHT_BODY))
        if epub2:
            guide.append({"href": "copyright.xhtml", "title": "Copyright", "type": "copyright-page"})
    links = []
    for number, (nav_title, name, body) in enumerate(chapters, 1):
        spine.append(document(f"chapter{number}", name, f"{title}", body))
        if nav_title is not None:
            links.append(epub.Link(name, nav_title, f"chapter{number}"))
    if nonlinear:
        spine.append((document("map", "map.xhtml", "Map", NONLINEAR_BODY), "no"))
    if chapters:
        guide.append({"href": chapters[0][1], "title": "Start", "type": "text"})
    if obfuscated_fonts:
        font = epub.EpubItem(uid="font", file_name="fonts/serif.otf", media_type="font/otf", content=b"OTTO" * 64)
        book.add_item(font)
    book.toc = links
    book.add_item(epub.EpubNcx())
    book.spine = spine
    book.guide = guide
    epub.write_epub(str(path), book, {"mtime": datetime.datetime(2024, 1, 1), "raise_exceptions": True})
    _finish(path, drm=drm, obfuscated_fonts=obfuscated_fonts, epub2=epub2, chapters=chapters)
    return path


_AES = "http://www.w3.org/2001/04/xmlenc#aes256-cbc"
_OBFUSCATION = "http://www.idpf.org/2008/embedding"


def _encryption_xml(entries: list[tuple[str, str]]) -> bytes:
    parts = "".join(
        f'<enc:EncryptedData><enc:EncryptionMethod Algorithm="{algorithm}"/>'
        f'<enc:CipherData><enc:CipherReference URI="{uri}"/></enc:CipherData></enc:EncryptedData>'
        for uri, algorithm in entries
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
        f'xmlns:enc="http://www.w3.org/2001/04/xmlenc#">{parts}</encryption>'
    ).encode()


def _finish(path: Path, *, drm: bool | str, obfuscated_fonts: bool, epub2: bool, chapters) -> None:
    """Rewrite the zip for what ebooklib does not write: EPUB 2 packages, encryption, rights."""
    if not (drm or obfuscated_fonts or epub2):
        return
    with zipfile.ZipFile(path) as archive:
        files = [(info.filename, archive.read(info)) for info in archive.infolist()]
    if epub2:
        files = [(name, _as_epub2(data) if name.endswith(".opf") else data) for name, data in files]
    encrypted: list[tuple[str, str]] = []
    if drm in (True, "encryption"):
        encrypted += [(f"EPUB/{name}", _AES) for _, name, _ in chapters]
    if obfuscated_fonts:
        encrypted.append(("EPUB/fonts/serif.otf", _OBFUSCATION))
    if encrypted:
        files.append(("META-INF/encryption.xml", _encryption_xml(encrypted)))
    if drm == "rights":
        files.append(
            ("META-INF/rights.xml", b'<?xml version="1.0"?><adept:rights xmlns:adept="http://ns.adobe.com/adept"/>')
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            stored = name == "mimetype"  # EPUB readers find it uncompressed, first
            archive.writestr(name, data, compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
    path.write_bytes(buffer.getvalue())


def _as_epub2(opf: bytes) -> bytes:
    """An OPF as EPUB 2.0 has it: version 2.0, no EPUB 3 properties or prefixes."""
    text = opf.decode()
    text = text.replace('version="3.0"', 'version="2.0"', 1)
    text = re.sub(r'\s(?:properties|prefix)="[^"]*"', "", text)
    text = re.sub(r'<meta property="dcterms:modified">[^<]*</meta>', "", text)
    return text.encode()


def epubcheck_command() -> list[str] | None:
    """epubcheck as this machine runs it (Debian ships a bare jar as /usr/bin/epubcheck)."""
    found = shutil.which("epubcheck")
    if found is None:
        return None
    if Path(found).resolve().suffix == ".jar":
        java = shutil.which("java")
        return [java, "-jar", found] if java else None
    return [found]
