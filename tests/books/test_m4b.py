"""The audiobook writer, checked by reading its files back as a player would (PyAV, i.e. FFmpeg's demuxer)."""

from __future__ import annotations

import contextlib
import errno
import io
import struct
import sys
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tadastream.audio import AudioError
from tadastream.books import Cover
from tadastream.books.m4b import AudiobookWriter

RATE = 24000
FRAME = 1024  # AAC-LC's frame: the precision the brief asks of chapters at worst


# --------------------------------------------------------------------------------------------
# helpers


def _image(codec: str) -> bytes:
    """A small picture made by FFmpeg's own encoders (mjpeg or png), so its bytes are a real image."""
    out = io.BytesIO()
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[..., 0] = np.arange(64, dtype=np.uint8)[None, :] * 4
    pixels[..., 1] = np.arange(48, dtype=np.uint8)[:, None] * 5
    with av.open(out, "w", format="image2pipe") as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "rgb24"
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format=stream.pix_fmt)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return out.getvalue()


def _speech_like(samples: int, seed: int) -> np.ndarray:
    """Aperiodic audio in speech's band (so cross-correlation has one clear peak and AAC keeps it well)."""
    rng = np.random.default_rng(seed)
    noise = np.convolve(rng.standard_normal(samples + 15), np.hanning(16), mode="valid")[:samples]
    t = np.arange(samples) / RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t + seed)  # syllable-rate bursts
    tone = np.sin(2 * np.pi * (180 + 40 * seed) * t) + 0.5 * np.sin(2 * np.pi * 2 * (180 + 40 * seed) * t)
    return (envelope * (0.1 * noise / noise.std() + 0.1 * tone)).astype(np.float32)  # peak about 0.5


def _write_in_odd_chunks(writer: AudiobookWriter, audio: np.ndarray, rng: np.random.Generator) -> None:
    pos = 0
    while pos < len(audio):
        size = int(rng.integers(1, 3000))
        chunk = audio[pos : pos + size]
        writer.write(torch.from_numpy(chunk) if rng.random() < 0.5 else chunk)  # both kinds of input
        pos += size


def _box(data: bytes, *path: bytes) -> bytes:
    """The body of the box at ``path`` (e.g. b"moov", b"udta", b"chpl"); ``meta`` is a full box."""
    for name in path:
        offset, found = 0, None
        while offset + 8 <= len(data):
            size, kind = struct.unpack(">I4s", data[offset : offset + 8])
            header = 8
            if size == 1:
                size, header = struct.unpack(">Q", data[offset + 8 : offset + 16])[0], 16
            elif size == 0:
                size = len(data) - offset
            if kind == name:
                found = data[offset + header + (4 if name == b"meta" else 0) : offset + size]
                break
            offset += size
        assert found is not None, f"no {name!r} box"
        data = found
    return data


def _top_level(data: bytes) -> list[bytes]:
    kinds, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        kinds.append(kind)
        offset += size
    return kinds


def _nero_chapters(data: bytes) -> list[tuple[float, str]]:
    """(start in samples, title) from the ``chpl`` box: version 1, 4 reserved bytes, a count, then per
    chapter a start in 100 ns units and a length-prefixed UTF-8 title."""
    body = _box(data, b"moov", b"udta", b"chpl")
    assert body[0] == 1
    count, offset, chapters = body[8], 9, []
    for _ in range(count):
        start, length = struct.unpack(">QB", body[offset : offset + 9])
        chapters.append((start * RATE / 10_000_000, body[offset + 9 : offset + 9 + length].decode()))
        offset += 9 + length
    return chapters


def _decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([frame.to_ndarray()[0] for frame in container.decode(audio=0)])


def _lag(decoded: np.ndarray, original: np.ndarray, at: int, span: int = 4096, search: int = 1500) -> int:
    """How many samples late ``original[at:at+span]`` appears in ``decoded`` (cross-correlation peak)."""
    segment = original[at : at + span]
    scores = [float(np.dot(decoded[at + d : at + d + span], segment)) for d in range(-search, search + 1)]
    return int(np.argmax(scores)) - search


