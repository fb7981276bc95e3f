"""Where generated audio goes: a file, stdout, the sound card, or nowhere.

Every sink takes float chunks (24 kHz mono tensors) with ``write`` as they are generated and
finishes with ``close``; ``interrupted`` ends it on Ctrl-C, keeping what was made a valid file
(stdout and files) or stopping playback, and says what was kept; ``abort`` ends a failed run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

from ..config import SAMPLE_RATE
from .errors import CliError


def _concat(chunks: list[Any]):
    import torch

    return torch.cat(chunks) if chunks else torch.zeros(0)


class FileSink:
    """Encodes the chunks as they come into a temporary file beside the target, renamed onto it at the
    end: memory stays flat over a book, and the target is never a half file. ``abort`` (a failed run)
    removes the temporary file; ``interrupted`` (Ctrl-C) keeps what was made. A write that fails (the
    folder removed, the disk full) is reported under the target's name, never the temporary one's."""

    def __init__(self, path: Path):
        self.path = path
        self.samples = 0
        self._temp: Path | None = None
        self._handle: Any = None
        self._encoder: Any = None

    def write(self, chunk) -> None:
        from ..audio import StreamEncoder
        from ..files import temporary_beside

        try:
            if self._handle is None:  # opened at the first audio: a run that fails before leaves nothing
                self._encoder = StreamEncoder(SAMPLE_RATE, self.path.suffix.lstrip(".").lower())
                self._temp = temporary_beside(self.path)
                self._handle = open(self._temp, "xb")  # noqa: SIM115 - held open across writes, closed in close/abort
            self._handle.write(self._encoder.encode(chunk))
        except OSError as exc:
            raise self._failed(exc) from None
        self.samples += int(chunk.numel())

    def close(self) -> None:
        from ..audio import AudioError, wav_header

        if self._handle is None:  # no audio at all: still a valid, empty file
            self.write(_concat([]))
        handle = self._handle
        try:
            handle.write(self._encoder.finish())
            if self._encoder.format == "wav":  # a seekable file: the real length where the stream had "unknown"
                with contextlib.suppress(AudioError):  # past 4 GiB a WAV keeps the "unknown" length
                    header = wav_header(SAMPLE_RATE, 1, self.samples)
                    handle.seek(0)
                    handle.write(header)
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(self._temp, self.path)
        except OSError as exc:
            raise self._failed(exc) from None
        self._handle = None

    def _failed(self, exc: OSError) -> CliError:
        """The error of a failed write, naming the file asked for; the temporary file is removed."""
        self.abort()
        why = exc.strerror or type(exc).__name__  # not str(exc): it names the temporary file
        return CliError(f"could not write {self.path} ({why}); check the folder and the free space")

    def interrupted(self) -> str | None:
        """Save the audio made so far (a long narration stopped half-way keeps its first half)."""
        if self._handle is None:
            return None
        self.close()
        return f"interrupted: kept the first {self.samples / SAMPLE_RATE:.1f} s in {self.path}"

    def abort(self) -> None:
        if self._encoder is not None:
            self._encoder.close()
        if self._handle is not None:
            with contextlib.suppress(OSError):  # closing may fail as the write did (the disk is full)
                self._handle.close()
            self._temp.unlink(missing_ok=True)
            self._handle = None


class StdoutSink:
    """PCM16 to stdout: chunk by chunk (flushed; streaming WAV header) or one complete file at the end."""

    def __init__(self, fmt: str, streaming: bool):
        self.fmt, self.streaming = fmt, streaming
        self.out = sys.stdout.buffer
        self.chunks: list[Any] = []
        self.started = False

    def write(self, chunk) -> None:
        from ..audio import float_to_pcm16, wav_header

        if not self.streaming:
            self.chunks.append(chunk)
            return
        data = float_to_pcm16(chunk)
        if not self.started and self.fmt == "wav":
            data = wav_header(SAMPLE_RATE, 1, None) + data
        self.started = True
        self.out.write(data)
        self.out.flush()

    def close(self) -> None:
        from ..audio import encode_audio, wav_header

        if self.streaming:
            if not self.started and self.fmt == "wav":
                self.out.write(wav_header(SAMPLE_RATE, 1, None))  # no audio: still a valid (empty) stream
        else:
            self.out.write(encode_audio(_concat(self.chunks), SAMPLE_RATE, "pcm" if self.fmt == "raw" else "wav"))
        self.out.flush()

    def interrupted(self) -> str | None:
        """A stream is already valid as written; a whole file gets what was made so far."""
        if not self.streaming:
            self.close()
        return None


class PlayerSink:
    """The sound card via sounddevice: a callback drains a queue that generation fills.

    Generation and playback overlap (writes never block); if the queue runs dry the callback plays
    silence until more arrives. Without ``streaming`` playback starts once everything is generated.
    """

    def __init__(self, streaming: bool):
        import sounddevice as sd

        self._sd = sd
        self.streaming = streaming
        self._queue: deque = deque()
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._no_more = False
        self._queued = 0
        self._stream = sd.OutputStream(
            samplerate=SAMPLE_RATE,
            channels=1,
            dtype="float32",
            callback=self._callback,
            finished_callback=self._finished.set,
        )
        self._started = False

    def _callback(self, outdata, frames, time_info, status) -> None:
        filled = 0
        with self._lock:
            while filled < frames and self._queue:
                head = self._queue[0]
                take = min(len(head), frames - filled)
                outdata[filled : filled + take, 0] = head[:take]
                filled += take
                if take == len(head):
                    self._queue.popleft()
                else:
                    self._queue[0] = head[take:]
            done = self._no_more and not self._queue
        outdata[filled:] = 0
        if done:
            raise self._sd.CallbackStop

    def write(self, chunk) -> None:
        samples = chunk.detach().to("cpu").float().numpy()
        with self._lock:
            self._queue.append(samples)
            self._queued += len(samples)
        if self.streaming and not self._started:
            self._start()

    def _start(self) -> None:
        self._started = True
        self._stream.start()

    def close(self) -> None:
        with self._lock:
            self._no_more = True
        if not self._started:
            self._start()
        self._finished.wait(timeout=self._queued / SAMPLE_RATE + 5.0)
        self._stream.close()

    def interrupted(self) -> str | None:
        self.abort()
        return None

    def abort(self) -> None:
        try:
            self._stream.abort()
            self._stream.close()
        except Exception:  # noqa: BLE001 - best effort while already failing
            pass


class NullSink:
    """Discards the audio (``demo`` without ``-o`` only reports timings)."""

    def write(self, chunk) -> None:
        pass

    def interrupted(self) -> str | None:
        return None

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass
