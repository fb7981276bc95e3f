"""``speak -f FILE -o OUT``: a text file or a book read aloud into files, at any length.

The file is read into chapters (an EPUB's spine and navigation, the headings of Markdown or
HTML, a text file as one chapter), the chapters are chosen (``--chapters``) and every segment is
planned before any audio is made. The narrator's events then go to the outputs as they come:
one audio file (chapters marked in ``.m4b``/``.m4a``), a folder of chapter files and a playlist,
or a read-along EPUB; subtitles and timestamps are written as the words are spoken. Nothing but
a few segments' audio is ever in memory. With ``--resume`` the narration is kept beside the
target until the book is done (:mod:`tadastream.books.resume`).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import SAMPLE_RATE
from .checks import FILE_EXTENSIONS, check_folder, check_text_output
from .errors import Interrupted, UsageError, one_line

#: What ``-f`` reads as a book (chapters from its structure); anything else is a text file.
BOOK_SUFFIXES = (".epub", ".md", ".markdown", ".html", ".htm", ".xhtml")
AUDIOBOOK_SUFFIXES = (".m4b", ".m4a")
#: Chapter files of ``-o FOLDER/``: ``--format`` picks one; m4a by default.
CHAPTER_FORMATS = ("m4a", *FILE_EXTENSIONS)
PLAYLIST = "playlist.m3u8"


def is_book_run(args: argparse.Namespace) -> bool:
    """Whether ``speak`` reads a file into files: a book (EPUB, Markdown, HTML), a text file with
    ``-o`` a file or a folder (not stdout, not the player, no --timeline), or any book option."""
    if args.list_chapters or args.resume or args.parallel is not None or args.chapters is not None:
        return True
    if args.file is not None and Path(args.file).suffix.lower() in BOOK_SUFFIXES:
        return True
    output = args.output
    if args.file in (None, "-") or output in (None, "-") or args.timeline is not None:
        return False
    return True


@dataclass(frozen=True)
class BookRun:
    """``speak``'s book run, checked; nothing is loaded yet."""

    book: Any  # tadastream.books.Book, the chapters chosen
    target: Path
    kind: str  # "file", "audiobook", "folder" or "readalong"
    chapter_format: str
    subtitles: Path | None
    timestamps: Path | None
    parallel: int
    resume: bool


def check_book_run(args: argparse.Namespace) -> BookRun | None:
    """The book run's files and options checked, in the order errors are reported (None: only
    ``--list-chapters``, which printed the chapters)."""
    if args.file in (None, "-") or args.text is not None:
        raise UsageError("--chapters, --list-chapters, --resume and --parallel read a book: give it with -f FILE")
    book = _read(args)
    if args.list_chapters:
        from ..books.reading import chapter_listing

        print("\n".join(chapter_listing(book)))
        return None
    if args.output in (None, "-"):
        raise UsageError("a book is read into files: give -o book.m4b, -o book.wav, -o FOLDER/ or -o book.epub")
    if args.timeline is not None:
        raise UsageError("--timeline draws one text's generation; it does not apply to -f FILE read into files")
    target, kind = _target(args.output, book)
    if args.format is not None and kind != "folder":
        raise UsageError("--format picks the chapter files of -o FOLDER/; a file's format comes from its extension")
    chapter_format = args.format or "m4a"
    if kind == "folder" and chapter_format not in CHAPTER_FORMATS:
        raise UsageError(f"--format {chapter_format}: chapter files are one of {', '.join(CHAPTER_FORMATS)}")
    subtitles = check_text_output(args.subtitles, "--subtitles", (".srt", ".vtt"))
    if subtitles is not None and kind in ("folder", "readalong"):
        raise UsageError(f"--subtitles times the book as one file; -o {args.output} makes several (drop it)")
    timestamps = check_text_output(args.timestamps, "--timestamps", (".json",))
    parallel = 4 if args.parallel is None else args.parallel
    return BookRun(book, target, kind, chapter_format, subtitles, timestamps, parallel, args.resume)


def _read(args: argparse.Namespace):
    from ..books import BookError
    from ..books.reading import book_from_text, read_book, select_chapters
    from .checks import read_text_file

    source = Path(args.file).expanduser()
    try:
        if source.suffix.lower() in BOOK_SUFFIXES and source.is_file():
            book = read_book(source)
        else:
            book = book_from_text(read_text_file(args.file), source.stem)
        if args.chapters is not None:
            book = select_chapters(book, args.chapters)
    except BookError as exc:
        raise UsageError(f"-f {args.file}: {one_line(exc)}") from None
    return book


