"""Audiobooks as MP4 files (``.m4b``, ``.m4a``): AAC-LC audio with chapters, the book's metadata and its cover.

The audio is encoded and written as it is made, into a temporary file beside the target that is
renamed onto it at the end, so memory stays flat over a ten-hour book and the target is never a
half file. The choices, and why:

- Muxer: FFmpeg's ``mp4`` muxer with the major brand set to ``M4B `` (or ``M4A ``). Its ``ipod``
  mode writes the same chapter track, ``chpl`` and iTunes tags, but PyAV refuses a cover stream
  for it (FFmpeg lists no picture codec for ``ipod``) and it brands every file ``M4A ``.
- Chapters: set before the trailer, FFmpeg writes them twice: a QuickTime text track that the audio
  track references (``tref/chap``: what Apple Books, iTunes and most players read) and a Nero
  ``chpl`` box (what some others read). The movie timescale is the sample rate, so chapter starts,
  the edit list and the duration are all exact sample counts, not milliseconds.
- Priming: AAC starts with 1024 samples of encoder delay. Frames carry their sample positions, so
  the first packet has pts -1024 and FFmpeg writes an edit list that skips it: a player's sample 0
  is the first sample written, and its chapter starts are the ones asked for.
- Cover: an attached-picture stream (JPEG or PNG) with its one packet, which FFmpeg stores as the
  iTunes ``covr`` atom. No new dependency (mutagen) and no box editing of our own.
- ``faststart``: the index (``moov``) is moved to the front when the file is finished, so a player
  streaming it over HTTP starts at once. FFmpeg rewrites the file in place to do it: seconds for a
  ten-hour book, small beside the hours its narration takes.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..audio import AudioError, _AacEncoder, _check_rate, _import_av, _to_numpy_frames
from ..config import SAMPLE_RATE
from ..files import temporary_beside
from .book import Cover

__all__ = ["AudiobookWriter"]

#: Major brand by extension: what Apple's players go by for an audiobook (``M4B ``) or music (``M4A ``).
_BRANDS = {".m4b": "M4B ", ".m4a": "M4A "}
#: Cover (codec, FFmpeg demuxer) by the file's signature: the bytes decide, not the declared type.
_COVER_CODECS = {b"\xff\xd8\xff": ("mjpeg", "jpeg_pipe"), b"\x89PNG\r\n\x1a\n": ("png", "png_pipe")}
#: iTunes media kind (``stik``) of an audiobook: it files the book under Audiobooks, with bookmarks.
_AUDIOBOOK_KIND = "2"
#: ISO 639-1 to ISO 639-2/T, the three letters an MP4 track's language is written in (the languages
#: tadastream speaks and other common ones); anything else is "und", undetermined.
_ISO639_2 = {
    "ar": "ara", "ca": "cat", "cs": "ces", "da": "dan", "de": "deu", "el": "ell", "en": "eng", "es": "spa",
    "fi": "fin", "fr": "fra", "he": "heb", "hi": "hin", "hu": "hun", "id": "ind", "it": "ita", "ja": "jpn",
    "ko": "kor", "nb": "nob", "nl": "nld", "no": "nor", "pl": "pol", "pt": "por", "ro": "ron", "ru": "rus",
    "sv": "swe", "tr": "tur", "uk": "ukr", "vi": "vie", "zh": "zho",
}  # fmt: skip


def _track_language(language: str | None) -> str:
    """A BCP 47 tag ("en-GB") as the ISO 639-2 code an MP4 track takes ("eng"); "und" if unknown."""
    primary = (language or "").strip().lower().replace("_", "-").split("-")[0]
    if len(primary) == 3 and primary.isascii() and primary.isalpha():
        return primary
    return _ISO639_2.get(primary, "und")


class _Picture(NamedTuple):
    """The cover as the muxer takes it."""

    data: bytes
    codec: str
    width: int
    height: int


def _cover_codec(cover: Cover) -> tuple[str, str]:
    for signature, codec in _COVER_CODECS.items():
        if cover.data.startswith(signature):
            return codec
    raise AudioError(
        f"the cover ({cover.media_type}, {len(cover.data)} bytes) is neither JPEG nor PNG, the two an MP4 "
        "cover can be; convert it or leave it out"
    )


def _cover_size(av, cover: Cover, demuxer: str) -> tuple[int, int]:
    """The cover's width and height, which the muxer wants for its stream; FFmpeg reads them from the image."""
    try:
        with av.open(io.BytesIO(cover.data), "r", format=demuxer) as image:
            context = image.streams.video[0].codec_context
            size = context.width, context.height
    except (av.FFmpegError, IndexError):
        size = 0, 0
    if not all(size):
        raise AudioError(f"the cover ({cover.media_type}, {len(cover.data)} bytes) cannot be read; leave it out")
    return size


