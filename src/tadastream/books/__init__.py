"""Narration at book scale: books in (EPUB, Markdown, HTML, text), audiobooks out."""

from .book import Book, BookError, Chapter, Cover, Fragment

__all__ = ["Book", "BookError", "Chapter", "Cover", "Fragment"]