# --------------------------------------------------------------------------------------------
# a whole book


def test_a_book_reads_back_with_its_chapters_metadata_cover_and_audio(tmp_path) -> None:
    """Chapter starts, duration and alignment come back exact: the movie timescale is the sample rate
    and the edit list skips the encoder's 1024 priming samples (measured error: 0 samples)."""
    cover = Cover(_image("mjpeg"), "image/jpeg")
    target = tmp_path / "book.m4b"
    parts = [("Chapter One", _speech_like(50_001, 1)), ("Chapitre deux — été", _speech_like(61_234, 2))]
    parts.append(("Three", _speech_like(40_007, 3)))
    rng = np.random.default_rng(7)
    writer = AudiobookWriter(target, title="A Test Book", author="Ann Author", language="en-US", cover=cover)
    starts = []
    for title, audio in parts:
        starts.append(writer.samples)
        writer.chapter(title)
        _write_in_odd_chunks(writer, audio, rng)
    writer.close()
    original = np.concatenate([audio for _, audio in parts])
    assert writer.samples == len(original)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book.m4b"], "no temporary file is left"

    data = target.read_bytes()
    assert data[8:12] == b"M4B "
    assert _top_level(data).index(b"moov") < _top_level(data).index(b"mdat"), "faststart: the index comes first"
    with av.open(str(target)) as container:
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "aac" and audio.codec_context.sample_rate == RATE
        assert audio.duration * audio.time_base * RATE == len(original)  # exact, not within a frame
        assert audio.metadata["language"] == "eng"
        chapters = container.chapters()
        tags = container.metadata
        pictures = [s for s in container.streams.video if s.disposition & av.stream.Disposition.attached_pic]
    assert [c["metadata"]["title"] for c in chapters] == [title for title, _ in parts]
    assert [c["start"] * c["time_base"] * RATE for c in chapters] == starts  # the player's chapter track
    assert chapters[-1]["end"] * chapters[-1]["time_base"] * RATE == len(original)
    nero = _nero_chapters(data)  # the other chapter list, for players that read Nero's
    assert [title for _, title in nero] == [title for title, _ in parts]
    assert all(abs(start - asked) < 1 for (start, _), asked in zip(nero, starts, strict=True))
    assert tags["title"] == tags["album"] == "A Test Book"
    assert tags["artist"] == tags["album_artist"] == "Ann Author"
    assert tags["genre"] == "Audiobook" and tags["media_type"] == "2"  # iTunes: an audiobook
    assert len(pictures) == 1
    covr = _box(data, b"moov", b"udta", b"meta", b"ilst", b"covr", b"data")
    assert covr[:4] == struct.pack(">I", 13) and covr[8:] == cover.data  # type 13: JPEG

    decoded = _decoded(target)
    assert len(original) <= len(decoded) < len(original) + FRAME  # padding to the last whole frame only
    decoded = decoded[: len(original)]
    for at in (2000, starts[1] + 3000, starts[2] + 20_000):
        assert _lag(decoded, original, at) == 0, "no priming offset"
    correlation = float(np.corrcoef(decoded, original)[0, 1])
    assert correlation > 0.99, correlation  # lossy (0.9987 measured), but the same audio


def test_an_m4a_with_a_png_cover(tmp_path) -> None:
    cover = Cover(_image("png"), "image/png")
    target = tmp_path / "book.m4a"
    with AudiobookWriter(target, title="Tiny", cover=cover, language="fr") as writer:
        writer.chapter("Un")
        writer.write(_speech_like(30_000, 4))
        writer.chapter("Deux")
        writer.write(torch.from_numpy(_speech_like(12_345, 5)))
    data = target.read_bytes()
    assert data[8:12] == b"M4A "
    with av.open(str(target)) as container:
        starts = [c["start"] * c["time_base"] * RATE for c in container.chapters()]
        assert container.streams.audio[0].metadata["language"] == "fra"
        assert "artist" not in container.metadata  # no author: no empty tag
    assert starts == [0, 30_000]
    covr = _box(data, b"moov", b"udta", b"meta", b"ilst", b"covr", b"data")
    assert covr[:4] == struct.pack(">I", 14) and covr[8:] == cover.data  # type 14: PNG


