"""Voices by name: ``NAME.voice`` files in a folder, the model's default voice, and uploads.

An upload is a ``.voice`` file, or a WAV and its transcript that the server's codec encoder (when
it has one) turns into a voice; either is checked against the model before it is stored.

Names ignore case, as they would on a Windows or macOS disk: ``QA1`` and ``qa1`` are one voice, so
an upload of one when the other exists is a conflict (or, with ``overwrite``, a replacement that
leaves one file). A folder filled by hand on Linux may still hold both; then the exact name picks
one, and any other spelling is refused as ambiguous (409) rather than guessed. ``default`` (any
case) always means the built-in voice; OpenAI's other voice names mean it unless a file is named so.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import SAMPLE_RATE
from ..files import write_atomic
from ..generation import SpeechRequest, plan_generation
from .refusals import RequestRefused

if TYPE_CHECKING:  # the voice store serves without a web framework too (tadastream wyoming)
    pass

VOICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: OpenAI's built-in voice names; they mean "the default voice" unless a file of that name exists.
OPENAI_VOICES = frozenset(
    "alloy ash ballad cedar coral echo fable marin nova onyx sage shimmer verse".split() + ["default"]
)


def check_voice_name(name: str, param: str = "voice") -> str:
    """``name`` if it is a plain voice name (so it can never be a path); else RequestRefused 400."""
    if not isinstance(name, str) or not VOICE_NAME.fullmatch(name):
        raise RequestRefused(
            400,
            "voice names use 1-64 letters, digits, '-' or '_' (no paths or extensions)",
            "invalid_voice_name",
            param,
        )
    return name


def _is_default_name(name: str) -> bool:
    return name.lower() == "default"


def _is_builtin_name(name: str) -> bool:
    return name.lower() in OPENAI_VOICES


def _not_found(name: str) -> RequestRefused:
    return RequestRefused(404, f"voice {name!r} not found", "voice_not_found", "name")


def _encoder_output_class():
    from ..codec.encoder import EncoderOutput

    return EncoderOutput


class VoiceStore:
    """Voices by name: ``NAME.voice`` files in ``directory`` plus the model's default voice."""

    def __init__(self, directory: str | os.PathLike | None, default: Any | None, model, *, cache_size: int = 16):
        self.directory = Path(directory) if directory is not None else None
        self.default = default
        self.model = model
        self._cache: collections.OrderedDict[str, tuple[tuple[int, int], Any]] = collections.OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # the cache
        # Saves and deletes: a check-then-write (conflict, case variants) is one step for this process.
        self._write_lock = threading.Lock()
        self._default_bytes: bytes | None = None

    def _file(self, stem: str) -> Path:
        return self.directory / f"{stem}.voice"

    def _stems(self, name: str) -> list[str]:
        """The stored names of the files that answer to ``name`` in any case (``default`` never does)."""
        if self.directory is None or _is_default_name(name):
            return []
        key = name.lower()
        try:
            entries = os.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        stems = [entry[: -len(".voice")] for entry in entries if entry.lower() == f"{key}.voice"]
        return sorted(stem for stem in stems if VOICE_NAME.fullmatch(stem))

    def find(self, name: str, param: str = "name") -> str | None:
        """The stored name of the file voice ``name`` (any case), or None; the exact spelling wins when
        files differ only by case, any other spelling is then ambiguous (RequestRefused 409)."""
        stems = self._stems(name)
        if name in stems:
            return name
        if len(stems) <= 1:
            return stems[0] if stems else None
        raise RequestRefused(
            409,
            f"voice name {name!r} is ambiguous: the voices folder holds {', '.join(stems)} (names differ only "
            "by case); ask for one by its exact name, or delete the others",
            "ambiguous_voice_name",
            param,
        )

    def list(self) -> list[dict[str, Any]]:
        """The ``GET /v1/voices`` entries: the default voice (if any), then the files by name, each with the
        language of its recording (None where the voice file does not record one)."""
        from ..codec.encoder import voice_language

        voices = []
        if self.default is not None:
            language = getattr(self.default, "language", None)
            voices.append(
                {"id": "default", "object": "voice", "source": "builtin", "default": True, "language": language}
            )
        if self.directory is not None and self.directory.is_dir():
            for path in sorted(self.directory.glob("*.voice")):
                if VOICE_NAME.fullmatch(path.stem) and not _is_default_name(path.stem):
                    voices.append(
                        {
                            "id": path.stem,
                            "object": "voice",
                            "source": "file",
                            "default": False,
                            "language": voice_language(path),
                        }
                    )
        return voices

    def resolve(self, name: str | None) -> Any | None:
        """The prompt for ``name`` (blocking: may read a file). None means "no prompt" (model default)."""
        if name is None or name == "":
            return self.default
        stem = self.find(check_voice_name(name), "voice")
        if stem is not None:
            try:
                return self._load(stem, self._file(stem))
            except FileNotFoundError:  # deleted since it was found: as if it never was
                pass
        if _is_builtin_name(name):
            return self.default
        raise RequestRefused(
            400,
            f"voice {name!r} not found; available: {', '.join(v['id'] for v in self.list()) or '(none)'}",
            "voice_not_found",
            "voice",
        )

    def info(self, name: str) -> dict[str, Any]:
        """The ``GET /v1/voices/{name}`` answer (blocking: reads a file's header): where the voice comes
        from, its language, length, size in bytes and when it was stored (ISO-8601 UTC; the file's
        modification time, which an upload or replacement sets; None for the built-in voice, which has no file)."""
        check_voice_name(name, "name")
        stem = self.find(name)
        if stem is None:
            if not _is_builtin_name(name) or self.default is None:
                raise _not_found(name)
            voice = self.default
            data = self.default_bytes()
            return {
                "id": "default",
                "object": "voice",
                "source": "builtin",
                "default": True,
                "language": getattr(voice, "language", None),
                "seconds": round(voice_seconds(voice), 3),
                "bytes": len(data) if data is not None else None,
                "created": None,
            }
        path = self._file(stem)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise _not_found(name) from None
        language, seconds = _voice_header(path)
        created = datetime.datetime.fromtimestamp(stat.st_mtime, datetime.UTC)
        return {
            "id": stem,
            "object": "voice",
            "source": "file",
            "default": False,
            "language": language,
            "seconds": round(seconds, 3) if seconds is not None else None,
            "bytes": stat.st_size,
            "created": created.isoformat(timespec="seconds").replace("+00:00", "Z"),
        }

    def read(self, name: str) -> tuple[str, bytes]:
        """(stored name, bytes of its ``.voice`` file) for a download; the built-in voice is serialised."""
        check_voice_name(name, "name")
        stem = self.find(name)
        if stem is None:
            data = self.default_bytes() if _is_builtin_name(name) else None
            if data is None:
                raise _not_found(name)
            return "default", data
        try:
            return stem, self._file(stem).read_bytes()
        except FileNotFoundError:
            raise _not_found(name) from None

    def default_bytes(self) -> bytes | None:
        """The built-in voice as a ``.voice`` file (made once), or None without one."""
        if self.default is None or not hasattr(self.default, "save"):
            return None
        if self._default_bytes is None:
            self._default_bytes = voice_bytes(self.default)
        return self._default_bytes

    def delete(self, name: str) -> str:
        """Remove the file voice ``name`` (any case) and its cached copy; its stored name.

        The built-in voice, and OpenAI's names while they mean it, cannot be deleted (403)."""
        check_voice_name(name, "name")
        builtin = RequestRefused(
            403, f"{name!r} is the built-in default voice; it cannot be deleted", "builtin_voice", "name"
        )
        if _is_default_name(name):
            raise builtin
        with self._write_lock:
            stem = self.find(name)
            if stem is None:
                if _is_builtin_name(name):
                    raise builtin
                if self.directory is None:
                    raise _voices_disabled("deleted")
                raise _not_found(name)
            try:
                self._file(stem).unlink()
            except FileNotFoundError:  # removed by hand or another replica meanwhile
                raise _not_found(name) from None
            with self._lock:
                self._cache.pop(stem, None)
        return stem

    def _load(self, name: str, path: Path):
        stat = path.stat()
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None and hit[0] == key:
                self._cache.move_to_end(name)
                return hit[1]
        data = path.read_bytes()
        voice = self.parse(data, max_seconds=None)
        with self._lock:
            self._cache[name] = (key, voice)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return voice

    def parse(self, data: bytes, *, max_seconds: float | None) -> Any:
        """Load and check an encoded voice (bytes of a ``.voice`` file); raises RequestRefused 400.

        ``.voice`` files are safetensors with JSON metadata (no pickle), so an upload cannot run code.
        """
        cls = _encoder_output_class()
        tmp = None
        try:
            with tempfile.NamedTemporaryFile(suffix=".voice", delete=False) as handle:
                handle.write(data)
                tmp = handle.name
            voice = cls.load(tmp)
        except Exception as exc:
            reason = getattr(exc, "reason", None)
            detail = f" ({reason})" if reason else ""
            raise RequestRefused(
                400, f"not a valid .voice file{detail}: create one with `tadastream encode-voice`", "invalid_voice_file"
            ) from None
        finally:
            if tmp is not None:
                os.unlink(tmp)
        self.check(voice, max_seconds)
        return voice

    def check(self, voice, max_seconds: float | None) -> None:
        """Reject voices too long or not matching the model (cheap: plans a generation, no compute)."""
        values = getattr(voice, "token_values", None)
        dim = self.model.config.acoustic_dim
        if not isinstance(values, torch.Tensor) or values.dim() != 3 or values.shape[-1] != dim:
            raise RequestRefused(
                400, f"the voice does not fit this model (expected {dim}-d acoustic tokens)", "voice_mismatch"
            )
        problem = voice.problem() if hasattr(voice, "problem") else None
        tokens = getattr(voice, "text_tokens", None)
        vocab = self.model.config.vocab_size
        if problem is None and isinstance(tokens, torch.Tensor) and tokens.numel() and int(tokens.max()) >= vocab:
            problem = f"text_tokens has ids beyond this model's vocabulary ({vocab})"
        if problem:
            raise RequestRefused(
                400,
                f"the voice is damaged: {problem}; re-encode it with `tadastream encode-voice`",
                "invalid_voice_file",
            )
        if max_seconds is not None:
            seconds = voice_seconds(voice)
            if seconds > max_seconds:
                raise RequestRefused(
                    413, f"the voice is {seconds:.1f} s long; the limit is {max_seconds:g} s", "voice_too_long"
                )
        try:
            plan_generation(self.model, SpeechRequest("Hello.", voice))
        except (ValueError, IndexError, RuntimeError) as exc:  # what a voice can cause; a bug stays a 500
            raise RequestRefused(400, f"the voice cannot be used with this model: {exc}", "voice_mismatch") from None

    def save(self, name: str, voice_bytes: bytes, *, overwrite: bool) -> Path:
        """Store an already checked voice atomically as ``NAME.voice``. With ``overwrite`` it replaces the
        voice of that name in any case, leaving one file spelt as ``name``; without, any case is a 409."""
        if self.directory is None:
            raise uploads_disabled()
        check_voice_name(name, "name")
        if _is_builtin_name(name):
            raise RequestRefused(400, f"{name!r} is reserved for the built-in voice", "invalid_voice_name", "name")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._file(name)
        with self._write_lock:
            stems = self._stems(name)
            if stems and not overwrite:
                spelt = "" if stems == [name] else f" as {', '.join(stems)} (names ignore case)"
                raise RequestRefused(
                    409, f"voice {name!r} exists{spelt}; send overwrite=true to replace it", "voice_exists", "name"
                )
            if stems:
                # New bytes into the existing file, then its new spelling: one file answers to the name throughout.
                first = name if name in stems else stems[0]
                write_atomic(self._file(first), voice_bytes)
                if first != name:
                    os.rename(self._file(first), path)
                for other in stems:
                    if other not in (first, name):
                        self._file(other).unlink(missing_ok=True)
            else:
                write_atomic(path, voice_bytes)
            with self._lock:
                for stem in {*stems, name}:
                    self._cache.pop(stem, None)
        return path


