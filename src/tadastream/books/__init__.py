"""Narration at book scale: books in (EPUB, Markdown, HTML, text), audiobooks out."""

from .book import Book, BookError, Chapter, Cover, Fragment
from .reading import book_from_text, chapter_listing, read_book, select_chapters

__all__ = [
    "Book",
    "BookError",
    "Chapter",
    "Cover",
    "Fragment",
    "book_from_text",
    "chapter_listing",
    "read_book",
    "select_chapters",
]