def test_audio_before_the_first_chapter_gets_the_books_title_and_empty_chapters_are_left_out(tmp_path) -> None:
    target = tmp_path / "book.m4b"
    writer = AudiobookWriter(target, title="The Book")
    writer.write(np.zeros(5000, np.float32))  # "The Book, by ..." before chapter one
    writer.chapter("Empty")  # no audio of its own: a player could not play it
    writer.chapter("One")
    writer.write(np.zeros(7000, np.float32))
    writer.chapter("  ")
    writer.write(np.zeros(3000, np.float32))
    writer.chapter("Never started")
    writer.close()
    with av.open(str(target)) as container:
        chapters = [(c["metadata"]["title"], c["start"] * c["time_base"] * RATE) for c in container.chapters()]
    assert chapters == [("The Book", 0), ("One", 5000), ("Chapter 3", 12_000)]


# --------------------------------------------------------------------------------------------
# ending early, failing


def test_abort_leaves_the_target_as_it_was(tmp_path) -> None:
    target = tmp_path / "book.m4b"
    target.write_bytes(b"the previous book")
    writer = AudiobookWriter(target, cover=Cover(_image("mjpeg"), "image/jpeg"))
    writer.chapter("One")
    writer.write(_speech_like(30_000, 1))
    assert len(list(tmp_path.iterdir())) == 2  # the target and the temporary file being written
    writer.abort()
    writer.abort()  # twice is harmless
    assert list(tmp_path.iterdir()) == [target] and target.read_bytes() == b"the previous book"
    with pytest.raises(AudioError, match="finished"):
        writer.write(np.zeros(10, np.float32))


def test_interrupted_keeps_the_chapters_made_so_far_as_a_valid_book(tmp_path) -> None:
    target = tmp_path / "book.m4b"
    writer = AudiobookWriter(target, title="Stopped")
    writer.chapter("One")
    writer.write(_speech_like(24_000, 1))
    writer.chapter("Two")
    writer.write(_speech_like(12_000, 2))
    writer.chapter("Three")  # Ctrl-C came before its audio
    message = writer.interrupted()
    assert message == f"interrupted: kept the first 1.5 s (2 chapters) in {target}"
    assert writer.interrupted() is None  # already closed
    with av.open(str(target)) as container:
        assert [c["metadata"]["title"] for c in container.chapters()] == ["One", "Two"]
        assert container.streams.audio[0].duration == 36_000
    assert list(tmp_path.iterdir()) == [target]

    nothing = AudiobookWriter(tmp_path / "none.m4b")
    nothing.chapter("One")
    assert nothing.interrupted() is None  # no audio: nothing worth a file
    assert list(tmp_path.iterdir()) == [target]