def _target(output: str, book) -> tuple[Path, str]:
    """(-o as a path, what it makes), checked now rather than after hours of narration."""
    target = Path(output).expanduser()
    if output.endswith(("/", "\\")) or target.is_dir():
        if not target.parent.is_dir():
            raise UsageError(f"-o {output}: folder {target.parent} does not exist; create it first")
        if target.exists() and not target.is_dir():
            raise UsageError(f"-o {output}: that is a file; give a folder for the chapter files")
        return target, "folder"
    suffix = target.suffix.lower()
    if suffix == ".epub":
        if book.kind != "epub":
            raise UsageError(f"-o {output}: a read-along EPUB is made from an EPUB; give -f book.epub")
        from ..books import BookError
        from ..books.readalong import check_readalong

        try:
            check_readalong(book.source, book)
        except BookError as exc:
            raise UsageError(f"-o {output}: {one_line(exc)}") from None
        _require_av(output)
        check_folder(target, "-o")
        return target, "readalong"
    if suffix in AUDIOBOOK_SUFFIXES:
        _require_av(output)
        check_folder(target, "-o")
        return target, "audiobook"
    from .checks import check_output_file

    return check_output_file(output), "file"


def _require_av(output: str) -> None:
    try:
        import av  # noqa: F401
    except ImportError:
        raise UsageError(f"-o {output}: audiobooks are written with PyAV: pip install 'tadastream[books]'") from None


# -- the outputs ---------------------------------------------------------------------------------


class _AudioOut:
    """One audio file for the whole book; chapters marked where the format has them."""

    def __init__(self, run: BookRun):
        book = run.book
        if run.kind == "audiobook":
            from ..books.m4b import AudiobookWriter

            self.sink: Any = AudiobookWriter(
                run.target, SAMPLE_RATE, title=book.title, author=book.author, language=book.language, cover=book.cover
            )
            self.marks = True
        else:
            from .sinks import FileSink

            self.sink, self.marks = FileSink(run.target), False

    def chapter(self, index: int, title: str) -> None:
        if self.marks:
            self.sink.chapter(title)

    def write(self, samples, gap: bool) -> None:
        self.sink.write(samples)

    def chapter_end(self) -> None:
        pass

    def close(self) -> str:
        self.sink.close()
        return f"wrote {self.sink.path}"

    def interrupted(self) -> str | None:
        return self.sink.interrupted()

    def abort(self) -> None:
        self.sink.abort()


def _chapter_file_name(index: int, title: str, fmt: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in " -_.,'()" else "_" for ch in title).strip(" .") or "Chapter"
    return f"{index + 1:03d} - {safe[:80]}.{fmt}"


class _ChapterFiles:
    """One file per chapter in a folder (``NNN - Title.ext``) and an M3U8 playlist of them; the
    silence between chapters stays out of the files."""

    def __init__(self, folder: Path, fmt: str, book):
        self.folder, self.fmt, self.book = folder, fmt, book
        self.done: list[tuple[str, float, str]] = []  # (file name, seconds, title)
        self._sink: Any = None
        self._name = ""
        self._title = ""

    def _open(self, path: Path):
        if self.fmt == "m4a":
            from ..books.m4b import AudiobookWriter

            b = self.book
            return AudiobookWriter(path, SAMPLE_RATE, title=self._title, author=b.author, language=b.language)
        from .sinks import FileSink

        return FileSink(path)

    def chapter(self, index: int, title: str) -> None:
        self.folder.mkdir(exist_ok=True)
        self._name, self._title = _chapter_file_name(index, title, self.fmt), title
        self._sink = self._open(self.folder / self._name)

    def write(self, samples, gap: bool) -> None:
        if not gap:
            self._sink.write(samples)

    def chapter_end(self) -> None:
        sink, self._sink = self._sink, None
        sink.close()
        self.done.append((self._name, sink.samples / SAMPLE_RATE, self._title))

    def _playlist(self) -> None:
        from ..files import write_atomic

        lines = ["#EXTM3U", f"#PLAYLIST:{self.book.title}"]
        for name, seconds, title in self.done:
            lines += [f"#EXTINF:{round(seconds)},{title}", name]
        write_atomic(self.folder / PLAYLIST, ("\n".join(lines) + "\n").encode("utf-8"))

    def close(self) -> str:
        self._playlist()
        return f"wrote {len(self.done)} chapter files and {PLAYLIST} in {self.folder}"

    def interrupted(self) -> str | None:
        kept = self._sink.interrupted() if self._sink is not None else None
        if kept is not None:
            self.done.append((self._name, self._sink.samples / SAMPLE_RATE, self._title))
        self._sink = None
        if not self.done:
            return None
        self._playlist()
        return f"interrupted: kept {len(self.done)} chapter file(s) in {self.folder}"

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()


