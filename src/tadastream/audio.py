"""Audio input and output, kept in one place so every entry point validates and encodes alike.

Conventions: waveforms are float tensors in [-1, 1]; a 1-D tensor is one mono channel and a
2-D tensor is ``(channels, samples)``. Anything shaped like ``(samples, channels)`` (more rows
than columns) is rejected rather than guessed at, because silently averaging the wrong axis
produces a one-sample "clip" and no error.

Problems the user can fix (missing file, silent prompt, unknown extension) raise
:class:`AudioError`, whose message is one line saying what to do.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import threading
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr
import torch

from .config import FRAME_RATE
from .files import write_atomic

__all__ = [
    "AudioError",
    "StreamEncoder",
    "available_formats",
    "check_prompt_audio",
    "encode_audio",
    "float_to_pcm16",
    "load_audio",
    "resample",
    "save_audio",
    "to_mono",
    "wav_header",
]

#: Peak amplitude below which a prompt counts as silence.
SILENCE_PEAK = 1e-4

# name -> (libsndfile container, subtype, sample rates the encoder accepts or None for any)
_ENCODINGS: dict[str, tuple[str, str, tuple[int, ...] | None]] = {
    "wav": ("WAV", "PCM_16", None),
    "flac": ("FLAC", "PCM_16", None),
    "ogg": ("OGG", "VORBIS", None),
    "opus": ("OGG", "OPUS", (8000, 12000, 16000, 24000, 48000)),
    "mp3": ("MP3", "MPEG_LAYER_III", None),
}
#: Formats encoded through PyAV (FFmpeg) rather than libsndfile, which has no AAC encoder.
_AV_ENCODINGS = ("aac",)
_SAVE_EXTENSIONS = ("wav", "flac", "ogg", "opus", "mp3", "aac")
_WAV_MAX_SAMPLES = (0xFFFFFFFF - 36) // 2  # 16-bit samples (all channels) a RIFF size field can count


class AudioError(ValueError):
    """A problem with the user's audio or audio request; the message says how to fix it."""


# --------------------------------------------------------------------------------------------
# reading


def _readable_formats() -> str:
    known = sf.available_formats()
    names = ["WAV", "FLAC", "OGG (Vorbis, Opus)"]
    if "MP3" in known:
        names.append("MP3")
    return ", ".join(names)


