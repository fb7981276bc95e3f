"""The ``tadastream`` command line, run as a subprocess like a user would.

Each subprocess pays the torch import, and each model run a few seconds more, so the successful
runs are few and each checks several things; the error paths never load a model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile

from tests.helpers.paths import FIXTURES, SRC
from tests.helpers.processes import interruptible

SAMPLE = FIXTURES / "ljspeech.flac"  # the shared clip, lossless
FAST = ["--flow-steps", "2"]  # fewer flow-matching steps: same machinery, less time


def run_cli(*args, stdin: bytes | str | None = None, env: dict | None = None, pythonpath=(), cwd=None, timeout=300):
    """``python -m tadastream ARGS``; returns the CompletedProcess (stdout as bytes, stderr as text)."""
    environment = dict(os.environ)
    environment.pop("TADASTREAM_MODEL", None)
    environment["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), str(SRC)])
    environment.update(env or {})
    if isinstance(stdin, str):
        stdin = stdin.encode()
    proc = subprocess.run(
        [sys.executable, "-m", "tadastream", *map(str, args)],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=environment,
        cwd=cwd,
        timeout=timeout,
    )
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"))


def assert_user_error(proc, code: int, *needles: str) -> str:
    """Non-zero exit, exactly one ``error:`` line, no traceback; returns that line."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def parse_streaming_wav(data: bytes) -> tuple[int, bytes]:
    """Tolerant WAV reader: the sizes of a streamed header are 0xFFFFFFFF, so read to the end."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", data[:16]
    pos, rate = 12, None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            fmt, channels, rate, byte_rate, align, bits = struct.unpack("<HHIIHH", data[body : body + 16])
            assert (fmt, channels, align, bits) == (1, 1, 2, 16)
            assert byte_rate == rate * 2
        elif chunk_id == b"data":
            assert rate is not None, "data before fmt"
            end = len(data) if size == 0xFFFFFFFF else body + size
            return rate, data[body:end]
        pos = body + size + (size & 1)
    raise AssertionError("no data chunk")


@pytest.fixture(scope="module")
def demo_voice_file(tmp_path_factory) -> Path:
    """The demo model's default voice saved as a .voice file."""
    from tadastream.demo import build_demo_model, demo_voice

    path = tmp_path_factory.mktemp("voice") / "demo.voice"
    demo_voice(build_demo_model()).save(path)
    return path


@pytest.fixture(scope="module")
def fake_modules(tmp_path_factory) -> dict[str, Path]:
    """Stand-ins for ``sounddevice``: one that is absent, one that records what it plays."""
    root = tmp_path_factory.mktemp("fake")
    absent = root / "absent"
    absent.mkdir()
    (absent / "sounddevice.py").write_text("raise ImportError('No module named sounddevice')\n")
    player = root / "player"
    player.mkdir()
    (player / "sounddevice.py").write_text(
        """
import json, os, threading, time
import numpy as np

class CallbackStop(Exception):
    pass

class PortAudioError(Exception):
    pass

def query_devices(kind=None):
    if os.environ.get("FAKE_SD_NO_DEVICE"):
        raise PortAudioError("Error querying device -1")
    return {"name": "fake", "max_output_channels": 2}

class OutputStream:
    def __init__(self, samplerate, channels, dtype, callback, finished_callback=None):
        self.samplerate, self.channels, self.callback, self.done = samplerate, channels, callback, finished_callback

    def start(self):
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        played, calls = [], 0
        while True:
            out = np.full((960, self.channels), 9.0, dtype=np.float32)
            stop = False
            try:
                self.callback(out, 960, None, None)
            except CallbackStop:
                stop = True
            calls += 1
            played.append(out[:, 0].copy())
            if stop:
                break
            time.sleep(0.001)
        audio = np.concatenate(played)
        with open(os.environ["FAKE_SD_LOG"], "w") as fh:
            json.dump({"rate": self.samplerate, "calls": calls, "unfilled": int((audio == 9.0).sum()),
                       "audible": int((audio != 0).sum())}, fh)
        if self.done:
            self.done()

    def close(self):
        pass

    def abort(self):
        pass
"""
    )
    return {"absent": absent, "player": player}