class _ReadAlong:
    """A read-along EPUB: chapter audio files made in a folder beside the target, then the book's own
    EPUB with them, its sentences tied to their times (EPUB 3 Media Overlays)."""

    def __init__(self, run: BookRun):
        from ..files import temporary_beside

        self.run = run
        self.work = temporary_beside(run.target)
        self.files = _ChapterFiles(self.work, "m4a", run.book)
        self.words: dict[int, list] = {}
        self.audio: list[Any] = []  # ChapterAudio of each finished chapter
        self._index = -1

    def chapter(self, index: int, title: str) -> None:
        self._index = index
        self.words[index] = []
        self.files.chapter(index, title)

    def add_words(self, chapter: int, words) -> None:
        self.words[chapter].extend(words)

    def write(self, samples, gap: bool) -> None:
        self.files.write(samples, gap)

    def chapter_end(self) -> None:
        from ..books.readalong import ChapterAudio

        self.files.chapter_end()
        name, seconds, _title = self.files.done[-1]
        chapter = self.run.book.chapters[self._index]
        self.audio.append(ChapterAudio(chapter, self.work / name, seconds, self.words.pop(self._index)))

    def _write(self) -> None:
        from ..books.readalong import write_readalong

        try:
            write_readalong(self.run.target, self.run.book.source, self.run.book, self.audio)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    def close(self) -> str:
        self._write()
        return f"wrote {self.run.target} (read-along, {len(self.audio)} chapters)"

    def interrupted(self) -> str | None:
        self.files.abort()
        if not self.audio:
            self.abort()
            return None
        self._write()
        return f"interrupted: kept the first {len(self.audio)} chapter(s), read-along, in {self.run.target}"

    def abort(self) -> None:
        self.files.abort()
        shutil.rmtree(self.work, ignore_errors=True)


class BookOutputs:
    """Where the narrator's events go: the audio, and the subtitles and timestamps (timed in the
    book's audio as one file) written as the words come. Opened at the first event, so a run that
    fails before leaves nothing."""

    def __init__(self, run: BookRun, seed: int):
        from ..captions import line_width_for_text

        self.run, self.seed = run, seed
        self.samples = 0
        self._chapter_start = 0
        self._audio: Any = None
        self._subtitles: Any = None
        self._timestamps: Any = None
        self._width = line_width_for_text("".join(c.text[:2000] for c in run.book.chapters))

    def _open(self) -> None:
        from ..captions import SubtitleWriter, TimestampsWriter

        run = self.run
        if run.kind == "folder":
            self._audio = _ChapterFiles(run.target, run.chapter_format, run.book)
        elif run.kind == "readalong":
            self._audio = _ReadAlong(run)
        else:
            self._audio = _AudioOut(run)
        if run.subtitles is not None:
            self._subtitles = SubtitleWriter(run.subtitles, self._width)
        if run.timestamps is not None:
            title = None if run.book.kind == "text" else run.book.title
            self._timestamps = TimestampsWriter(run.timestamps, title, seed=self.seed)

    def handle(self, event) -> None:
        from ..books.narrate import Audio, ChapterEnd, ChapterStart, Words

        if self._audio is None:
            self._open()
        if isinstance(event, Audio):
            self._audio.write(event.samples, event.gap)
            self.samples += event.samples.numel()
        elif isinstance(event, ChapterStart):
            self._chapter_start = self.samples
            self._audio.chapter(event.index, event.title)
            if self._timestamps is not None:
                chapter = self.run.book.chapters[event.index]
                self._timestamps.chapter(chapter.title, chapter.text, self.samples / SAMPLE_RATE)
        elif isinstance(event, Words):
            if isinstance(self._audio, _ReadAlong):
                self._audio.add_words(event.chapter, event.words)
            start = self._chapter_start / SAMPLE_RATE
            words = [w.shifted(start, 0) for w in event.words] if start else event.words
            if self._subtitles is not None:
                self._subtitles.add(words)
            if self._timestamps is not None:
                chars = [c.shifted(start, 0) for c in event.characters] if start else event.characters
                self._timestamps.add(words, chars)
        elif isinstance(event, ChapterEnd):
            self._audio.chapter_end()
            if self._timestamps is not None:
                self._timestamps.chapter_end((self._chapter_start + event.samples) / SAMPLE_RATE)

    def close(self) -> list[str]:
        """Finish every file; the lines that say what was written."""
        wrote = [self._audio.close()]
        if self._subtitles is not None:
            wrote.append(f"subtitles {self._subtitles.close()}")
        if self._timestamps is not None:
            wrote.append(f"timestamps {self._timestamps.close(self.samples / SAMPLE_RATE)}")
        return wrote

    def interrupted(self) -> str | None:
        """Ctrl-C: what was made stays valid files (subtitles of the words heard so far)."""
        if self._audio is None:
            return None
        kept = self._audio.interrupted()
        if self._subtitles is not None:
            self._subtitles.close()
        if self._timestamps is not None:
            self._timestamps.abort()  # half a chapter's JSON would not parse
        return kept

    def abort(self) -> None:
        for part in (self._audio, self._subtitles, self._timestamps):
            if part is not None:
                with contextlib.suppress(OSError):
                    part.abort()


