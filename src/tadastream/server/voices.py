"""Voices by name: ``NAME.voice`` files in a folder, the model's default voice, and uploads.

An upload is a ``.voice`` file, or a WAV and its transcript that the server's codec encoder (when
it has one) turns into a voice; either is checked against the model before it is stored.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..audio import AudioError
from ..config import SAMPLE_RATE
from ..files import write_atomic
from .errors import EngineError
from .settings import ServerSettings

if TYPE_CHECKING:  # the voice store serves without a web framework too (tadastream wyoming)
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

VOICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: OpenAI's built-in voice names; they mean "the default voice" unless a file of that name exists.
OPENAI_VOICES = frozenset(
    "alloy ash ballad cedar coral echo fable marin nova onyx sage shimmer verse".split() + ["default"]
)


def check_voice_name(name: str) -> str:
    """``name`` if it is a plain voice name (so it can never be a path); else EngineError 400."""
    if not isinstance(name, str) or not VOICE_NAME.fullmatch(name):
        raise EngineError(
            400,
            "voice names use 1-64 letters, digits, '-' or '_' (no paths or extensions)",
            "invalid_voice_name",
            "voice",
        )
    return name


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
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{check_voice_name(name)}.voice"

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
                if VOICE_NAME.fullmatch(path.stem) and path.stem != "default":
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
        path = self._path(name)
        if path is not None and path.is_file():
            return self._load(name, path)
        if name in OPENAI_VOICES:
            return self.default
        raise EngineError(
            400,
            f"voice {name!r} not found; available: {', '.join(v['id'] for v in self.list()) or '(none)'}",
            "voice_not_found",
            "voice",
        )

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
        """Load and check an encoded voice (bytes of a ``.voice`` file); raises EngineError 400.

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
            raise EngineError(
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
            raise EngineError(
                400, f"the voice does not fit this model (expected {dim}-d acoustic tokens)", "voice_mismatch"
            )
        problem = voice.problem() if hasattr(voice, "problem") else None
        tokens = getattr(voice, "text_tokens", None)
        vocab = self.model.config.vocab_size
        if problem is None and isinstance(tokens, torch.Tensor) and tokens.numel() and int(tokens.max()) >= vocab:
            problem = f"text_tokens has ids beyond this model's vocabulary ({vocab})"
        if problem:
            raise EngineError(
                400,
                f"the voice is damaged: {problem}; re-encode it with `tadastream encode-voice`",
                "invalid_voice_file",
            )
        if max_seconds is not None:
            seconds = voice_seconds(voice)
            if seconds > max_seconds:
                raise EngineError(
                    413, f"the voice is {seconds:.1f} s long; the limit is {max_seconds:g} s", "voice_too_long"
                )
        try:
            from ..generation import plan_generation

            plan_generation(self.model, voice, "Hello.")
        except Exception as exc:
            raise EngineError(400, f"the voice cannot be used with this model: {exc}", "voice_mismatch") from None

    def save(self, name: str, voice_bytes: bytes, *, overwrite: bool) -> Path:
        """Store an already checked voice atomically as ``NAME.voice``."""
        path = self._path(name)
        if path is None:
            raise _uploads_disabled()
        if name in OPENAI_VOICES:
            raise EngineError(400, f"{name!r} is reserved for the built-in voice", "invalid_voice_name", "name")
        if path.exists() and not overwrite:
            raise EngineError(409, f"voice {name!r} exists; send overwrite=true to replace it", "voice_exists", "name")
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(path, voice_bytes)
        with self._lock:
            self._cache.pop(name, None)
        return path


def voice_seconds(voice) -> float:
    """Duration of a voice prompt's audio in seconds (0 when unknown)."""
    rate = float(getattr(voice, "sample_rate", SAMPLE_RATE) or SAMPLE_RATE)
    length = getattr(voice, "audio_len", None)
    if isinstance(length, torch.Tensor) and length.numel():
        return float(length.reshape(-1)[0]) / rate
    audio = getattr(voice, "audio", None)
    return audio.shape[-1] / rate if isinstance(audio, torch.Tensor) else 0.0


def _uploads_disabled() -> EngineError:
    return EngineError(403, "voice uploads are disabled: start the server with --voices DIR", "uploads_disabled")


@dataclasses.dataclass
class _Upload:
    """What a ``POST /v1/voices`` request sent, before any check."""

    name: str
    overwrite: bool
    voice_bytes: bytes | None = None
    audio_bytes: bytes | None = None
    transcript: str | None = None


def _flag(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


async def _read_upload(request: Request) -> _Upload:
    """multipart: ``name`` + ``file`` (.voice) or ``audio`` (WAV) + ``transcript``; or raw .voice bytes
    with ``?name=`` and Content-Type application/octet-stream. ``overwrite=true`` replaces."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/octet-stream":
        params = request.query_params
        return _Upload(params.get("name", ""), _flag(params.get("overwrite", "")), voice_bytes=await request.body())
    if content_type != "multipart/form-data":
        raise EngineError(
            415,
            "send multipart/form-data (name + file, or name + audio + transcript) "
            "or application/octet-stream with ?name=",
            "unsupported_media_type",
        )
    try:
        form = await request.form(max_files=2, max_fields=8, max_part_size=64 * 1024)
    except AssertionError:  # Starlette's way of saying python-multipart is missing
        raise EngineError(
            501,
            "multipart uploads need python-multipart: pip install 'tadastream[server]'",
            "multipart_unavailable",
        ) from None
    upload = _Upload(str(form.get("name") or ""), _flag(str(form.get("overwrite") or "")))
    file, audio = form.get("file"), form.get("audio")
    upload.voice_bytes = await file.read() if hasattr(file, "read") else None
    if audio is not None and hasattr(audio, "read"):
        upload.audio_bytes = await audio.read()
        upload.transcript = str(form.get("transcript") or "")
    await form.close()
    return upload


async def save_voice_upload(app: FastAPI, request: Request) -> JSONResponse:
    """``POST /v1/voices``: check the upload (encoding a WAV first), then store it as ``NAME.voice``."""
    from fastapi.responses import JSONResponse

    settings: ServerSettings = app.state.settings
    store: VoiceStore = app.state.voices
    if store.directory is None:
        raise _uploads_disabled()
    upload = await _read_upload(request)
    check_voice_name(upload.name)
    if upload.voice_bytes is None and upload.audio_bytes is None:
        raise EngineError(
            400, "send a .voice file as 'file', or a WAV as 'audio' with its 'transcript'", "missing_file", "file"
        )
    for data in (upload.voice_bytes, upload.audio_bytes):
        if data is not None and len(data) > settings.max_voice_bytes:
            raise EngineError(413, f"the upload is larger than {settings.max_voice_bytes} bytes", "voice_too_large")
    if upload.voice_bytes is not None:
        voice_bytes = upload.voice_bytes
        voice = await asyncio.to_thread(store.parse, voice_bytes, max_seconds=settings.max_voice_seconds)
    else:
        voice, voice_bytes = await _encode_voice(app, upload.audio_bytes, upload.transcript)
    await asyncio.to_thread(store.save, upload.name, voice_bytes, overwrite=upload.overwrite)
    body = {"id": upload.name, "object": "voice", "source": "file", "seconds": round(voice_seconds(voice), 3)}
    return JSONResponse(body, status_code=201)


async def _encode_voice(app: FastAPI, audio_bytes: bytes, transcript: str | None) -> tuple[Any, bytes]:
    """(voice, its .voice bytes) for an uploaded WAV and its transcript, made by the server's encoder."""
    from ..audio import check_prompt_audio, load_audio, to_mono

    encoder = app.state.encoder
    settings: ServerSettings = app.state.settings
    if encoder is None:
        raise EngineError(
            415,
            "this server has no codec encoder, so it cannot turn audio into a voice: run "
            "`tadastream encode-voice` and upload the .voice file as 'file'",
            "encoder_unavailable",
            "audio",
        )
    if not transcript or not transcript.strip():
        raise EngineError(400, "send the 'transcript' of the audio with it", "missing_transcript", "transcript")
    try:
        audio, rate = load_audio(audio_bytes)
        audio = to_mono(audio)
        check_prompt_audio(audio, rate)
    except AudioError as exc:
        raise EngineError(400, str(exc), "invalid_audio", "audio") from None
    seconds = audio.shape[-1] / rate
    if seconds > settings.max_voice_seconds:
        raise EngineError(
            413,
            f"the audio is {seconds:.1f} s long; the limit is {settings.max_voice_seconds:g} s",
            "voice_too_long",
            "audio",
        )

    def encode(generator: torch.Generator):
        with torch.inference_mode():
            return encoder(audio, text=transcript.strip(), sample_rate=rate, generator=generator)

    try:
        # The encoder draws noise: from a generator seeded for this upload (seed 0), never the global one.
        voice = await asyncio.wrap_future(app.state.service.run(encode))
    except ValueError as exc:  # AudioError, TranscriptError: the message says what to fix
        raise EngineError(400, f"could not encode this audio: {exc}", "encoding_failed", "audio") from None
    app.state.voices.check(voice, settings.max_voice_seconds)
    data = await asyncio.to_thread(_voice_bytes, voice)
    return voice, data


def _voice_bytes(voice) -> bytes:
    """The ``.voice`` file of ``voice`` (it saves only to a path)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "v.voice")
        voice.save(path)
        with open(path, "rb") as handle:
            return handle.read()
