"""Audio I/O: loading, channel/rate handling, prompt checks, encoding and atomic saving."""

import io
import math
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tadastream.audio import (
    AudioError,
    StreamEncoder,
    available_formats,
    check_prompt_audio,
    complete_wav,
    encode_audio,
    float_to_pcm16,
    load_audio,
    resample,
    save_audio,
    to_mono,
    wav_header,
)
from tests.helpers.paths import FIXTURES

LJSPEECH = FIXTURES / "ljspeech.flac"  # the shared clip, lossless


def sine(freq: float, sample_rate: int, seconds: float, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(sample_rate * seconds), dtype=torch.float64) / sample_rate
    return (amplitude * torch.sin(2 * math.pi * freq * t)).to(torch.float32)


def peak_frequency(audio: torch.Tensor, sample_rate: int) -> float:
    spectrum = torch.fft.rfft(audio.double()).abs()
    return float(spectrum.argmax()) * sample_rate / audio.shape[-1]


# ------------------------------------------------------------------------------------------ loading


def test_load_wav_file_bytes_and_stream(tmp_path: Path) -> None:
    stereo = np.stack([sine(440, 16000, 0.5).numpy(), sine(880, 16000, 0.5).numpy() * 0.5], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 16000, subtype="FLOAT")

    audio, rate = load_audio(path)
    assert rate == 16000
    assert audio.dtype == torch.float32
    assert audio.shape == (2, 8000)
    np.testing.assert_allclose(audio.numpy(), stereo.T, atol=1e-7)

    from_str, _ = load_audio(str(path))
    from_bytes, rate_b = load_audio(path.read_bytes())
    with path.open("rb") as handle:
        from_stream, _ = load_audio(handle)
    assert rate_b == 16000
    assert torch.equal(from_str, audio) and torch.equal(from_bytes, audio) and torch.equal(from_stream, audio)


def test_load_flac_and_ogg(tmp_path: Path) -> None:
    tone = sine(300, 24000, 1.0)
    for ext in ("flac", "ogg"):
        path = tmp_path / f"tone.{ext}"
        sf.write(path, tone.numpy(), 24000)
        audio, rate = load_audio(path)
        assert rate == 24000 and audio.shape == (1, 24000)
        assert abs(peak_frequency(audio[0], rate) - 300) < 2


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="not found") as info:
        load_audio(missing)
    assert str(missing) in str(info.value)


def test_load_garbage_says_what_is_supported(tmp_path: Path) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    with pytest.raises(AudioError) as info:
        load_audio(bad)
    message = str(info.value)
    assert str(bad) in message and "WAV" in message and "FLAC" in message
    assert "\n" not in message
    with pytest.raises(AudioError, match="audio bytes"):
        load_audio(b"\x00" * 100)


def test_load_folder_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="folder"):
        load_audio(tmp_path)


def test_audio_error_is_a_value_error() -> None:
    assert issubclass(AudioError, ValueError)


# ------------------------------------------------------------------------------------------ to_mono


def test_to_mono_averages_channels() -> None:
    stereo = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.5, -1.0]])
    assert to_mono(stereo).tolist() == [0.5, 0.25, -1.0]


def test_to_mono_one_dimensional_and_single_row() -> None:
    mono = torch.randn(100)
    assert to_mono(mono) is mono
    squeezed = to_mono(mono.unsqueeze(0))
    assert squeezed.shape == (100,) and torch.equal(squeezed, mono)


def test_to_mono_rejects_ambiguous_shapes() -> None:
    with pytest.raises(AudioError, match="samples, channels"):
        to_mono(torch.zeros(100, 1))
    with pytest.raises(AudioError, match="1-D"):
        to_mono(torch.zeros(2, 2, 100))
    with pytest.raises(AudioError, match="floating-point"):
        to_mono(torch.zeros(2, 100, dtype=torch.int16))


# ------------------------------------------------------------------------------------------ resample


def test_resample_identity_returns_input() -> None:
    audio = torch.randn(1000)
    assert resample(audio, 24000, 24000) is audio


