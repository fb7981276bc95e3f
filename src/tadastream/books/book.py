"""A book as tadastream reads it aloud: chapters of speakable text, and where each piece came from.

The readers (:mod:`~tadastream.books.reading`) make it; the narrator speaks its chapters; the
audiobook and read-along writers use its metadata and, for EPUB input, the chapters' documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class BookError(ValueError):
    """A book that cannot be read or a selection that does not fit it; the message says how to fix it."""


@dataclass(frozen=True)
class Fragment:
    """A piece of a chapter that a read-along EPUB highlights: ``Chapter.text[start:end]`` is the
    spoken text of the element with id ``element_id`` in the chapter's document (a sentence where
    it sits inside one run of text, else its whole block: paragraph, heading or list item)."""

    element_id: str
    start: int
    end: int


@dataclass(frozen=True)
class Cover:
    """The cover image as stored in the book."""

    data: bytes
    media_type: str  # "image/jpeg" or "image/png"


@dataclass(frozen=True)
class Chapter:
    """One chapter: its title and its speakable text (blocks separated by a blank line).

    For an EPUB, ``href`` is its XHTML document's path inside the zip and ``document`` that
    document with an id on every fragment (what a read-along EPUB ships instead of the original);
    ``fragments`` are in text order and do not overlap."""

    title: str
    text: str
    href: str | None = None
    document: bytes | None = None
    fragments: tuple[Fragment, ...] = ()


@dataclass(frozen=True)
class Book:
    """A book's chapters in reading order, its metadata, and what was left out (cover, table of
    contents, copyright page, ...: each as a short description naming its file)."""

    title: str
    chapters: tuple[Chapter, ...]
    author: str | None = None
    language: str | None = None  # as the book declares it (BCP 47)
    cover: Cover | None = None
    skipped: tuple[str, ...] = ()
    source: Path | None = None
    kind: str = "text"  # "epub", "markdown", "html" or "text"

    @property
    def characters(self) -> int:
        return sum(len(c.text) for c in self.chapters)