def test_ctrl_c_during_close_still_keeps_the_book(tmp_path, monkeypatch) -> None:
    """The file is finished before it is renamed; a Ctrl-C in between leaves interrupted() only the rename."""
    import tadastream.books.m4b as m4b

    target = tmp_path / "book.m4b"
    writer = AudiobookWriter(target)
    writer.chapter("One")
    writer.write(_speech_like(24_000, 1))
    real_replace = m4b.os.replace

    def ctrl_c(*args):
        monkeypatch.setattr(m4b.os, "replace", real_replace)
        raise KeyboardInterrupt

    monkeypatch.setattr(m4b.os, "replace", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        writer.close()
    assert writer.interrupted() == f"interrupted: kept the first 1.0 s (1 chapter) in {target}"
    with av.open(str(target)) as container:
        assert container.streams.audio[0].duration == 24_000


def test_a_book_closed_without_audio_is_still_a_readable_file(tmp_path) -> None:
    target = tmp_path / "empty.m4b"
    writer = AudiobookWriter(target, title="Nothing Yet")
    writer.chapter("One")
    writer.close()
    with av.open(str(target)) as container:
        assert container.metadata["title"] == "Nothing Yet" and container.chapters() == []


def test_an_unwritable_target_is_reported_under_its_own_name(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    cases = [
        (tmp_path / "missing" / "book.m4b", FileNotFoundError),
        (blocker / "book.m4b", NotADirectoryError),
        (tmp_path / "folder.m4b", IsADirectoryError),
    ]
    (tmp_path / "folder.m4b").mkdir()
    for target, kind in cases:
        with pytest.raises(kind) as caught:
            AudiobookWriter(target)
        assert caught.value.filename == str(target) and ".tmp" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "folder.m4b"], "no temporary file is left"


def test_a_failed_write_is_reported_under_the_targets_name_and_cleaned_up(tmp_path) -> None:
    target = tmp_path / "book.m4b"
    writer = AudiobookWriter(target)
    writer.write(_speech_like(5000, 1))
    temp = next(tmp_path.iterdir())

    class FullDisk:  # the container as FFmpeg would fail it: an OSError naming the file it writes
        def mux(self, packets):
            raise av.error.OSError(errno.ENOSPC, "No space left on device", str(temp))

        def close(self):
            pass

    real, writer._container = writer._container, FullDisk()
    with pytest.raises(OSError) as caught:
        writer.write(_speech_like(5000, 2))
    with contextlib.suppress(OSError):  # its file is gone: the trailer has nowhere to go
        real.close()
    assert caught.value.errno == errno.ENOSPC and caught.value.strerror == "No space left on device"
    assert caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_memory_stays_flat_over_ten_minutes(tmp_path) -> None:
    """Packets go to the file as they are made: ten minutes in 0.1 s chunks hold no more Python memory
    than one minute (silence, which encodes fastest; the packets and their count are the same)."""
    writer = AudiobookWriter(tmp_path / "long.m4b")
    chunk = np.zeros(RATE // 10, np.float32)
    tracemalloc.start()
    try:
        for i in range(10 * 60 * 10):
            if i % 600 == 0:
                writer.chapter(f"Minute {i // 600 + 1}")
            writer.write(chunk)
            if i == 600:
                tracemalloc.reset_peak()
                start = tracemalloc.get_traced_memory()[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    writer.close()
    assert peak - start < 100_000, peak - start  # a kept packet object alone would be ~100 B x 14,000
    assert (tmp_path / "long.m4b").stat().st_size > 100_000


# --------------------------------------------------------------------------------------------
# what the caller must fix


def test_bad_arguments_and_audio_are_one_line_audio_errors(tmp_path) -> None:
    with pytest.raises(AudioError, match=r"\.m4b or \.m4a"):
        AudiobookWriter(tmp_path / "book.mp3")
    with pytest.raises(AudioError, match="neither JPEG nor PNG"):
        AudiobookWriter(tmp_path / "book.m4b", cover=Cover(b"GIF89a....", "image/gif"))
    with pytest.raises(AudioError, match="cannot be read"):
        AudiobookWriter(tmp_path / "book.m4b", cover=Cover(b"\xff\xd8\xff" + b"\0" * 40, "image/jpeg"))
    with pytest.raises(AudioError, match="bit_rate"):
        AudiobookWriter(tmp_path / "book.m4b", bit_rate=0)
    assert list(tmp_path.iterdir()) == []
    writer = AudiobookWriter(tmp_path / "book.m4b")
    with pytest.raises(AudioError, match="mono"):
        writer.write(np.zeros((2, 100), np.float32))
    with pytest.raises(AudioError, match="NaN"):
        writer.write(np.full(100, np.nan, np.float32))
    with pytest.raises(AudioError, match="floating-point"):
        writer.write(np.zeros(100, np.int16))
    writer.abort()


def test_without_pyav_the_error_says_how_to_install_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    with pytest.raises(AudioError, match=r"needs PyAV: pip install 'tadastream\[books\]'"):
        AudiobookWriter(tmp_path / "book.m4b")
    assert list(tmp_path.iterdir()) == []