@pytest.mark.parametrize(("orig", "new"), [(22050, 24000), (24000, 16000), (16000, 48000), (44100, 24000)])
def test_resample_sine_keeps_pitch_length_and_level(orig: int, new: int) -> None:
    tone = sine(1000, orig, 1.0)
    out = resample(tone, orig, new)
    assert out.shape == (round(tone.shape[0] * new / orig),)
    assert abs(peak_frequency(out, new) - 1000) < 1.5
    rms_in, rms_out = tone.pow(2).mean().sqrt(), out[200:-200].pow(2).mean().sqrt()
    assert abs(float(rms_out / rms_in) - 1) < 0.01


def test_resample_rows_are_independent_and_dtype_kept() -> None:
    rows = torch.stack([sine(300, 22050, 0.3), sine(2000, 22050, 0.3, 0.2), torch.zeros(6615)])
    out = resample(rows, 22050, 16000)
    assert out.shape == (3, round(6615 * 16000 / 22050))
    assert torch.allclose(out[0], resample(rows[0], 22050, 16000), atol=1e-6)
    assert torch.allclose(out[1], resample(rows[1], 22050, 16000), atol=1e-6)
    assert float(out[2].abs().max()) == 0.0
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        converted = resample(rows.to(dtype), 22050, 16000)
        assert converted.dtype == dtype
        assert torch.allclose(converted.float(), out, atol=2e-2)


def test_resample_empty_and_invalid_rates() -> None:
    assert resample(torch.zeros(0), 22050, 24000).shape == (0,)
    assert resample(torch.zeros(2, 0), 22050, 24000).shape == (2, 0)
    for bad in (0, -16000, 16000.0, True):
        with pytest.raises(AudioError, match="positive integer"):
            resample(torch.zeros(10), bad, 24000)  # type: ignore[arg-type]
        with pytest.raises(AudioError, match="positive integer"):
            resample(torch.zeros(10), 24000, bad)  # type: ignore[arg-type]
    with pytest.raises(AudioError, match="floating-point"):
        resample(torch.zeros(10, dtype=torch.int16), 16000, 24000)
    with pytest.raises(AudioError):
        resample(torch.zeros(1, 2, 10), 16000, 24000)


def test_ljspeech_resampling() -> None:
    audio, rate = load_audio(LJSPEECH)
    assert rate == 22050 and audio.shape[0] == 1
    samples = audio.shape[1]
    assert abs(samples / rate - 7.6) < 0.05
    energy = float(audio.pow(2).mean())
    for target in (24000, 16000):
        out = resample(audio, rate, target)
        assert out.shape == (1, round(samples * target / rate))
        # 16 kHz loses the band above 8 kHz, which holds a few percent of speech energy.
        assert abs(float(out.pow(2).mean()) / energy - 1) < 0.08
        assert abs(out.shape[1] / target - samples / rate) < 1e-3
    check_prompt_audio(to_mono(audio), rate)


# ------------------------------------------------------------------------------------------ prompts


def test_check_prompt_accepts_speech_like_audio() -> None:
    check_prompt_audio(sine(200, 24000, 0.5), 24000)
    check_prompt_audio(sine(200, 24000, 0.5).unsqueeze(0), 24000)
    check_prompt_audio(torch.full((480,), 0.01), 24000)  # exactly one codec frame


@pytest.mark.parametrize(
    ("audio", "rate", "match"),
    [
        (torch.zeros(0), 24000, "empty"),
        (torch.tensor([0.1, float("nan")] * 500), 24000, "NaN"),
        (torch.tensor([0.1, float("inf")] * 500), 24000, "NaN or infinite"),
        (torch.full((24000,), 5e-5), 24000, "silent"),
        (torch.zeros(24000), 24000, "silent"),
        (torch.full((479,), 0.5), 24000, "shorter than one 20 ms codec frame"),
        (torch.full((319,), 0.5), 16000, "shorter than one"),
        (torch.full((1000,), 0.5), 0, "sample rate"),
        (torch.full((1000,), 0.5), -24000, "sample rate"),
    ],
)
def test_check_prompt_rejects(audio: torch.Tensor, rate: int, match: str) -> None:
    with pytest.raises(AudioError, match=match) as info:
        check_prompt_audio(audio, rate)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ PCM/WAV


