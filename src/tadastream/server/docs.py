"""The API docs pages (Swagger UI at ``/docs``, ReDoc at ``/redoc``), served with no CDN.

Their scripts come from the ``fastapi-offline`` package's static folder, so the pages open on a
machine without internet. With an API key a browser cannot send a Bearer header when it opens a
page, so ``/docs`` shows a login form: the key, posted once, sets an HttpOnly cookie that opens
the docs pages and the schema (nothing under ``/v1``: "Try it out" still needs "Authorize").
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import html
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .errors import error_response

DOCS_COOKIE = "tadastream_docs"
#: What the docs cookie opens, besides the docs pages' own assets (which hold nothing secret).
DOCS_PAGES = frozenset({"/docs", "/redoc", "/openapi.json"})
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
}
_LOGIN_FORM_LIMIT = 4096


def docs_token(api_key: str) -> str:
    """The cookie value for ``api_key``: derived from it, so a leaked cookie does not reveal the key
    and a new key (a restart with another ``--api-key``) ends every docs session."""
    return hmac.new(api_key.encode(), b"tadastream docs cookie", hashlib.sha256).hexdigest()


def cookie_authorized(api_key: str, cookie_header: str | None) -> bool:
    """Whether the request's ``Cookie`` header carries the docs cookie for ``api_key``."""
    if not cookie_header:
        return False
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except Exception:  # a malformed Cookie header is simply no docs cookie
        return False
    morsel = jar.get(DOCS_COOKIE)
    return morsel is not None and hmac.compare_digest(morsel.value.encode(), docs_token(api_key).encode())


def _next_page(value: str | None) -> str:
    """Where to go after logging in: one of the docs pages, never another site."""
    return value if value in ("/docs", "/redoc") else "/docs"


def login_page(next_page: str, *, wrong: bool = False, status: int = 401) -> HTMLResponse:
    """The form a browser sees at a docs page of a server with a key."""
    note = '<p class="wrong">That key is not this server\'s.</p>' if wrong else ""
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>tadastream API docs</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem}}
input{{font:inherit;width:100%;box-sizing:border-box;padding:.4rem;margin:.4rem 0 1rem}}.wrong{{color:#b00}}</style>
</head><body><h1>API docs</h1><p>This server needs its API key. Enter it once; this browser keeps a
cookie that opens the docs pages (calls from "Try it out" still need <em>Authorize</em>).</p>{note}
<form method="post" action="/docs/login"><label>API key<input type="password" name="api_key"
autocomplete="current-password" required autofocus></label>
<input type="hidden" name="next" value="{html.escape(_next_page(next_page))}"><button>Open the docs</button></form>
</body></html>"""
    return HTMLResponse(body, status_code=status, headers={"cache-control": "no-store"})


def add_docs_routes(app: FastAPI, api_key: str | None) -> None:
    """``/docs``, ``/redoc``, their assets under ``/docs/assets/``, and with a key ``/docs/login``."""
    title = f"{app.title} API"

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/favicon.ico",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            redoc_js_url="/docs/assets/redoc.standalone.js",
            redoc_favicon_url="/favicon.ico",
            with_google_fonts=False,
        )

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in _ASSETS:
            return error_response(404, f"no docs asset {name!r}", "not_found")
        try:
            data = _asset_bytes(name)
        except ModuleNotFoundError:
            return error_response(
                501, "the docs pages need the fastapi-offline package: pip install 'tadastream[server]'", "no_docs"
            )
        return Response(data, media_type=_ASSETS[name], headers={"cache-control": "max-age=86400"})

    if api_key:
        _add_login(app, api_key)
    _shape_schema(app, api_key)


@functools.cache
def _asset_bytes(name: str) -> bytes:
    """A docs asset (1-2 MB), read once per process instead of from disk, on the event loop, per request."""
    return resources.files("fastapi_offline").joinpath("static", name).read_bytes()


def _add_login(app: FastAPI, api_key: str) -> None:
    @app.post("/docs/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > _LOGIN_FORM_LIMIT:
                return error_response(413, f"login form larger than {_LOGIN_FORM_LIMIT} bytes", "body_too_large")
        form = parse_qs(raw.decode("utf-8", "replace"))
        given, next_page = (form.get("api_key") or [""])[0], _next_page((form.get("next") or [None])[0])
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            return login_page(next_page, wrong=True)
        response = RedirectResponse(next_page, status_code=303)
        response.set_cookie(
            DOCS_COOKIE,
            docs_token(api_key),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response


def _shape_schema(app: FastAPI, api_key: str | None) -> None:
    """The schema as the server behaves: a refused body is a 400 with the OpenAI error object (not
    FastAPI's 422), and with a key the key is declared, so Swagger UI offers "Authorize"."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    responses = operation.get("responses", {})
                    if responses.pop("422", None) is not None:
                        responses.setdefault("400", _ERROR_RESPONSE)
            components = schema.setdefault("components", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
            if api_key:
                components.setdefault("securitySchemes", {})["bearer"] = {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the server's --api-key",
                }
                schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


_ERROR_RESPONSE = {
    "description": "The request is invalid: the OpenAI error object says which field and why.",
    "content": {
        "application/json": {
            "example": {
                "error": {
                    "message": "speed: Input should be a valid number",
                    "type": "invalid_request_error",
                    "code": "invalid_request",
                    "param": "speed",
                }
            }
        }
    },
}
