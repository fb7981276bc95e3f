"""``POST /v1/voices``: an upload (a ``.voice`` file, or a WAV and its transcript that the server's
encoder turns into a voice) read, checked against the model, and stored in the
:class:`~tadastream.service.voices.VoiceStore`."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from ..audio import AudioError
from ..service.refusals import RequestRefused
from ..service.voices import VoiceStore, check_voice_name, uploads_disabled, voice_bytes, voice_seconds
from .settings import ServerSettings

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse


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
        raise RequestRefused(
            415,
            "send multipart/form-data (name + file, or name + audio + transcript) "
            "or application/octet-stream with ?name=",
            "unsupported_media_type",
        )
    try:
        form = await request.form(max_files=2, max_fields=8, max_part_size=64 * 1024)
    except AssertionError:  # Starlette's way of saying python-multipart is missing
        raise RequestRefused(
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
        raise uploads_disabled()
    upload = await _read_upload(request)
    check_voice_name(upload.name, "name")
    if upload.voice_bytes is None and upload.audio_bytes is None:
        raise RequestRefused(
            400, "send a .voice file as 'file', or a WAV as 'audio' with its 'transcript'", "missing_file", "file"
        )
    for data in (upload.voice_bytes, upload.audio_bytes):
        if data is not None and len(data) > settings.max_voice_bytes:
            raise RequestRefused(413, f"the upload is larger than {settings.max_voice_bytes} bytes", "voice_too_large")
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
        raise RequestRefused(
            415,
            "this server has no codec encoder, so it cannot turn audio into a voice: run "
            "`tadastream encode-voice` and upload the .voice file as 'file'",
            "encoder_unavailable",
            "audio",
        )
    if not transcript or not transcript.strip():
        raise RequestRefused(400, "send the 'transcript' of the audio with it", "missing_transcript", "transcript")
    try:
        audio, rate = load_audio(audio_bytes)
        audio = to_mono(audio)
        check_prompt_audio(audio, rate)
    except AudioError as exc:
        raise RequestRefused(400, str(exc), "invalid_audio", "audio") from None
    seconds = audio.shape[-1] / rate
    if seconds > settings.max_voice_seconds:
        raise RequestRefused(
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
        raise RequestRefused(400, f"could not encode this audio: {exc}", "encoding_failed", "audio") from None
    app.state.voices.check(voice, settings.max_voice_seconds)
    data = await asyncio.to_thread(voice_bytes, voice)
    return voice, data
