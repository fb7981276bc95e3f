"""Argument checks that look at the world (files, folders, devices, optional packages).

They all run before a model is loaded (loading takes seconds to minutes), so a mistake costs
nothing; each raises a :class:`UsageError` that says how to fix it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DEFAULT_CODEC, DEFAULT_MODEL
from ..loading import DEMO
from ..text import is_blank, nothing_to_say, unpaired_surrogate
from .errors import UsageError, one_line

FILE_EXTENSIONS = ("wav", "flac", "ogg", "opus", "mp3", "aac")


def read_text(text: str, what: str = "text") -> str:
    """The words to speak: ``text`` itself, or stdin for ``-``; UTF-8, with something to say."""
    if text == "-":
        text = _read_stdin(f"{what} -")
    elif unpaired_surrogate(text) is not None:  # bytes the terminal could not decode
        raise UsageError(f"{what} is not UTF-8 text; pass UTF-8 (or -f FILE)")
    return _speakable(text, what, "pass the words to speak (or - and pipe them in)")


def _read_stdin(what: str) -> str:
    """All of standard input as UTF-8 text (``what`` names the argument that asked for it)."""
    if sys.stdin is None or sys.stdin.closed:
        raise UsageError(f"{what}: there is no standard input to read; pass the words as an argument")
    raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{what}: standard input is not UTF-8 text; convert it (e.g. iconv -t utf-8)") from None


def read_text_file(path: str, flag: str = "-f") -> str:
    """The words to speak from a UTF-8 text file (``-``: standard input), with something to say."""
    if path == "-":
        return _speakable(_read_stdin(f"{flag} -"), f"{flag} -", "pipe the words to speak in")
    source = Path(path).expanduser()
    if source.is_dir():
        raise UsageError(f"{flag} {path}: that is a folder; give the path of a text file (or - for stdin)")
    if not source.is_file():
        raise UsageError(f"{flag} {path}: no such file; give the path of a text file (or - for stdin)")
    try:
        text = source.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{flag} {path}: not UTF-8 text; convert it first (e.g. iconv -t utf-8)") from None
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read it ({one_line(exc)})") from None
    return _speakable(text, f"{flag} {path}", "put the words to speak in it")


def _speakable(text: str, what: str, fix: str) -> str:
    """``text`` stripped, or a usage error when it has nothing to speak (empty, emoji, punctuation)."""
    if is_blank(text):
        raise UsageError(nothing_to_say(what, fix))
    return text.strip()


def check_output_file(path: str, flag: str = "-o") -> Path:
    """An audio file we can write, in a format this soundfile build supports."""
    from ..audio import available_formats

    target = output_path(path, flag, "speech.wav")
    allowed = [e for e in FILE_EXTENSIONS if e in available_formats()]
    ext = target.suffix.lower().lstrip(".")
    if ext not in allowed:
        raise UsageError(
            f"{flag} {path}: unknown audio extension {target.suffix or '(none)'!r}; use one of "
            + ", ".join(f".{e}" for e in allowed)
            + (" (or - for stdout)" if flag == "-o" else "")
        )
    check_folder(target, flag)
    return target


def output_path(path: str, flag: str, example: str) -> Path:
    """``path`` as a file to write; a folder is refused first (before its missing extension), with a
    file name in it to give instead."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise UsageError(f"{flag} {path}: that is a folder; give a file name in it, e.g. {flag} {Path(path, example)}")
    return target


def check_folder(target: Path, flag: str) -> None:
    """``target`` (from :func:`output_path`) is a file we can create, found out now rather than after
    minutes of generation.

    The folder is tried with a real file (created, then removed): permission bits do not tell, as
    root may write anywhere by them, yet not in a read-only file system such as /sys.
    """
    from ..files import temporary_beside

    if not target.parent.is_dir():
        raise UsageError(f"{flag} {target}: folder {target.parent} does not exist; create it first")
    probe = temporary_beside(target)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise UsageError(
            f"{flag} {target}: cannot write in folder {target.parent} ({exc.strerror or one_line(exc)}); "
            "choose another place"
        ) from None
    probe.unlink(missing_ok=True)


def check_timeline(path: str | None) -> Path | None:
    """A writable .png, and matplotlib to draw it (checked now, not after generating)."""
    if path is None:
        return None
    target = output_path(path, "--timeline", "timeline.png")
    if target.suffix.lower() != ".png":
        raise UsageError(f"--timeline {path}: the file name must end in .png")
    check_folder(target, "--timeline")
    from ..timeline import MissingMatplotlibError, require_matplotlib

    try:
        require_matplotlib()
    except MissingMatplotlibError as exc:
        raise UsageError(str(exc)) from None
    return target