def load_audio(source: str | os.PathLike[str] | bytes | BinaryIO) -> tuple[torch.Tensor, int]:
    """Read an audio file, bytes or binary stream into a float32 ``(channels, samples)`` tensor.

    Returns the tensor and its sample rate. Anything libsndfile can decode is accepted;
    unreadable input raises :class:`AudioError` naming the source and the supported formats.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        name = "<audio bytes>"
        handle: BinaryIO | str | os.PathLike[str] = io.BytesIO(bytes(source))
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise AudioError(f"audio file not found: {name}; check the path")
        if path.is_dir():
            raise AudioError(f"{name} is a folder, not an audio file; pass the path of a file")
        handle = path
    else:
        name = str(getattr(source, "name", "<audio stream>"))
        handle = source
    try:
        with sf.SoundFile(handle) as audio_file:
            sample_rate = audio_file.samplerate
            if audio_file.frames >= _UNKNOWN_LENGTH:
                data = _read_to_end(audio_file)
            else:
                data = audio_file.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as err:
        detail = str(err).splitlines()[-1].strip() if str(err) else type(err).__name__
        raise AudioError(
            f"could not read audio from {name} ({detail}); supported formats are "
            f"{_readable_formats()}: convert other files first, e.g. `ffmpeg -i input.m4a output.wav`"
        ) from err
    if data.shape[0] == 0:
        raise AudioError(f"{name} contains no audio samples; use a recording of a few seconds")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sample_rate)


#: libsndfile's frame count for a stream whose header gives no length (a live FLAC stream).
_UNKNOWN_LENGTH = 2**63 - 1


def _libsndfile():
    """(cffi, libsndfile) behind soundfile, for what it does not wrap; (None, None) if it hides them."""
    return getattr(sf, "_ffi", None), getattr(sf, "_snd", None)


def _read_to_end(audio_file: sf.SoundFile, block: int = 1 << 16) -> np.ndarray:
    """All frames of a file of unknown length, read block by block (soundfile's read wants the length)."""
    ffi, lib = _libsndfile()
    if lib is None:
        raise ValueError("this soundfile cannot read audio of unknown length; convert the file to WAV first")
    blocks = []
    while True:
        out = np.empty((block, audio_file.channels), np.float32)
        got = lib.sf_readf_float(audio_file._file, ffi.cast("float *", out.ctypes.data), block)
        if got <= 0:
            break
        blocks.append(out[:got])
    return np.concatenate(blocks) if blocks else np.zeros((0, audio_file.channels), np.float32)


# --------------------------------------------------------------------------------------------
# shape and rate helpers


def _as_channels(audio: torch.Tensor, what: str) -> torch.Tensor:
    """View 1-D or ``(channels, samples)`` audio as 2-D, rejecting ambiguous shapes."""
    if audio.dim() == 1:
        return audio.unsqueeze(0)
    if audio.dim() != 2:
        raise AudioError(f"{what} must be 1-D (samples) or 2-D (channels, samples), got shape {tuple(audio.shape)}")
    channels, samples = audio.shape
    if channels > samples:
        raise AudioError(
            f"{what} has shape {tuple(audio.shape)}, which looks like (samples, channels); "
            "pass (channels, samples), e.g. audio.T"
        )
    return audio


def to_mono(audio: torch.Tensor) -> torch.Tensor:
    """Average the channels of ``(channels, samples)`` audio into a 1-D ``(samples,)`` tensor.

    1-D input is returned unchanged and ``(1, n)`` is squeezed. 2-D input is always read as
    ``(channels, samples)``, so a ``(batch, n)`` tensor would be mixed down: call this per item.
    A tensor with more rows than columns (e.g. ``(n, 1)``) raises :class:`AudioError`.
    """
    if not audio.is_floating_point():
        raise AudioError(f"expected floating-point audio in [-1, 1], got {audio.dtype}")
    if audio.dim() == 1:
        return audio
    audio = _as_channels(audio, "audio")
    return audio[0] if audio.shape[0] == 1 else audio.mean(dim=0)


def _check_rate(rate: int, name: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or rate <= 0:
        raise AudioError(f"{name} must be a positive integer number of Hz, got {rate!r}")
    return int(rate)


def resample(audio: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample 1-D or ``(rows, samples)`` audio from ``orig_sr`` to ``new_sr`` Hz with soxr (VHQ).

    Rows are independent (channels or batch items). The result keeps the input's dtype and
    device and has ``round(samples * new_sr / orig_sr)`` samples; equal rates return the input
    itself.
    """
    orig_sr = _check_rate(orig_sr, "orig_sr")
    new_sr = _check_rate(new_sr, "new_sr")
    if not audio.is_floating_point():
        raise AudioError(f"expected floating-point audio in [-1, 1], got {audio.dtype}")
    if audio.dim() not in (1, 2):
        raise AudioError(f"audio must be 1-D or 2-D (rows, samples), got shape {tuple(audio.shape)}")
    if orig_sr == new_sr:
        return audio
    # soxr works in float32 or float64; half-precision input is upsampled to float32 for it.
    work_dtype = torch.float64 if audio.dtype == torch.float64 else torch.float32
    x = audio.detach().to("cpu", work_dtype).numpy()
    if x.shape[-1] == 0:
        out = np.zeros(x.shape, dtype=x.dtype)
    elif x.ndim == 1:
        out = soxr.resample(x, orig_sr, new_sr, quality="VHQ")
    elif x.shape[0] == 0:
        length = round(x.shape[1] * new_sr / orig_sr)
        out = np.zeros((0, length), dtype=x.dtype)
    else:
        # soxr wants (frames, channels); every row is filtered independently.
        out = soxr.resample(np.ascontiguousarray(x.T), orig_sr, new_sr, quality="VHQ").T
    return torch.from_numpy(np.ascontiguousarray(out)).to(device=audio.device, dtype=audio.dtype)


def check_prompt_audio(audio: torch.Tensor, sample_rate: int) -> None:
    """Reject a voice prompt the codec cannot use, with a message saying what to record instead.

    Catches a bad sample rate, empty or non-finite audio, audio shorter than one 20 ms codec
    frame and silence (peak below 1e-4), all of which otherwise fail deep inside the encoder or
    aligner with an unhelpful error, or quietly produce a garbage voice.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise AudioError(f"prompt sample rate must be a positive integer number of Hz, got {sample_rate!r}")
    if audio.numel() == 0:
        raise AudioError("prompt audio is empty; use several seconds of clear speech")
    values = audio.detach()
    if not values.is_floating_point():
        values = values.to(torch.float32)
    if not bool(torch.isfinite(values).all()):
        raise AudioError("prompt audio contains NaN or infinite samples; re-export the recording")
    min_samples = -(-int(sample_rate) // FRAME_RATE)
    if audio.shape[-1] < min_samples:
        seconds = audio.shape[-1] / sample_rate
        raise AudioError(
            f"prompt audio is {seconds * 1000:.1f} ms long, shorter than one 20 ms codec frame; "
            "use several seconds of clear speech"
        )
    peak = float(values.abs().max())
    if peak < SILENCE_PEAK:
        raise AudioError(f"prompt audio is silent (peak {peak:.1e}); check the recording and its input level")


# --------------------------------------------------------------------------------------------
# encoding


def _to_numpy_frames(audio: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    """(channels, samples) audio as a float32 ``(samples, channels)`` array for libsndfile."""
    tensor = torch.as_tensor(audio).detach()
    if not tensor.is_floating_point():
        raise AudioError(f"expected floating-point audio in [-1, 1], got {tensor.dtype}")
    tensor = _as_channels(tensor, what).to("cpu", torch.float32)
    return np.ascontiguousarray(tensor.numpy().T)


def _quantize16(x: np.ndarray) -> np.ndarray:
    """Float samples to int16: NaN to 0, clip to [-1, 1], scale by 32767, round to nearest."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.rint(np.clip(x, -1.0, 1.0) * np.float32(32767.0)).astype("<i2")


def float_to_pcm16(audio: torch.Tensor | np.ndarray) -> bytes:
    """Float audio to little-endian signed 16-bit PCM bytes.

    Samples are clipped to [-1, 1], scaled by 32767 (symmetric, so +1 and -1 both fit) and
    rounded to nearest; NaN becomes 0. 2-D input is ``(channels, samples)`` and is interleaved
    frame by frame. WAV and FLAC output of :func:`encode_audio` use the same quantization, so
    streamed and whole-file audio are bit-identical.
    """
    x = audio.detach().to("cpu", torch.float32).numpy() if isinstance(audio, torch.Tensor) else audio
    x = np.asarray(x)
    if x.ndim == 2:
        x = x.T
    elif x.ndim != 1:
        raise AudioError(f"audio must be 1-D or 2-D (channels, samples), got shape {x.shape}")
    return _quantize16(x).tobytes()


def wav_header(sample_rate: int, num_channels: int = 1, num_samples: int | None = None) -> bytes:
    """A 44-byte RIFF/WAVE header for 16-bit PCM.

    ``num_samples`` counts frames (samples per channel). With ``None`` the RIFF and data sizes
    are 0xFFFFFFFF, the usual "length unknown" form for streams, which players such as ffplay
    and aplay start playing at once.
    """
    sample_rate = _check_rate(sample_rate, "sample_rate")
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or not 1 <= num_channels <= 0xFFFF:
        raise AudioError(f"num_channels must be an integer in [1, 65535], got {num_channels!r}")
    block_align = 2 * num_channels
    if num_samples is None:
        riff_size = data_size = 0xFFFFFFFF
    else:
        if num_samples < 0:
            raise AudioError(f"num_samples must be >= 0, got {num_samples}")
        data_size = num_samples * block_align
        riff_size = 36 + data_size
        if riff_size > 0xFFFFFFFF:
            raise AudioError(f"{num_samples} samples do not fit in a WAV file; use FLAC or split the audio")
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        riff_size,
        b"WAVE",
        b"fmt ",
        16,  # fmt chunk size
        1,  # PCM
        num_channels,
        sample_rate,
        sample_rate * block_align,  # byte rate
        block_align,
        16,  # bits per sample
        b"data",
        data_size,
    )


def complete_wav(data: bytes) -> bytes:
    """``data``, a whole stream from :func:`wav_header` with unknown length, with its RIFF and data
    sizes filled in (readers such as libsndfile refuse the 0xFFFFFFFF form for a file they hold whole)."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[36:40] != b"data" or data[40:44] != b"\xff\xff\xff\xff":
        return data
    size = len(data) - 44
    if 36 + size > 0xFFFFFFFF:
        return data
    return b"RIFF" + struct.pack("<I", 36 + size) + data[8:40] + struct.pack("<I", size) + data[44:]


class _ForwardBuffer:
    """The file libsndfile writes into, handed out piece by piece as it grows.

    Encoders seek back on close to fill in headers (FLAC's length, MP3's LAME tag). Bytes not yet
    taken still receive those rewrites; bytes already taken (sent) cannot, so a rewrite of them
    is dropped: a stream keeps the header it started with, which every format here allows.
    """

    def __init__(self) -> None:
        self._pending = bytearray()  # bytes from offset ``_taken`` on
        self._taken = 0
        self._pos = 0

    def write(self, data) -> int:
        data = bytes(data)
        end = self._pos + len(data)
        size = self._taken + len(self._pending)
        if end > size:
            self._pending.extend(bytes(end - size))
        start = max(self._pos, self._taken)
        if end > start:
            self._pending[start - self._taken : end - self._taken] = data[start - self._pos :]
        self._pos = end
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._taken + len(self._pending)}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:  # libsndfile never reads back what it writes; the API wants it
        return b""

    def take(self) -> bytes:
        """The bytes written since the last call; from now on they are final."""
        out = bytes(self._pending)
        self._taken += len(out)
        self._pending.clear()
        return out


# libsndfile commands (sndfile.h) that soundfile does not wrap
_SFC_SET_COMPRESSION_LEVEL = 0x1301
_SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302
_SFC_SET_BITRATE_MODE = 0x1305
_SF_BITRATE_MODE_CONSTANT = 0
#: MP3 is constant bit rate, so a stream without the LAME tag (a stream cannot go back to write
#: it) still tells decoders its length; 0.6 is about 64 kbit/s at 24 kHz, VBR's size for speech.
_MP3_COMPRESSION = 0.6
#: Ogg Opus flushes a page at least this often (libsndfile's default is a second).
_OPUS_PAGE_MS = 100.0


def _sf_command(handle: sf.SoundFile, command: int, ctype: str, value: float) -> None:
    """Send one sf_command to an open file; a soundfile without the low-level handle keeps defaults."""
    ffi, lib = _libsndfile()
    if lib is None:
        return
    lib.sf_command(handle._file, command, ffi.new(f"{ctype}*", value), ffi.sizeof(ctype))


def _import_av(what: str, install: str):
    """PyAV, or an :class:`AudioError` saying what needs it and how to install it (it is an extra)."""
    try:
        import av
    except ImportError as err:
        raise AudioError(f"{what} needs PyAV: pip install {install}") from err
    return av


class _AacEncoder:
    """AAC-LC packets from float audio in chunks of any size, for a PyAV container to mux.

    FFmpeg's native encoder takes exactly ``FRAME`` samples a call, so audio is queued in a FIFO
    and encoded a frame at a time as soon as one is full. Each frame carries its position in
    samples, so the encoder's packets carry it too, less its priming (the first packet's pts is
    -1024): a container that can (MP4, with its edit list) then plays from the first sample given.
    """

    FRAME = 1024  # AAC-LC's frame; the codec context reports 0 until it is opened

    def __init__(self, av, container, sample_rate: int, layout: str, bit_rate: int):
        self._av = av
        self._rate, self._layout = sample_rate, layout
        self._time_base = Fraction(1, sample_rate)
        self.stream = container.add_stream("aac", rate=sample_rate)
        self.stream.bit_rate = bit_rate
        self.stream.layout = layout
        self._fifo = av.AudioFifo()
        self._sent = 0  # samples handed to the encoder

    def encode(self, planar: np.ndarray) -> list:
        """Queue ``(channels, samples)`` float32 audio; the packets of every frame now complete."""
        if not planar.shape[1]:
            return []
        frame = self._av.AudioFrame.from_ndarray(planar, format="fltp", layout=self._layout)
        frame.sample_rate = self._rate
        self._fifo.write(frame)
        packets = []
        while self._fifo.samples >= self.FRAME:
            packets += self._encode(self._fifo.read(self.FRAME))
        return packets

    def flush(self) -> list:
        """The packets of what is queued (the last frame padded by the encoder) and of the encoder's delay."""
        rest = self._fifo.read()
        packets = self._encode(rest) if rest is not None and rest.samples else []
        return packets + list(self.stream.encode(None))

    def _encode(self, frame) -> list:
        frame.pts, frame.time_base = self._sent, self._time_base
        self._sent += frame.samples
        return list(self.stream.encode(frame))


class _AacWriter:
    """AAC-LC in ADTS frames through PyAV (FFmpeg's native encoder).

    ADTS repeats its header on every frame (about 43 ms at 24 kHz), so a player can start from
    any byte, as with MP3. Every encoded frame is written to the buffer as soon as FFmpeg returns it.
    """

    BIT_RATE = 64000

    def __init__(self, out: _ForwardBuffer, sample_rate: int, channels: int):
        av = _import_av("audio format 'aac'", "av")
        layout = "mono" if channels == 1 else "stereo" if channels == 2 else None
        if layout is None:
            raise AudioError(f"aac takes mono or stereo audio, not {channels} channels")
        self._container = av.open(out, mode="w", format="adts", options={"flush_packets": "1"})
        self._encoder = _AacEncoder(av, self._container, sample_rate, layout, self.BIT_RATE)

    def write(self, frames: np.ndarray) -> None:
        self._container.mux(self._encoder.encode(np.ascontiguousarray(frames.T, dtype=np.float32)))

    def close(self) -> None:
        """Encode what is queued, flush, and end the stream."""
        if self._container is None:
            return
        try:
            self._container.mux(self._encoder.flush())
        finally:
            self._container.close()
            self._container = None


class StreamEncoder:
    """Encode audio chunk by chunk as it is made: each call returns the bytes ready to send.

    ``format`` is "pcm" (raw s16le), "wav" (header with unknown length, then PCM16), "flac",
    "ogg" (Vorbis), "opus" (Ogg Opus at 48 kHz) or "mp3" (constant 64 kbit/s). Concatenating
    everything :meth:`encode` and :meth:`finish` return gives a playable file whose samples match
    the whole-file encoding (:func:`encode_audio`, which runs this same encoder): PCM formats bit
    for bit, FLAC losslessly. What a stream cannot have is a header filled in at the end: its
    WAV and FLAC headers give no length, and MP3 starts with one silent frame (24 ms) where the
    whole file has its LAME tag. Calls may come from different threads (one at a time is
    enforced), so a server can encode off its event loop and close from it.

    With ``whole_file`` the bytes are kept until :meth:`finish`, which then returns a complete
    file with its lengths filled in (WAV sizes, FLAC's sample count): for a response sent whole.
    "aac" (AAC-LC in ADTS frames, 64 kbit/s) is encoded with PyAV where it is installed.
    """

    def __init__(self, sample_rate: int, format: str, channels: int = 1, *, whole_file: bool = False):
        self.sample_rate = _check_rate(sample_rate, "sample_rate")
        self.format = format.lower().lstrip(".")
        self.whole_file = whole_file
        if self.format != "pcm" and self.format not in _ENCODINGS and self.format not in _AV_ENCODINGS:
            known = ", ".join(["pcm", *_ENCODINGS, *_AV_ENCODINGS])
            raise AudioError(f"audio format {format!r} is not supported; choose one of: {known}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise AudioError(f"channels must be a positive integer, got {channels!r}")
        self.channels = channels
        self._buffer = _ForwardBuffer()
        self._file: sf.SoundFile | None = None
        self._resampler: soxr.ResampleStream | None = None
        self._closed = False
        self._samples = 0
        self._lock = threading.Lock()
        if self.format == "wav":
            self._buffer.write(wav_header(self.sample_rate, channels))
        elif self.format != "pcm":
            self._file = self._open()

    def _open(self) -> sf.SoundFile | _AacWriter:
        if self.format == "aac":
            return _AacWriter(self._buffer, self.sample_rate, self.channels)
        container, subtype, rates = _ENCODINGS[self.format]
        rate = self.sample_rate
        if rates is not None and rate not in rates:
            # Opus only takes a few rates; 48 kHz is what it runs at internally anyway.
            self._resampler = soxr.ResampleStream(rate, 48000, self.channels, dtype="float32", quality="VHQ")
            rate = 48000
        try:
            handle = sf.SoundFile(self._buffer, "w", rate, self.channels, subtype, format=container)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
            raise AudioError(f"audio format {self.format!r} is not available with this libsndfile: {err}") from err
        if self.format == "mp3":
            _sf_command(handle, _SFC_SET_BITRATE_MODE, "int", _SF_BITRATE_MODE_CONSTANT)
            _sf_command(handle, _SFC_SET_COMPRESSION_LEVEL, "double", _MP3_COMPRESSION)
        elif self.format == "opus":
            _sf_command(handle, _SFC_SET_OGG_PAGE_LATENCY_MS, "double", _OPUS_PAGE_MS)
        return handle

    def encode(self, audio: torch.Tensor | np.ndarray) -> bytes:
        """Add 1-D or ``(channels, samples)`` float audio; returns the bytes now ready (maybe none;
        always none for a ``whole_file`` encoder, whose :meth:`finish` returns the complete file)."""
        frames = _to_numpy_frames(audio, "audio")
        if frames.shape[1] != self.channels:
            raise AudioError(f"audio has {frames.shape[1]} channel(s); this encoder takes {self.channels}")
        if not np.isfinite(frames).all():
            raise AudioError("audio contains NaN or infinite samples; nothing was encoded")
        with self._lock:
            if self._closed:
                raise AudioError("this encoder is finished; start a new StreamEncoder for more audio")
            self._write(frames, last=False)
            return b"" if self.whole_file else self._buffer.take()

    def finish(self) -> bytes:
        """Flush the encoder and close the file; returns the last bytes (trailers, last pages)."""
        with self._lock:
            if not self._closed:
                self._write(np.zeros((0, self.channels), np.float32), last=True)
                if self.format == "wav" and self._samples <= _WAV_MAX_SAMPLES // self.channels:
                    self._buffer.seek(0)  # the real length, where the header is not sent yet (whole files)
                    self._buffer.write(wav_header(self.sample_rate, self.channels, self._samples))
                self._close()
            return self._buffer.take()

    @property
    def closed(self) -> bool:
        """Whether :meth:`finish` or :meth:`close` has run."""
        return self._closed

    def close(self) -> None:
        """Release the encoder without flushing (a stream that was abandoned); unsent bytes are dropped."""
        with self._lock:
            self._close()
            self._buffer.take()

    def _close(self) -> None:
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, frames: np.ndarray, *, last: bool) -> None:
        if self._file is None:  # pcm, wav: our own quantization, so streams equal whole files
            self._buffer.write(_quantize16(frames).tobytes())
            self._samples += len(frames)
            return
        if self._resampler is not None:
            frames = self._resampler.resample_chunk(frames, last=last)
        if not len(frames):
            return
        if isinstance(self._file, _AacWriter):
            self._file.write(np.clip(frames, -1.0, 1.0))
            return
        _, subtype, _ = _ENCODINGS[self.format]
        # 16-bit formats get our own quantization (libsndfile's differs by one step on some values).
        self._file.write(_quantize16(frames) if subtype == "PCM_16" else np.clip(frames, -1.0, 1.0))

    def __enter__(self) -> StreamEncoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _encode(frames: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """A whole file: nothing is taken before the end, so the encoder fills in its headers."""
    with StreamEncoder(sample_rate, fmt, frames.shape[1]) as encoder:
        encoder._write(frames, last=False)  # checked by the caller; nothing is taken before the end
        return encoder.finish()


def available_formats() -> set[str]:
    """Formats :func:`encode_audio` can produce with this libsndfile build.

    "wav", "flac", "ogg" (Vorbis) and "pcm" (raw s16le) are always there with any supported
    libsndfile; "opus" and "mp3" depend on how it was built, so each is probed once by
    encoding a short tone. Returns a fresh set the caller may modify.
    """
    return set(_probe_formats())


@functools.cache
def _probe_formats() -> frozenset[str]:
    found = {"pcm"}
    tone = (0.1 * np.sin(np.arange(4800, dtype=np.float32) * 0.05)).reshape(-1, 1)
    for fmt in (*_ENCODINGS, *_AV_ENCODINGS):
        try:
            _encode(tone, 48000, fmt)
        except Exception:  # any failure means "not available with this libsndfile"
            continue
        found.add(fmt)
    return frozenset(found)


def _check_format(fmt: str) -> str:
    name = fmt.lower().lstrip(".")
    if name not in _probe_formats():
        supported = ", ".join(sorted(_probe_formats()))
        raise AudioError(f"audio format {fmt!r} is not supported here; choose one of: {supported}")
    return name


def encode_audio(audio: torch.Tensor | np.ndarray, sample_rate: int, format: str) -> bytes:
    """Encode 1-D or ``(channels, samples)`` float audio as a complete file in memory.

    ``format`` is one of :func:`available_formats`: "wav" (PCM16), "flac" (16-bit), "ogg"
    (Vorbis), "opus" (Ogg Opus; resampled to 48 kHz unless the rate is 8/12/16/24/48 kHz),
    "mp3", or "pcm" (raw little-endian int16, no header). Samples are clipped to [-1, 1].
    """
    sample_rate = _check_rate(sample_rate, "sample_rate")
    fmt = _check_format(format)
    frames = _to_numpy_frames(audio, "audio")
    if not np.isfinite(frames).all():
        raise AudioError("audio contains NaN or infinite samples; nothing was encoded")
    return _encode(frames, sample_rate, fmt)


def save_audio(
    path: str | os.PathLike[str],
    audio: torch.Tensor | np.ndarray,
    sample_rate: int,
    format: str | None = None,
) -> Path:
    """Write audio to ``path``, choosing the encoding from ``format`` or the file extension.

    Supports .wav (PCM16), .flac, .ogg (Vorbis) and, where :func:`available_formats` lists
    them, .opus and .mp3. The file is written under a temporary name in the same folder and
    renamed into place, so a crash or error never leaves a truncated file at ``path``.
    Returns the path written.
    """
    target = Path(path)
    fmt = format if format is not None else target.suffix.lstrip(".")
    allowed = [ext for ext in _SAVE_EXTENSIONS if ext in _probe_formats()]
    if fmt.lower().lstrip(".") not in allowed:
        shown = f"format {format!r}" if format is not None else f"extension {target.suffix or '(none)'!r}"
        raise AudioError(
            f"cannot save {target.name}: unknown audio {shown}; use one of " + ", ".join(f".{e}" for e in allowed)
        )
    parent = target.parent
    if not parent.is_dir():
        raise AudioError(f"cannot save {target}: folder {parent} does not exist; create it first")
    if target.is_dir():
        raise AudioError(f"cannot save to {target}: it is a folder; give a file name")
    data = encode_audio(audio, sample_rate, fmt)

    return write_atomic(target, data)