# -- the run -------------------------------------------------------------------------------------


def run_book(args: argparse.Namespace, run: BookRun, speech, model, progress) -> int:
    """Narrate ``run``'s book with the SpeechRequest ``speech`` (voice, options, seed) into its outputs."""
    from ..books.narrate import Narrator, plan_book
    from ..engine import engine_for
    from ..generation import GenerationInputError

    spool = None
    if run.resume:
        from ..books.resume import ResumeError, Spool, fingerprint

        output = run.kind if run.kind != "file" else run.target.suffix.lower()
        spool = Spool(run.target, fingerprint(run.book, speech, args.model, output))
        try:
            seed = spool.open(args.seed)
        except ResumeError as exc:
            raise UsageError(one_line(exc)) from None
        speech = replace(speech, seed=seed)
    try:
        plan = plan_book(model, run.book, speech)
    except GenerationInputError as exc:
        raise UsageError(f"-f {args.file}: {one_line(exc)}") from None
    start = spool.done + 1 if spool is not None else 0
    if spool is not None and spool.started:
        progress.note(f"resuming after segment {spool.done + 1} of {plan.total} ({spool.samples / SAMPLE_RATE:.1f} s)")
    engine = engine_for(model, max_streams=run.parallel)
    before = spool.samples if spool is not None else 0
    narrator = Narrator(model, plan, speech, engine, parallel=run.parallel, start=start, samples_before=before)
    progress.begin(run.book, plan, narrator)
    outputs = BookOutputs(run, speech.seed)
    try:
        with narrator:
            for event in narrator:
                (spool.write if spool is not None else outputs.handle)(event)
                progress.event(event)
        if spool is not None:
            for event in spool.replay():
                outputs.handle(event)
        wrote = outputs.close()
    except KeyboardInterrupt:
        progress.clear()
        if spool is not None:  # the spool is what is kept; a half-written output from its replay goes
            outputs.abort()
            spool.close()
            raise Interrupted(
                f"interrupted: {spool.done + 1} of {plan.total} segments kept in {spool.folder}; "
                "run the same command again with --resume to go on"
            ) from None
        kept = outputs.interrupted()
        raise Interrupted(kept or "interrupted") from None
    except BaseException:
        outputs.abort()
        if spool is not None:
            spool.close()
        raise
    if spool is not None:
        spool.remove()
    progress.clear()
    seconds = outputs.samples / SAMPLE_RATE
    chapters = len(plan.book.chapters)
    progress.note(f"{'; '.join(wrote)}: {seconds:.2f} s of audio in {chapters} chapter(s); seed {speech.seed}")
    return 0