def voice_seconds(voice) -> float:
    """Duration of a voice prompt's audio in seconds (0 when unknown)."""
    rate = float(getattr(voice, "sample_rate", SAMPLE_RATE) or SAMPLE_RATE)
    length = getattr(voice, "audio_len", None)
    if isinstance(length, torch.Tensor) and length.numel():
        return float(length.reshape(-1)[0]) / rate
    audio = getattr(voice, "audio", None)
    return audio.shape[-1] / rate if isinstance(audio, torch.Tensor) else 0.0


def _voices_disabled(what: str) -> RequestRefused:
    """The error for changing voices on a server without a voices folder (the upload error's code)."""
    return RequestRefused(
        403,
        f"voices cannot be {what}: this server has no voices folder (start it with --voices DIR)",
        "uploads_disabled",
    )


def _voice_header(path: Path) -> tuple[str | None, float | None]:
    """(language, seconds) of a ``.voice`` file from its header and its tiny ``audio_len`` tensor, without
    loading or checking the voice; (None, None) for what cannot be read, so its facts can still be shown."""
    from safetensors import safe_open

    from ..scripts import LANGUAGES

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            keys = set(handle.keys())
            if "audio_len" in keys:
                lengths = handle.get_tensor("audio_len").reshape(-1)
                samples = float(lengths[0]) if lengths.numel() else None
            else:
                samples = float(handle.get_slice("audio").get_shape()[-1]) if "audio" in keys else None
        rate = json.loads(metadata.get("sample_rate", "null"))
    except Exception:  # noqa: BLE001 - an unreadable file simply has no known facts
        return None, None
    language = metadata.get("language")
    language = language if language in LANGUAGES else None
    if samples is None or isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        return language, None
    return language, samples / rate


def uploads_disabled() -> RequestRefused:
    return RequestRefused(403, "voice uploads are disabled: start the server with --voices DIR", "uploads_disabled")


def voice_bytes(voice) -> bytes:
    """The ``.voice`` file of ``voice`` (it saves only to a path)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "v.voice")
        voice.save(path)
        with open(path, "rb") as handle:
            return handle.read()