def check_text_output(path: str | None, flag: str, suffixes: tuple[str, ...]) -> Path | None:
    """A file name with one of ``suffixes`` in a folder that exists (checked now, not after generating)."""
    if path is None:
        return None
    target = output_path(path, flag, f"{flag.lstrip('-')}{suffixes[0]}")
    if target.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {path}: the file name must end in {' or '.join(suffixes)}")
    check_folder(target, flag)
    return target


def _looks_like_path(name: str) -> bool:
    """What hub.resolve_checkpoint would not treat as a hub id ('org/name')."""
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or os.sep != "/" and os.sep in name


def check_source(name: str | None, flag: str, what: str) -> None:
    """A local checkpoint path must exist; hub ids are checked when loading."""
    if name is None or name == DEMO:
        return
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UsageError(f"{flag} {name}: that is a file; pass the {what} directory (with config.json)")
        return
    if _looks_like_path(name):
        hint = " or --model demo for the embedded tiny model" if flag == "--model" else ""
        raise UsageError(
            f"{flag} {name}: no such directory; pass a local {what} directory, a hub id like "
            f"{DEFAULT_MODEL if flag == '--model' else DEFAULT_CODEC}{hint}"
        )


def pick_device(name: str | None) -> str:
    """``--device`` as torch names it, checked against this machine (default: cuda if available, else cpu)."""
    import torch

    from ..loading import default_device

    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name}: not a device name; use cpu, cuda, cuda:0, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available here; use --device cpu")
    return str(device)


@dataclass
class VoiceRequest:
    """A validated --voice: an encoded voice (loaded) or a recording (loaded) + transcript to encode."""

    encoded: Any = None
    audio: Any = None
    sample_rate: int = 0
    text: str = ""
    path: Path | None = None


def check_voice(voice: str | None, voice_text: str | None) -> VoiceRequest | None:
    """``--voice`` and ``--voice-text`` loaded and checked; None when no voice was given."""
    if voice is None:
        if voice_text is not None:
            raise UsageError("--voice-text is the transcript of a --voice recording; pass --voice FILE.wav too")
        return None
    path = Path(voice).expanduser()
    if path.suffix.lower() == ".voice":
        if voice_text is not None:
            raise UsageError("--voice-text is for recordings; a .voice file already holds its transcript")
        if not path.is_file():
            raise UsageError(
                f"--voice {path}: file not found; check the path (make one with `tadastream encode-voice`)"
            )
        from ..codec.encoder import EncoderOutput

        try:
            return VoiceRequest(encoded=EncoderOutput.load(path), path=path)
        except ValueError as exc:  # VoiceFileError: not a voice file; the hint once, where it lacks it
            hint = "" if "encode-voice" in str(exc) else " (make one with `tadastream encode-voice`)"
            raise UsageError(one_line(exc) + hint) from None
        except OSError as exc:
            raise UsageError(f"cannot read voice file {path} ({exc.strerror or exc}); check the path") from None
    return check_recording(path, voice_text, "--voice", "--voice-text")


def check_recording(path: Path, text: str | None, flag: str, text_flag: str) -> VoiceRequest:
    """A readable prompt recording and its (non-empty) transcript."""
    if not path.is_file():
        raise UsageError(f"{flag} {path}: {'that is a folder' if path.is_dir() else 'file not found'}; check the path")
    if text is None:
        raise UsageError(f"{flag} {path} is a recording: pass its transcript with {text_flag} '...' (or use a .voice)")
    text = read_text(text, text_flag)
    from ..audio import AudioError, check_prompt_audio, load_audio, to_mono

    try:
        audio, rate = load_audio(path)
        audio = to_mono(audio)
        check_prompt_audio(audio, rate)
    except AudioError as exc:
        raise UsageError(one_line(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror or exc}); check the file") from None
    return VoiceRequest(audio=audio, sample_rate=rate, text=text, path=path)


def check_language(language: str | None) -> None:
    """A language the aligner has weights for."""
    if language is None:
        return
    from ..codec.encoder import aligner_subfolder  # a heavy import: only when a language is given

    try:
        aligner_subfolder(language)
    except ValueError as exc:
        raise UsageError(f"--language: {one_line(exc)}") from None


def check_player() -> None:
    """Fail now, not after loading a model, when audio cannot be played here."""
    try:
        import sounddevice as sd
    except ImportError:
        raise UsageError(
            "playing audio needs sounddevice: pip install 'tadastream[play]', or write a file with -o out.wav "
            "(or pipe it: -o - | ffplay -nodisp -autoexit -)"
        ) from None
    except OSError as exc:  # sounddevice present, PortAudio library missing
        raise UsageError(
            f"sounddevice cannot load PortAudio ({one_line(exc)}): install it (e.g. apt install libportaudio2), "
            "or write a file with -o out.wav"
        ) from None
    try:
        sd.query_devices(kind="output")
    except Exception as exc:  # noqa: BLE001 - PortAudioError or ValueError, depending on the version
        raise UsageError(
            f"no audio output device found ({one_line(exc)}); write a file with -o out.wav instead"
        ) from None