def test_float_to_pcm16_rounds_clips_and_is_little_endian() -> None:
    step = 1 / 32767
    values = [0.0, 1.0, -1.0, 2.0, -3.0, 0.4 * step, 0.6 * step, 1.6 * step, -1.6 * step, 0.5]
    pcm = float_to_pcm16(torch.tensor(values))
    assert len(pcm) == 2 * len(values)
    decoded = list(struct.unpack(f"<{len(values)}h", pcm))
    assert decoded == [0, 32767, -32767, 32767, -32767, 0, 1, 2, -2, 16384]
    assert float_to_pcm16(np.array([0.25], dtype=np.float64)) == struct.pack("<h", 8192)
    assert float_to_pcm16(torch.tensor([float("nan")])) == b"\x00\x00"


def test_float_to_pcm16_interleaves_channels() -> None:
    stereo = torch.tensor([[0.5, -0.5], [0.25, -0.25]])  # (channels, samples)
    assert struct.unpack("<4h", float_to_pcm16(stereo)) == (16384, 8192, -16384, -8192)


def test_wav_header_known_length_parses() -> None:
    tone = sine(440, 24000, 0.25)
    pcm = float_to_pcm16(tone)
    header = wav_header(24000, 1, tone.shape[0])
    assert len(header) == 44
    with wave.open(io.BytesIO(header + pcm)) as reader:
        assert reader.getframerate() == 24000
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        assert reader.getnframes() == tone.shape[0]
        assert reader.readframes(tone.shape[0]) == pcm
    data, rate = sf.read(io.BytesIO(header + pcm), dtype="float32")
    assert rate == 24000 and data.shape == (6000,)
    assert np.abs(data - tone.numpy()).max() < 1e-4


def test_wav_header_stereo_sizes() -> None:
    header = wav_header(48000, 2, 10)
    (riff_size,) = struct.unpack_from("<I", header, 4)
    channels, rate, byte_rate, align, bits = struct.unpack_from("<HIIHH", header, 22)
    (data_size,) = struct.unpack_from("<I", header, 40)
    assert (riff_size, data_size) == (36 + 40, 40)
    assert (channels, rate, byte_rate, align, bits) == (2, 48000, 192000, 4, 16)


def test_wav_header_streaming_form() -> None:
    header = wav_header(24000)
    assert len(header) == 44
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt " and header[36:40] == b"data"
    assert header[4:8] == b"\xff\xff\xff\xff" and header[40:44] == b"\xff\xff\xff\xff"
    # a reader that trusts the sizes still gets the samples that follow
    pcm = float_to_pcm16(sine(440, 24000, 0.1))
    data, rate = sf.read(io.BytesIO(header + pcm), dtype="int16")
    assert rate == 24000 and data.tobytes() == pcm


def test_wav_header_rejects_bad_arguments() -> None:
    with pytest.raises(AudioError):
        wav_header(0)
    with pytest.raises(AudioError):
        wav_header(24000, 0)
    with pytest.raises(AudioError):
        wav_header(24000, 1, -1)
    with pytest.raises(AudioError, match="do not fit"):
        wav_header(24000, 1, 2**31)


# ------------------------------------------------------------------------------------------ encoding


def test_available_formats() -> None:
    formats = available_formats()
    assert {"wav", "flac", "ogg", "pcm"} <= formats
    assert formats <= {"wav", "flac", "ogg", "opus", "mp3", "aac", "pcm"}
    formats.clear()
    assert "wav" in available_formats()