# ------------------------------------------------------------------------------------------------
# successful runs (each loads the demo model once)


def test_speak_to_file_with_timeline(tmp_path):
    out, png = tmp_path / "out.wav", tmp_path / "timeline.png"
    proc = run_cli("speak", "Hello there.", "--model", "demo", "-o", out, "--timeline", png, "--seed", "1", *FAST)
    assert proc.returncode == 0, proc.stderr
    import soundfile as sf

    audio, rate = sf.read(out)
    assert rate == 24000 and audio.ndim == 1 and len(audio) > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "first audio after" in proc.stderr and "playable after" in proc.stderr and f"wrote {out}" in proc.stderr
    assert proc.stdout == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav", "timeline.png"]  # no temp files left


def test_speak_streams_aac_that_decodes_to_its_length(tmp_path):
    import av
    out = tmp_path / "out.aac"
    proc = run_cli("speak", "Hello there.", "--model", "demo", "--stream", "-o", out, "--seed", "1", *FAST)
    assert proc.returncode == 0, proc.stderr
    seconds = float(re.search(r": ([0-9.]+) s of audio", proc.stderr).group(1))
    data = out.read_bytes()
    assert data[:2] == b"\xff\xf1", "ADTS frames"
    with av.open(str(out)) as container:
        decoded = sum(frame.samples for frame in container.decode(audio=0)) / 24000
    assert seconds - 0.01 <= decoded <= seconds + 2048 / 24000  # plus the encoder's priming and last frame


def test_speak_with_int8_weights(tmp_path):
    out = tmp_path / "out.wav"
    proc = run_cli("speak", "Hello there.", "--model", "demo", "--quantize", "int8", "-o", out, "--seed", "1", *FAST)
    assert proc.returncode == 0, proc.stderr
    import soundfile as sf

    audio, rate = sf.read(out)
    assert rate == 24000 and len(audio) > 0 and abs(audio).max() > 0