class AudiobookWriter:
    """Writes mono float audio as an audiobook, chapter by chapter, as it is generated.

    ``chapter(title)`` marks where the next chapter starts: at the next sample written, exactly.
    ``close`` finishes the file (chapters, metadata, cover) and renames it onto ``path``; ``abort``
    (a failed run) removes the temporary file; ``interrupted`` (Ctrl-C) keeps what was made as a
    valid, shorter book. A write that fails (the folder missing or removed, the disk full) raises
    an :class:`OSError` naming ``path``, never the temporary file, and leaves nothing behind.
    Problems with the arguments or the audio raise :class:`~tadastream.audio.AudioError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample_rate: int = SAMPLE_RATE,
        *,
        title: str | None = None,
        author: str | None = None,
        language: str | None = None,
        cover: Cover | None = None,
        bit_rate: int = 64000,
    ):
        self.path = Path(path)
        self.sample_rate = _check_rate(sample_rate, "sample_rate")
        self.samples = 0  #: samples written so far
        brand = _BRANDS.get(self.path.suffix.lower())
        if brand is None:
            raise AudioError(f"cannot write {self.path.name}: an audiobook is an .m4b or .m4a file; rename it")
        if isinstance(bit_rate, bool) or not isinstance(bit_rate, int) or bit_rate <= 0:
            raise AudioError(f"bit_rate must be a positive integer number of bit/s, got {bit_rate!r}")
        av = _import_av("writing an audiobook (.m4b, .m4a)", "'tadastream[books]'")
        picture = None
        if cover is not None:  # checked now, not after hours of narration
            codec, demuxer = _cover_codec(cover)
            picture = _Picture(cover.data, codec, *_cover_size(av, cover, demuxer))
        tags = {"title": title, "album": title, "artist": author, "album_artist": author}
        tags = {key: value for key, value in tags.items() if value}
        tags |= {"genre": "Audiobook", "media_type": _AUDIOBOOK_KIND}
        if self.path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(self.path))
        self._chapters: list[tuple[int, str]] = []
        self._title = title
        self._container: Any = None
        self._closed = False
        self._temp = temporary_beside(self.path)
        try:
            # Reserve the name (O_EXCL: never write into someone else's file), then let FFmpeg write it by
            # name: faststart reopens the file by name to move the index to the front.
            os.close(os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
            self._open(av, brand, tags, _track_language(language), picture, bit_rate)
        except OSError as exc:
            raise self._failed(exc) from None
        except BaseException:
            self.abort()
            raise

    def _open(
        self, av, brand: str, tags: dict[str, str], language: str, picture: _Picture | None, bit_rate: int
    ) -> None:
        options = {"brand": brand, "movie_timescale": str(self.sample_rate), "movflags": "+faststart"}
        # "file:" so that a name with a colon is never taken for a protocol.
        self._container = av.open(f"file:{self._temp.absolute()}", "w", format="mp4", container_options=options)
        self._container.metadata.update(tags)  # read when the header is written: set before it
        self._encoder = _AacEncoder(av, self._container, self.sample_rate, "mono", bit_rate)
        self._encoder.stream.metadata["language"] = language
        packet = None
        if picture is not None:
            # A stream without a codec context: the image is muxed as it is, never decoded or re-encoded.
            stream = self._container.add_mux_stream(picture.codec, width=picture.width, height=picture.height)
            stream.disposition = av.stream.Disposition.attached_pic
            packet = av.Packet(picture.data)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, 0, 0, Fraction(1, 1)
        self._container.start_encoding()  # the header now: a book closed without audio is still a readable file
        if packet is not None:
            self._container.mux(packet)

    # ----------------------------------------------------------------------------------------
    # writing

    def chapter(self, title: str) -> None:
        """Start a chapter at the next sample written (at 0 before any audio). A chapter that gets
        no audio before the next one starts, or the book ends, is left out: it could not be played;
        a blank title becomes "Chapter N"."""
        self._check_open()
        self._chapters.append((self.samples, str(title)))

    def write(self, audio) -> None:
        """Encode a chunk of 1-D float audio (a torch tensor or numpy array, any length) in [-1, 1]."""
        self._check_open()
        frames = _to_numpy_frames(audio, "audio")
        if frames.shape[1] != 1:
            raise AudioError(f"an audiobook is mono; got {frames.shape[1]} channels: mix them down first")
        if not np.isfinite(frames).all():
            raise AudioError("audio contains NaN or infinite samples; nothing was written")
        planar = np.ascontiguousarray(np.clip(frames.T, -1.0, 1.0), dtype=np.float32)
        try:
            packets = self._encoder.encode(planar)
            self.samples += planar.shape[1]
            self._container.mux(packets)
        except OSError as exc:
            raise self._failed(exc) from None

    def close(self) -> None:
        """Flush the encoder, write the chapters and the index, sync, and rename onto ``path``."""
        if self._closed:
            return
        try:
            if self._container is not None:  # None: the file was finished by a close that Ctrl-C cut short
                self._container.mux(self._encoder.flush())
                chapters = self._chapter_entries()
                if chapters:
                    self._container.set_chapters(chapters)  # before the trailer, which writes them
                self._container.close()
                self._container = None
            _fsync(self._temp)
            os.replace(self._temp, self.path)
        except OSError as exc:
            raise self._failed(exc) from None
        except Exception:  # a bug, not the disk: still, no half file is left
            self.abort()
            raise
        self._closed = True

    def interrupted(self) -> str | None:
        """Keep what was made (a book stopped half-way keeps its first chapters) and say so; with no
        audio yet there is nothing worth a file: it is removed and None returned."""
        if self._closed:
            return None
        if not self.samples:
            self.abort()
            return None
        self.close()
        count = len(self._chapter_entries())
        chapters = f" ({count} chapter{'s' if count != 1 else ''})" if count else ""
        return f"interrupted: kept the first {self.samples / self.sample_rate:.1f} s{chapters} in {self.path}"

    def abort(self) -> None:
        """Give up: the temporary file is removed and ``path`` left as it was."""
        if self._closed:
            return
        self._closed = True
        container, self._container = self._container, None
        removed = False
        with contextlib.suppress(OSError):
            # Removed first where the system allows it (not Windows), so the trailer that closing writes goes
            # to a file no one can see and faststart, which reopens it by name, finds nothing to rewrite.
            self._temp.unlink(missing_ok=True)
            removed = True
        if container is not None:
            with contextlib.suppress(Exception):  # best effort while already failing
                container.close()
        if not removed:
            with contextlib.suppress(OSError):
                self._temp.unlink(missing_ok=True)

    def __enter__(self) -> AudiobookWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # ----------------------------------------------------------------------------------------
    # helpers

    def _check_open(self) -> None:
        if self._closed:
            raise AudioError(f"the audiobook {self.path.name} is finished; start a new AudiobookWriter for more")

    def _chapter_entries(self) -> list[dict[str, Any]]:
        """The chapters as PyAV takes them: each ends where the next starts, the last at the end of the
        audio; those of no length are left out, and audio before the first gets a chapter of its own,
        named after the book (FFmpeg's chapter track would start the first chapter at 0 anyway, where
        the Nero list would not)."""
        time_base = Fraction(1, self.sample_rate)
        entries: list[dict[str, Any]] = []
        marks = self._chapters
        if not marks:
            return entries
        if marks[0][0] > 0:
            marks = [(0, self._title or "Opening"), *marks]
        ends = [start for start, _ in marks[1:]] + [self.samples]
        for (start, title), end in zip(marks, ends, strict=True):
            if end > start:
                number = len(entries) + 1
                entries.append(
                    {
                        "id": number,
                        "start": start,
                        "end": end,
                        "time_base": time_base,
                        "metadata": {"title": title.strip() or f"Chapter {number}"},
                    }
                )
        return entries

    def _failed(self, exc: OSError) -> OSError:
        """The error of a failed write, naming the file asked for; the temporary file is removed."""
        self.abort()
        why = exc.strerror or str(exc) or type(exc).__name__  # not str(exc) first: it names the temporary file
        if exc.errno is None:
            error = OSError(f"{why}: {str(self.path)!r}")
            error.strerror, error.filename = why, str(self.path)
            return error
        return OSError(exc.errno, why, str(self.path))


def _fsync(path: Path) -> None:
    """Flush a finished file to disk (FFmpeg closes it without), so the rename never publishes a hole."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