def test_aac_streams_as_adts_frames_equal_to_the_whole_file() -> None:
    import av
    tone = (0.3 * np.sin(np.arange(36000) * 0.05)).astype(np.float32)
    whole = encode_audio(tone, 24000, "aac")
    encoder = StreamEncoder(24000, "aac")
    parts = [encoder.encode(tone[i : i + 5000]) for i in range(0, len(tone), 5000)]
    parts.append(encoder.finish())
    assert b"".join(parts) == whole and whole[:2] == b"\xff\xf1"
    assert sum(1 for p in parts[:-1] if p) >= 5, "frames leave as they are encoded, not at the end"
    with av.open(io.BytesIO(whole), format="adts") as container:
        decoded = sum(frame.samples for frame in container.decode(audio=0))
    assert len(tone) <= decoded <= len(tone) + 2048  # the encoder's priming and its last frame's padding


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_a_whole_file_encoder_gives_the_real_length(fmt) -> None:
    tone = (0.3 * np.sin(np.arange(12345) * 0.05)).astype(np.float32)
    encoder = StreamEncoder(24000, fmt, whole_file=True)
    parts = [encoder.encode(tone[i : i + 4000]) for i in range(0, len(tone), 4000)]
    assert parts == [b""] * len(parts), "nothing leaves before the end"
    data = encoder.finish()
    assert sf.info(io.BytesIO(data)).frames == len(tone)
    streamed = StreamEncoder(24000, fmt)
    head = streamed.encode(tone) + streamed.finish()
    if fmt == "wav":  # a stream cannot know its length: sizes "unknown"; complete_wav fills them in
        assert head[4:8] == b"\xff\xff\xff\xff" and complete_wav(head) == data


def test_encode_lossless_formats_are_exact() -> None:
    tone = sine(440, 24000, 0.5)
    pcm = float_to_pcm16(tone)
    assert encode_audio(tone, 24000, "pcm") == pcm
    wav = encode_audio(tone, 24000, "wav")
    assert wav[:4] == b"RIFF"
    for blob in (wav, encode_audio(tone, 24000, "FLAC")):
        data, rate = sf.read(io.BytesIO(blob), dtype="int16")
        assert rate == 24000 and data.tobytes() == pcm


@pytest.mark.parametrize("fmt", sorted({"ogg", "opus", "mp3"} & available_formats()))
def test_encode_lossy_formats_decode_to_the_same_tone(fmt: str) -> None:
    tone = sine(440, 24000, 1.0)
    data, rate = sf.read(io.BytesIO(encode_audio(tone.unsqueeze(0), 24000, fmt)), dtype="float32")
    assert rate == 24000
    assert abs(data.shape[0] - 24000) <= 2400
    assert abs(peak_frequency(torch.from_numpy(data), rate) - 440) < 2
    assert abs(float(np.sqrt(np.mean(data**2))) / float(tone.pow(2).mean().sqrt()) - 1) < 0.2


@pytest.mark.skipif("opus" not in available_formats(), reason="libsndfile without Opus")
def test_encode_opus_resamples_unsupported_rates() -> None:
    data, rate = sf.read(io.BytesIO(encode_audio(sine(440, 22050, 0.5), 22050, "opus")))
    assert rate == 48000
    assert abs(data.shape[0] - 24000) <= 2400


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(AudioError, match="not supported") as info:
        encode_audio(torch.zeros(100), 24000, "aiff")
    assert "wav" in str(info.value)
    with pytest.raises(AudioError, match="NaN"):
        encode_audio(torch.tensor([0.0, float("nan")] * 50), 24000, "wav")
    with pytest.raises(AudioError, match="positive integer"):
        encode_audio(torch.zeros(100), 0, "wav")


def speech_like(seconds: float = 4.0, sample_rate: int = 24000) -> torch.Tensor:
    """A voiced, syllable-modulated signal: compresses like speech, unlike a pure tone."""
    t = torch.arange(int(sample_rate * seconds), dtype=torch.float64) / sample_rate
    voiced = sum(torch.sin(2 * math.pi * 140 * k * t) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 3.0 * t)
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal(t.numel())) * 0.01
    return (0.15 * voiced * envelope + noise).to(torch.float32)