def test_speak_stdin_stream_raw_to_stdout():
    proc = run_cli(
        "speak", "-", "--model", "demo", "--stream", "-o", "-", "--format", "raw", *FAST, stdin="Hi there.\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) > 0 and len(proc.stdout) % 2 == 0
    assert proc.stdout[:4] != b"RIFF"
    (summary,) = proc.stderr.strip().splitlines()  # the audio goes to stdout, one summary line to stderr
    assert summary.startswith("stdout: ") and "seed " in summary
    quiet = run_cli("speak", "-", "--model", "demo", "-o", "-", "--format", "raw", "-q", *FAST, stdin="Hi.\n")
    assert quiet.returncode == 0 and quiet.stderr == "" and len(quiet.stdout) > 0
    import numpy as np

    pcm = np.frombuffer(proc.stdout, dtype="<i2")
    assert np.abs(pcm).max() > 0


def test_speak_voice_file_stream_wav_to_stdout(demo_voice_file):
    proc = run_cli("speak", "Hello.", "--model", "demo", "--voice", demo_voice_file, "--stream", "-o", "-", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout[4:8] == b"\xff\xff\xff\xff"  # streaming header: length unknown
    rate, payload = parse_streaming_wav(proc.stdout)
    assert rate == 24000
    assert len(payload) > 0 and len(payload) % 2 == 0


def test_speak_stream_plays_through_sounddevice(tmp_path, fake_modules):
    log = tmp_path / "played.json"
    proc = run_cli(
        "speak",
        "Hi.",
        "--model",
        "demo",
        "--stream",
        *FAST,
        pythonpath=[fake_modules["player"]],
        env={"FAKE_SD_LOG": str(log)},
    )
    assert proc.returncode == 0, proc.stderr
    import json

    played = json.loads(log.read_text())
    assert played["rate"] == 24000
    assert played["unfilled"] == 0  # the callback filled every buffer (silence while waiting)
    assert played["audible"] > 0
    assert "played" in proc.stderr


def test_demo_reports_timings_and_writes_wav(tmp_path):
    out = tmp_path / "demo.wav"
    proc = run_cli("demo", "-o", out, "--text", "Hello there.")
    assert proc.returncode == 0, proc.stderr
    report = proc.stdout.decode()
    assert "noise-like" in report and "random weights" in report
    assert "time to first audio:" in report and "total time:" in report
    assert "time to playable audio:" in report
    assert "real-time factor" in report and "audio seconds / wall seconds" in report
    import soundfile as sf

    audio, rate = sf.read(out)
    assert rate == 24000 and len(audio) > 0


def test_demo_first_chunk_setting_moves_only_chunk_boundaries(tmp_path):
    import soundfile as sf

    audio = {}
    for value in ("0", "adaptive", "500"):
        out = tmp_path / f"demo-{value}.wav"
        proc = run_cli("demo", "-o", out, "--text", "Hello there, how are you?", "--min-first-chunk-ms", value)
        assert proc.returncode == 0, proc.stderr
        assert "time to playable audio:" in proc.stdout.decode()
        audio[value], _ = sf.read(out, dtype="int16")
    assert len(audio["0"]) > 0 and (audio["0"] == audio["adaptive"]).all() and (audio["0"] == audio["500"]).all()


def _tiny_codec(root: Path) -> Path:
    """A codec directory (encoder/ + aligner/): the demo codec saved, to load the way a real one is."""
    from tadastream.demo import build_demo_encoder

    encoder = build_demo_encoder()
    encoder.save_pretrained(root / "encoder")
    encoder.aligner.save_pretrained(root / "aligner")
    encoder.aligner.save_pretrained(root / "aligner-ch")  # the codec's folder for Chinese (zh)
    return root


def test_encode_voice_round_trip(tmp_path):
    import soundfile as sf

    from tadastream.codec.encoder import EncoderOutput

    codec = _tiny_codec(tmp_path / "codec")
    audio, rate = sf.read(SAMPLE)
    clip = tmp_path / "clip.wav"
    sf.write(clip, audio[: int(1.5 * rate)], rate)  # a short clip keeps the random CNN quick
    out = tmp_path / "me.voice"
    proc = run_cli("encode-voice", clip, "--text", "The examination and testimony", "--codec", codec, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stderr
    voice = EncoderOutput.load(out)
    assert voice.text == ["The examination and testimony"]
    assert voice.token_values.shape[0] == 1 and voice.token_values.shape[2] == 32
    assert voice.token_values.shape[1] == int(voice.text_tokens_len[0]) > 0
    assert voice.language == "en", "the English aligner's voice records its language"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.wav", "codec", "me.voice"]
    zh = tmp_path / "zh.voice"
    proc = run_cli("encode-voice", clip, "--text", "人人生而自由", "--codec", codec, "--language", "zh", "-o", zh)
    assert proc.returncode == 0, proc.stderr
    assert EncoderOutput.load(zh).language == "zh" and " in zh," in proc.stderr


# ------------------------------------------------------------------------------------------------
# user errors: one line, how to fix it, nothing written, no model loaded


@pytest.mark.parametrize("text", ["   ", "\U0001f600\U0001f600\U0001f389\U0001f389", "!!! ... ???", "\u200b\u200b"])
def test_text_with_nothing_to_say_is_refused_like_empty_text(tmp_path, text):
    proc = run_cli("speak", text, "--model", "demo", "-o", tmp_path / "x.wav")
    assert_user_error(proc, 2, "text has nothing to speak", "emoji")
    assert not list(tmp_path.iterdir())


def test_empty_or_emoji_stdin_and_files(tmp_path):
    proc = run_cli("speak", "-", "--model", "demo", "-o", tmp_path / "x.wav", stdin="\n  \n")
    assert_user_error(proc, 2, "text has nothing to speak")
    (tmp_path / "smile.txt").write_text("\U0001f600 \U0001f44d\U0001f3fd\n\n* * *\n")
    proc = run_cli("speak", "-f", tmp_path / "smile.txt", "--model", "demo", "-o", tmp_path / "x.wav")
    assert_user_error(proc, 2, "smile.txt has nothing to speak", "put the words to speak in it")
    assert not (tmp_path / "x.wav").exists()


def test_stdin_gets_the_utf8_check_of_files(tmp_path):
    bad = b"Hello \xff\xfe there."
    proc = run_cli("speak", "-", "--model", "demo", "-o", tmp_path / "x.wav", stdin=bad)
    assert_user_error(proc, 2, "not UTF-8 text", "iconv")
    (tmp_path / "bad.txt").write_bytes(bad)
    proc = run_cli("speak", "-f", tmp_path / "bad.txt", "--model", "demo", "-o", tmp_path / "x.wav")
    assert_user_error(proc, 2, "not UTF-8 text", "iconv")
    assert not list(tmp_path.glob("*.wav"))


def test_encode_voice_refuses_a_transcript_with_nothing_to_say(tmp_path):
    out = tmp_path / "v.voice"
    proc = run_cli("encode-voice", SAMPLE, "--text", "\U0001f600\U0001f600", "--codec", "demo", "-o", out)
    assert_user_error(proc, 2, "--text has nothing to speak")
    assert not list(tmp_path.iterdir())


def test_missing_voice_file(tmp_path):
    proc = run_cli("speak", "Hi.", "--voice", tmp_path / "nope.wav", "--voice-text", "hi", "-o", tmp_path / "x.wav")
    assert_user_error(proc, 2, "not found")
    proc = run_cli("speak", "Hi.", "--voice", tmp_path / "nope.voice", "-o", tmp_path / "x.wav")
    assert_user_error(proc, 2, "not found")
    assert not list(tmp_path.iterdir())


def test_unreadable_voice_files(tmp_path):
    (tmp_path / "bad.wav").write_text("not audio")
    (tmp_path / "bad.voice").write_text("not a voice")
    proc = run_cli("speak", "Hi.", "--voice", tmp_path / "bad.wav", "--voice-text", "hi", "-o", tmp_path / "x.wav")
    assert_user_error(proc, 2, "could not read audio")
    proc = run_cli("speak", "Hi.", "--voice", tmp_path / "bad.voice", "-o", tmp_path / "x.wav")
    line = assert_user_error(proc, 2, "not an encoded voice", "encode-voice")
    assert "Error" not in line.removeprefix("error: "), "the fix, not a library's exception name"
    assert line.count("encode-voice") == 1, "the hint once"
    proc = run_cli("speak", "Hi.", "--voice", tmp_path / "bad.wav", "-o", tmp_path / "x.wav")
    assert_user_error(proc, 2, "--voice-text")


def test_bad_output_extension(tmp_path):
    proc = run_cli("speak", "Hi.", "--model", "demo", "-o", tmp_path / "x.mp4")
    assert_user_error(proc, 2, ".mp4", ".wav")
    proc = run_cli("demo", "-o", tmp_path / "x.txt")
    assert_user_error(proc, 2, ".txt")
    assert not list(tmp_path.iterdir())


def test_unknown_format(tmp_path):
    assert_user_error(run_cli("speak", "Hi.", "--model", "demo", "-o", "-", "--format", "mp4"), 2, "--format", "wav")
    proc = run_cli("speak", "Hi.", "--model", "demo", "-o", tmp_path / "x.wav", "--format", "raw")
    assert_user_error(proc, 2, "--format is for -o -")


def test_stream_without_sounddevice_or_output(fake_modules):
    proc = run_cli("speak", "Hi.", "--model", "demo", "--stream", pythonpath=[fake_modules["absent"]])
    assert_user_error(proc, 2, "tadastream[play]", "-o")


def test_no_audio_device(tmp_path, fake_modules):
    proc = run_cli(
        "speak",
        "Hi.",
        "--model",
        "demo",
        "--stream",
        pythonpath=[fake_modules["player"]],
        env={"FAKE_SD_NO_DEVICE": "1", "FAKE_SD_LOG": str(tmp_path / "log")},
    )
    assert_user_error(proc, 2, "no audio output device", "-o")


def test_model_directory_missing(tmp_path):
    proc = run_cli("speak", "Hi.", "--model", tmp_path / "no-such-model", "-o", tmp_path / "x.wav")
    assert_user_error(proc, 2, "no such directory", "--model demo")


def test_real_model_needs_a_voice(tmp_path):
    proc = run_cli("speak", "Hi.", "-o", tmp_path / "x.wav")
    assert_user_error(proc, 2, "--voice", "encode-voice")


def test_hub_offline_fails_fast(tmp_path, demo_voice_file):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = run_cli("speak", "Hi.", "--voice", demo_voice_file, "-o", tmp_path / "x.wav", env=env, timeout=60)
    assert_user_error(proc, 1, "HumeAI/tada-1b", "local directory", "--model demo")
    assert not (tmp_path / "x.wav").exists()


def test_a_text_file_is_spoken_in_segments(tmp_path):
    chapter = tmp_path / "chapter.txt"
    chapter.write_text("The first paragraph of the chapter.\n\nThe second one, a little longer than the first.\n")
    proc = run_cli("speak", "-f", chapter, "--long-form", "--model", "demo", "-o", tmp_path / "x.wav", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    audio, rate = soundfile.read(tmp_path / "x.wav")
    assert rate == 24000 and len(audio) > 24000
    assert_user_error(run_cli("speak", "Hi.", "-f", chapter, "--model", "demo"), 2, "not both")
    assert_user_error(run_cli("speak", "-f", tmp_path / "none.txt", "--model", "demo"), 2, "no such file")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert_user_error(run_cli("speak", "-f", tmp_path / "latin1.txt", "--model", "demo"), 2, "UTF-8")


TEXTS = FIXTURES / "texts"


def _opening(name: str, segments: int) -> str:
    """The first ``segments`` segments (120 columns) of a fixture text."""
    from tadastream.drivers.segments import split_text

    text = (TEXTS / f"{name}.txt").read_text(encoding="utf-8")
    return text[: split_text(text, 120)[segments - 1].end]


@pytest.mark.parametrize(
    "text",
    [
        "\n\n".join(_opening(lang, 2) for lang in ("en", "ar", "zh", "de", "es", "fr", "it", "ja", "pl", "pt")),
        _opening("alice-ch2-pool-of-tears", 6),
    ],
    ids=["ten-languages", "hard-wrapped-chapter"],
)
def test_files_as_people_have_them_speak_in_segments_with_subtitles(tmp_path, text):
    source = tmp_path / "in.txt"
    source.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))  # Windows line ends
    out, srt = tmp_path / "out.wav", tmp_path / "out.srt"
    proc = run_cli("speak", "-f", source, "--long-form", "--model", "demo", "-o", out, "--subtitles", srt, *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr, "the demo model speaks all ten languages"
    audio, rate = soundfile.read(out)
    cues = [block.split("\n")[2:] for block in srt.read_text(encoding="utf-8").strip().split("\n\n")]
    assert rate == 24000 and len(audio) > rate and len(cues) >= 6
    shown = "".join("".join(lines) for lines in cues)
    assert [ch for ch in shown if ch.isalnum()] == [ch for ch in text if ch.isalnum()], "every word is captioned"


def test_bad_options(tmp_path):
    assert_user_error(run_cli("speak", "Hi.", "--model", "demo", "--temperature", "-1"), 2, "--temperature")
    proc = run_cli("speak", "Hi.", "--model", "demo", "-o", tmp_path / "x.wav", "--timeline", tmp_path / "t.jpg")
    assert_user_error(proc, 2, ".png")
    proc = run_cli("speak", "Hi.", "--model", "demo", "-o", tmp_path / "x.wav", "--device", "nonsense")
    assert_user_error(proc, 2, "--device")
    for value in ("-5", "soon", "1e9", "nan"):
        proc = run_cli("speak", "Hi.", "--model", "demo", "-o", tmp_path / "x.wav", "--min-first-chunk-ms", value)
        assert_user_error(proc, 2, "--min-first-chunk-ms", "adaptive")
    assert not (tmp_path / "x.wav").exists()


def test_encode_voice_errors(tmp_path):
    clip = tmp_path / "clip.wav"
    import numpy as np
    import soundfile as sf

    sf.write(clip, 0.1 * np.sin(np.arange(24000) / 10), 24000)
    assert_user_error(run_cli("encode-voice", clip, "--text", "hi", "-o", tmp_path / "me.wav"), 2, ".voice")
    assert_user_error(run_cli("encode-voice", tmp_path / "nope.wav", "--text", "hi", "-o", tmp_path / "a.voice"), 2)
    assert_user_error(run_cli("encode-voice", clip, "--text", " ", "-o", tmp_path / "a.voice"), 2, "empty")
    proc = run_cli("encode-voice", clip, "--text", "hi", "-o", tmp_path / "a.voice", "--codec", tmp_path / "none")
    assert_user_error(proc, 2, "--codec")
    proc = run_cli("encode-voice", clip, "--text", "hi", "-o", tmp_path / "a.voice", "--language", "xx")
    assert_user_error(proc, 2, "language")
    proc = run_cli(
        "encode-voice",
        clip,
        "--text",
        "hi",
        "-o",
        tmp_path / "a.voice",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
        timeout=60,
    )
    assert_user_error(proc, 1, "HumeAI/tada-codec", "local directory")
    assert not (tmp_path / "a.voice").exists()


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli("speak", "   ", "--model", "demo", "-o", tmp_path / "x.wav", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_help_and_usage():
    for command in ("speak", "encode-voice", "demo"):
        proc = run_cli(command, "--help")
        assert proc.returncode == 0 and b"usage: tadastream " + command.encode() in proc.stdout
    assert_user_error(run_cli("speak"), 2, "TEXT")
    assert_user_error(run_cli("bogus"), 2, "speak")
    assert_user_error(run_cli("speak", "Hi.", "--bogus"), 2, "--bogus", "`tadastream speak --help`")
    assert_user_error(run_cli("demo", "--nope"), 2, "`tadastream demo --help`")
    assert run_cli().returncode == 2


def test_demo_quiet_prints_nothing(tmp_path):
    proc = run_cli("demo", "-q", "-o", tmp_path / "d.wav")
    assert proc.returncode == 0 and proc.stdout == b"" and proc.stderr == ""
    assert (tmp_path / "d.wav").exists()


def test_the_seed_a_run_chose_reproduces_it(tmp_path):
    first = run_cli("speak", "Same again.", "--model", "demo", "-o", tmp_path / "a.wav", *FAST)
    assert first.returncode == 0, first.stderr
    seed = int(first.stderr.rsplit("seed ", 1)[1].split()[0].rstrip(";"))
    again = run_cli("speak", "Same again.", "--model", "demo", "-o", tmp_path / "b.wav", "--seed", seed, *FAST)
    assert again.returncode == 0 and f"seed {seed}" in again.stderr
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()


LJ_TEXT = (
    "The examination and testimony of the experts, enabled the commission to conclude that five shots may "
    "have been fired."
)


def test_offline_voice_cloning_with_the_demo_codec(tmp_path):
    voice = tmp_path / "lj.voice"
    proc = run_cli("encode-voice", SAMPLE, "--text", LJ_TEXT, "--codec", "demo", "-o", voice)
    assert proc.returncode == 0 and f"wrote {voice}" in proc.stderr, proc.stderr
    spoken = run_cli("speak", "Hello in a cloned voice.", "--model", "demo", "--voice", voice, "-o", tmp_path / "a.wav")
    assert spoken.returncode == 0, spoken.stderr
    # the recording itself works too (encoded on the fly with the demo codec), and a seed repeats it all
    runs = [
        run_cli(
            "speak",
            "Hello in a cloned voice.",
            "--model",
            "demo",
            "--voice",
            SAMPLE,
            "--voice-text",
            LJ_TEXT,
            "-o",
            tmp_path / f"{name}.wav",
            "--seed",
            "4",
        )  # fmt: skip
        for name in ("b", "c")
    ]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert (tmp_path / "b.wav").read_bytes() == (tmp_path / "c.wav").read_bytes(), "same seed, same audio"
    assert_user_error(
        run_cli("speak", "Hi.", "--codec", "demo", "--voice", voice, "-o", tmp_path / "x.wav"), 2, "--model demo"
    )


# ------------------------------------------------------------------------------------------------
# in-process checks of the pieces


def test_option_defaults_match_inference_options():
    from tadastream.cli import OPTION_DEFAULTS, build_parser
    from tadastream.generation import InferenceOptions

    args = build_parser().parse_args(["speak", "x"])
    defaults = InferenceOptions()
    assert args.temperature == defaults.text_temperature == OPTION_DEFAULTS["temperature"]
    assert args.cfg_scale == defaults.acoustic_cfg_scale
    assert args.flow_steps == defaults.num_flow_matching_steps
    assert args.noise_temperature == defaults.noise_temperature
    assert args.speed is defaults.speed_up_factor is None
    import inspect

    from tadastream.model import generate

    assert args.transition_steps == inspect.signature(generate).parameters["num_transition_steps"].default
    assert {f.name for f in dataclasses.fields(InferenceOptions)} >= {"text_temperature", "acoustic_cfg_scale"}


def test_simulate_playback_shows_stalls():
    from tadastream.timeline import simulate_playback

    # 1 s ready at t=1, then 1 s more at t=3: playback runs dry at t=2 and waits until t=3.
    play = simulate_playback([1.0, 3.0], [1.0, 1.0])
    assert play.stalls == [(2.0, 3.0)]
    assert play.wall[-1] == 4.0 and play.audio[-1] == 2.0
    # Chunks arriving ahead of playback: no stall.
    smooth = simulate_playback([1.0, 1.5, 2.0], [1.0, 1.0, 1.0])
    assert smooth.stalls == [] and smooth.wall[-1] == 4.0


def test_plot_timeline_without_matplotlib(tmp_path, monkeypatch):
    import builtins

    from tadastream.timeline import MissingMatplotlibError, plot_timeline

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(MissingMatplotlibError, match=r"tadastream\[plot\]"):
        plot_timeline(object(), tmp_path / "t.png")
    assert not list(tmp_path.iterdir())


class TerminalRun:
    """``python -m tadastream ARGS`` with stderr on a pseudo-terminal, as a user at a shell sees it."""

    def __init__(self, *args):
        import pty

        self.master, slave = pty.openpty()
        environment = dict(os.environ, PYTHONPATH=str(SRC))
        environment.pop("TADASTREAM_MODEL", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tadastream", *map(str, args)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            env=environment,
            preexec_fn=interruptible,
        )
        os.close(slave)
        self.seen = b""

    def read_until(self, needle: bytes, timeout: float = 120) -> bool:
        """Read the terminal until ``needle`` shows (True) or the program ends first (False)."""
        import select

        deadline = time.monotonic() + timeout
        while needle not in self.seen and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # the program closed the terminal
                    return needle in self.seen
                if not data:
                    break
                self.seen += data
            elif self.proc.poll() is not None:
                break
        return needle in self.seen

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        self.read_until(b"\0", timeout=timeout)  # drain to the end
        code = self.proc.wait(timeout=timeout)
        os.close(self.master)
        return code, self.seen.decode(errors="replace")


def test_status_line_on_a_terminal_and_not_in_a_pipe(tmp_path):
    text = "A status line shows how far the text has come. " * 4
    run = TerminalRun("speak", text, "--model", "demo", "-o", tmp_path / "t.wav", *FAST)
    code, shown = run.finish()
    assert code == 0, shown
    assert "\r" in shown and "settled" in shown and "RTF" in shown and "%" in shown, shown
    piped = run_cli("speak", text, "--model", "demo", "-o", tmp_path / "p.wav", *FAST)
    assert piped.returncode == 0 and "settled" not in piped.stderr and "\r" not in piped.stderr
    assert "wrote" in piped.stderr, "the summary line still comes"


def test_ctrl_c_keeps_what_was_made_as_a_valid_file(tmp_path):
    import signal

    chapter = tmp_path / "book.txt"
    chapter.write_text("A long book is read aloud, one sentence after another. " * 40)
    target, subtitles = tmp_path / "book.wav", tmp_path / "book.srt"
    run = TerminalRun(
        "speak", "-f", chapter, "--long-form", "--model", "demo", "-o", target, "--subtitles", subtitles, *FAST
    )
    assert run.read_until(b"s of audio"), "generation did not start"
    time.sleep(1.0)
    run.proc.send_signal(signal.SIGINT)
    code, shown = run.finish()
    assert code == 130 and "interrupted: kept the first" in shown and "Traceback" not in shown, shown
    assert shown.count("interrupted") == 1, "one line says what was kept"
    audio, rate = soundfile.read(target)
    assert rate == 24000 and len(audio) > 0, "the first part is a complete, readable file"
    cues = subtitles.read_text().strip().split("\n\n")
    assert cues and cues[0].startswith("1\n00:00:00,000 --> "), "the subtitles of the audio kept"
    last_end = cues[-1].splitlines()[1].split(" --> ")[1]
    h, m, rest = last_end.split(":")
    assert int(h) * 3600 + int(m) * 60 + float(rest.replace(",", ".")) <= len(audio) / rate + 1e-3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file is left behind"


def test_subtitles_and_timestamps_files(tmp_path):
    text = "Subtitles follow the words. Each cue is timed — exactly — from the model!"
    files = {name: tmp_path / name for name in ("s.wav", "s.srt", "s.vtt", "s.json")}
    proc = run_cli(
        "speak",
        text,
        "--model",
        "demo",
        "-o",
        files["s.wav"],
        "--subtitles",
        files["s.srt"],
        "--timestamps",
        files["s.json"],
        "--seed",
        "4",
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"subtitles {files['s.srt']}" in proc.stderr and f"timestamps {files['s.json']}" in proc.stderr
    audio, rate = soundfile.read(files["s.wav"])
    data = json.loads(files["s.json"].read_text())
    assert data["text"] == text and data["seed"] == 4
    assert data["audio_seconds"] == pytest.approx(len(audio) / rate)
    words = data["words"]
    assert [w["word"] for w in words][:4] == ["Subtitles", "follow", "the", "words."]
    assert words[0]["start"] == 0 and words[-1]["end"] == pytest.approx(len(audio) / rate)
    assert all(text[w["char_start"] : w["char_end"]] == w["word"] for w in words)
    assert data["characters"] and all(text[c["index"]] == c["char"] for c in data["characters"])
    srt = files["s.srt"].read_text()
    assert srt.startswith("1\n00:00:00,000 --> ") and "2\n" in srt, "a cue per sentence at least"
    assert "Subtitles follow the words." in srt and "from the model!" in srt
    # the same seed and a .vtt: same times, with each word's start inline
    proc = run_cli(
        "speak", text, "--model", "demo", "-o", files["s.wav"], "--subtitles", files["s.vtt"], "--seed", "4", *FAST
    )
    assert proc.returncode == 0, proc.stderr
    vtt = files["s.vtt"].read_text()
    second = words[1]["start"]
    assert vtt.startswith("WEBVTT\n") and f"<00:00:{second:06.3f}>follow" in vtt
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_caption_file_names_are_checked_before_loading(tmp_path):
    proc = run_cli("speak", "Hi.", "--model", "demo", "-o", tmp_path / "x.wav", "--subtitles", tmp_path / "x.txt")
    assert_user_error(proc, 2, "--subtitles", ".srt or .vtt")
    proc = run_cli("speak", "Hi.", "--model", "demo", "-o", tmp_path / "x.wav", "--timestamps", tmp_path / "no/x.json")
    assert_user_error(proc, 2, "--timestamps")
    assert not list(tmp_path.iterdir())


class _PlayingSink:
    """Stands in for a sound card that plays chunks as they come."""

    streaming = True

    def __init__(self):
        self.samples = 0

    def write(self, chunk) -> None:
        self.samples += chunk.numel()

    def close(self) -> None:
        pass


@pytest.mark.parametrize("speed, warned", [(0.4, True), (3.0, False)])
def test_playing_slower_than_real_time_says_so(demo_model, demo_voice, monkeypatch, capsys, speed, warned):
    from tadastream.cli.commands import _generate
    from tadastream.cli.progress import Progress
    from tadastream.drivers.stream import AudioStream
    from tadastream.generation import InferenceOptions, SpeechRequest

    monkeypatch.setattr(AudioStream, "realtime_factor", property(lambda self: speed))  # as a slow machine measures
    sink = _PlayingSink()
    speech = SpeechRequest("Hello there.", demo_voice, options=InferenceOptions())
    result, _ = _generate(demo_model, speech, sink, Progress(enabled=True))
    err = capsys.readouterr().err
    assert sink.samples > 0 and result is not None
    assert ("playback will pause" in err) == warned, err
    if warned:
        assert f"{speed:.2f}x real time" in err and err.count("playback will pause") == 1
