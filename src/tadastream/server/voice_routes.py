"""The voice routes: ``/v1/voices`` over the app's :class:`~tadastream.service.voices.VoiceStore`.

The routes carry their summaries, descriptions and error examples, so ``/docs`` and ``/openapi.json``
tell a client what each answers without reading this code.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ..service import VoiceStore
from .voice_uploads import save_voice_upload


class VoiceInfo(BaseModel):
    """``GET /v1/voices/{name}``: one voice's facts."""

    id: str = Field(description="the stored name (its spelling on disk), or 'default' for the built-in voice")
    object: str = "voice"
    source: str = Field(description="'file' (a NAME.voice in the voices folder) or 'builtin'")
    default: bool = Field(description="whether this is the built-in default voice")
    language: str | None = Field(description="language of the recording, where the voice file records it")
    seconds: float | None = Field(description="length of the voice's recording in seconds")
    bytes: int | None = Field(description="size of the .voice file in bytes")
    created: str | None = Field(description="when the file was stored (its modification time), ISO-8601 UTC")


class VoiceDeleted(BaseModel):
    """``DELETE /v1/voices/{name}``, shaped as OpenAI's delete answers."""

    id: str
    object: str = "voice"
    deleted: bool = True


def _error(status: int, code: str, message: str, param: str | None = "name") -> dict[str, Any]:
    """An OpenAPI response entry with an example of the server's JSON error."""
    from .errors import error_body

    return {
        "description": message,
        "content": {"application/json": {"example": error_body(status, message, code, param)}},
    }


_NAME = Path(description="the voice's name: 1-64 letters, digits, '-' or '_', in any case")
_BAD_NAME = _error(400, "invalid_voice_name", "voice names use 1-64 letters, digits, '-' or '_'")
_NOT_FOUND = _error(404, "voice_not_found", "voice 'nobody' not found")
_AMBIGUOUS = _error(
    409, "ambiguous_voice_name", "the folder holds voices whose names differ only by case, and none is spelt so"
)
_EXAMPLE_INFO = {
    "id": "narrator",
    "object": "voice",
    "source": "file",
    "default": False,
    "language": "en",
    "seconds": 9.42,
    "bytes": 1874321,
    "created": "2025-01-31T12:00:00Z",
}

_GET_DESCRIPTION = """\
The voice's facts as JSON, or with `?download=true` its `.voice` file (`application/octet-stream`,
`Content-Disposition: attachment; filename="NAME.voice"`), which `POST /v1/voices` takes back as
`file`. Names ignore case (`Narrator` finds `narrator.voice`). `default`, and OpenAI's voice names
(`alloy`, ...) unless a file is named so, answer with the built-in voice (its download is that voice
serialised; its `created` is null). `created` is the file's modification time, which an upload sets.
"""

_DELETE_DESCRIPTION = """\
Removes `NAME.voice` (found in any case) from the voices folder and from the server's cache; requests
already speaking with it finish. The built-in voice cannot be deleted, nor OpenAI's names while they
mean it; a server started without `--voices DIR` has nothing to delete (403).
"""


def add_voice_routes(app: FastAPI) -> None:
    """``/v1/voices`` (list, upload) and ``/v1/voices/{name}`` (facts or download, delete) on ``app``
    (whose ``state.voices`` is the store)."""

    def store() -> VoiceStore:
        return app.state.voices

    @app.get("/v1/voices", summary="List voices")
    async def list_voices() -> dict[str, Any]:
        """The built-in default voice (if any), then every ``NAME.voice`` in the voices folder."""
        return {"object": "list", "data": await asyncio.to_thread(store().list)}

    @app.post("/v1/voices", status_code=201, summary="Upload a voice")
    async def upload_voice(request: Request) -> JSONResponse:
        """multipart ``name`` + ``file`` (a ``.voice``) or ``name`` + ``audio`` (WAV) + ``transcript``;
        or raw ``.voice`` bytes as application/octet-stream with ``?name=``. ``overwrite=true`` replaces
        a voice of that name in any case (409 without it)."""
        return await save_voice_upload(app, request)

    @app.get(
        "/v1/voices/{name}",
        summary="Get a voice, or download its .voice file",
        description=_GET_DESCRIPTION,
        response_model=None,
        responses={
            200: {
                "description": "the voice's facts, or with ?download=true its .voice file",
                "model": VoiceInfo,
                "content": {
                    "application/json": {"example": _EXAMPLE_INFO},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            400: _BAD_NAME,
            404: _NOT_FOUND,
            409: _AMBIGUOUS,
        },
    )
    async def get_voice(
        name: str = _NAME,
        download: bool = Query(False, description="send the .voice file instead of its facts"),
    ) -> Response:
        if not download:
            return JSONResponse(await asyncio.to_thread(store().info, name))
        stem, data = await asyncio.to_thread(store().read, name)
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"content-disposition": f'attachment; filename="{stem}.voice"'},  # stem: [A-Za-z0-9_-]
        )

    @app.delete(
        "/v1/voices/{name}",
        summary="Delete a voice",
        description=_DELETE_DESCRIPTION,
        response_model=VoiceDeleted,
        responses={
            200: {"content": {"application/json": {"example": {"id": "narrator", "object": "voice", "deleted": True}}}},
            400: _BAD_NAME,
            403: _error(403, "builtin_voice", "'default' is the built-in default voice; it cannot be deleted"),
            404: _NOT_FOUND,
            409: _AMBIGUOUS,
        },
    )
    async def delete_voice(name: str = _NAME) -> VoiceDeleted:
        stem = await asyncio.to_thread(store().delete, name)
        return VoiceDeleted(id=stem)