def stream_encode(audio: torch.Tensor, fmt: str, chunk: int = 3840) -> list[bytes]:
    """Each piece StreamEncoder hands out for 160 ms chunks, the last one from finish()."""
    encoder = StreamEncoder(24000, fmt)
    parts = [encoder.encode(audio[i : i + chunk]) for i in range(0, audio.numel(), chunk)]
    return [*parts, encoder.finish()]


@pytest.mark.parametrize("fmt", ["pcm", "wav", "flac"])
def test_stream_encoder_lossless_formats_equal_the_whole_file(fmt: str) -> None:
    audio = speech_like()
    parts = stream_encode(audio, fmt)
    streamed, whole = b"".join(parts), encode_audio(audio, 24000, fmt)
    assert sum(1 for p in parts if p) >= len(parts) - 4, "bytes leave with (nearly) every chunk"
    if fmt == "pcm":
        assert streamed == whole == float_to_pcm16(audio)
        return
    decoded, rate = load_audio(streamed)
    assert rate == 24000 and float_to_pcm16(decoded[0]) == float_to_pcm16(audio), "the same 16-bit samples"
    if fmt == "wav":
        # the stream's header cannot know the length; the whole file's does
        assert streamed[44:] == whole[44:] and streamed[4:8] == b"\xff" * 4 and whole[4:8] != b"\xff" * 4
        assert sf.info(io.BytesIO(whole)).frames == audio.numel()
    else:  # FLAC: a stream's STREAMINFO gives no length; the frames themselves are the same bytes
        assert len(streamed) == len(whole) and sum(a != b for a, b in zip(streamed, whole)) < 40
        assert sf.info(io.BytesIO(whole)).frames == audio.numel()


@pytest.mark.parametrize("fmt", sorted({"ogg", "opus", "mp3"} & available_formats()))
def test_stream_encoder_lossy_formats_arrive_progressively_and_decode_alike(fmt: str) -> None:
    audio = speech_like()
    parts = stream_encode(audio, fmt)
    first_audio_part = next(i for i, p in enumerate(parts) if i > 0 and p)
    assert first_audio_part <= 8, f"audio bytes began only after chunk {first_audio_part} (1.3 s)"
    assert sum(1 for p in parts if p) >= len(parts) // 6, "pages/frames leave while audio is still coming"
    streamed, whole = b"".join(parts), encode_audio(audio, 24000, fmt)
    a, rate_a = load_audio(streamed)
    b, rate_b = load_audio(whole)
    assert rate_a == rate_b
    if fmt == "mp3":
        # the same constant-bit-rate frames; only the first (LAME tag in a file, silence in a stream) differs
        differ = [i for i, (x, y) in enumerate(zip(streamed, whole)) if x != y]
        assert len(streamed) == len(whole) and differ and max(differ) < 1024
        # a stream keeps the leading silent frame and the encoder delay that a file's tag lets decoders trim
        extra = a.shape[-1] - b.shape[-1]
        assert 0 < extra <= 4 * 576
        delay = min(range(extra + 1), key=lambda d: float((a[0, d : d + 4000] - b[0, :4000]).abs().sum()))
        a = a[..., delay : delay + b.shape[-1]]
        assert float((a - b).abs().max()) < 1e-4, "the same frames decode to the same samples"
    assert a.shape == b.shape
    assert float((a - b).abs().max()) < 0.02, "a stream decodes to the whole file's audio"


