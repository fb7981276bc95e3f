"""The voice routes: ``/v1/voices`` over the app's :class:`~tadastream.server.voices.VoiceStore`."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .voices import save_voice_upload


def add_voice_routes(app: FastAPI) -> None:
    """``GET /v1/voices`` and ``POST /v1/voices`` on ``app`` (whose ``state.voices`` is the store)."""

    @app.get("/v1/voices")
    async def list_voices() -> dict[str, Any]:
        return {"object": "list", "data": await asyncio.to_thread(app.state.voices.list)}

    @app.post("/v1/voices", status_code=201)
    async def upload_voice(request: Request) -> JSONResponse:
        return await save_voice_upload(app, request)