def test_stream_encoder_refuses_bad_use() -> None:
    with pytest.raises(AudioError, match="not supported"):
        StreamEncoder(24000, "aiff")
    with pytest.raises(AudioError, match="positive integer"):
        StreamEncoder(0, "wav")
    encoder = StreamEncoder(24000, "flac")
    with pytest.raises(AudioError, match="channel"):
        encoder.encode(torch.zeros(2, 100))
    with pytest.raises(AudioError, match="NaN"):
        encoder.encode(torch.tensor([0.0, float("nan")] * 50))
    assert encoder.encode(torch.zeros(4800))[:4] == b"fLaC"
    assert encoder.finish() and encoder.closed and encoder.finish() == b""
    with pytest.raises(AudioError, match="finished"):
        encoder.encode(torch.zeros(100))
    abandoned = StreamEncoder(24000, "mp3")
    abandoned.encode(torch.zeros(2400))
    abandoned.close()  # releases the encoder; nothing more comes
    assert abandoned.finish() == b""


def test_load_audio_reads_a_flac_stream_of_unknown_length() -> None:
    audio = speech_like(1.0)
    streamed = b"".join(stream_encode(audio, "flac"))
    assert sf.info(io.BytesIO(streamed)).frames > 1 << 62, "libsndfile reports no length for it"
    decoded, rate = load_audio(streamed)
    assert rate == 24000 and decoded.shape == (1, audio.numel())


# ------------------------------------------------------------------------------------------ saving


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
def test_save_round_trip(tmp_path: Path, ext: str) -> None:
    tone = sine(440, 24000, 0.5)
    path = save_audio(tmp_path / f"out.{ext}", tone.unsqueeze(0), 24000)
    assert path == tmp_path / f"out.{ext}"
    info = sf.info(path)
    assert info.samplerate == 24000 and info.channels == 1 and info.frames == 12000
    assert info.format == {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}[ext]
    if ext == "wav":
        assert info.subtype == "PCM_16"
    if ext == "ogg":
        assert info.subtype == "VORBIS"
    loaded, _ = load_audio(path)
    tolerance = 1e-4 if ext != "ogg" else 0.05
    assert float((loaded[0] - tone).abs().max()) < tolerance
    assert [p.name for p in tmp_path.iterdir()] == [f"out.{ext}"]


def test_save_explicit_format_overrides_extension(tmp_path: Path) -> None:
    path = save_audio(tmp_path / "clip.bin", sine(440, 16000, 0.2), 16000, format="flac")
    assert sf.info(path).format == "FLAC"


def test_save_unknown_extension_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"\.wav") as info:
        save_audio(tmp_path / "clip.aiff", sine(440, 16000, 0.2), 16000)
    assert ".aiff" in str(info.value)
    with pytest.raises(AudioError, match="none"):
        save_audio(tmp_path / "clip", sine(440, 16000, 0.2), 16000)
    assert list(tmp_path.iterdir()) == []


def test_save_failure_keeps_existing_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "keep.wav"
    save_audio(target, sine(440, 16000, 0.2), 16000)
    before = target.read_bytes()
    with pytest.raises(AudioError, match="NaN"):
        save_audio(target, torch.full((1000,), float("nan")), 16000)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.wav"]


def test_save_replaces_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "again.wav"
    save_audio(target, sine(440, 16000, 0.2), 16000)
    save_audio(target, sine(440, 16000, 0.5), 16000)
    assert sf.info(target).frames == 8000


def test_save_into_missing_folder_or_onto_folder(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="does not exist"):
        save_audio(tmp_path / "missing" / "x.wav", sine(440, 16000, 0.2), 16000)
    (tmp_path / "dir.wav").mkdir()
    with pytest.raises(AudioError, match="folder"):
        save_audio(tmp_path / "dir.wav", sine(440, 16000, 0.2), 16000)


def test_save_rejects_transposed_audio(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="samples, channels"):
        save_audio(tmp_path / "x.wav", sine(440, 16000, 0.2).unsqueeze(1), 16000)
    assert list(tmp_path.iterdir()) == []


def test_save_error_mid_write_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "keep.flac"
    save_audio(target, sine(440, 16000, 0.2), 16000)
    before = target.read_bytes()

    def fail_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("tadastream.audio.os.replace", fail_replace)
    with pytest.raises(OSError, match="disk full"):
        save_audio(target, sine(440, 16000, 0.5), 16000)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.flac"]
