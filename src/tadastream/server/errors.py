"""Errors as OpenAI sends them: JSON ``{"error": {"message", "type", "code", "param"}}``.

The service's :class:`~tadastream.service.refusals.RequestRefused` becomes such an error here;
this module imports no web framework at load time (WebSocket messages use :func:`error_body`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from ..service.refusals import RequestRefused

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    501: "server_error",
    503: "server_overloaded",
}


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The JSON error object, also sent as a WebSocket ``error`` message."""
    return {
        "error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "code": code, "param": param}
    }


def error_response(
    status: int, message: str, code: str | None = None, param: str | None = None, retry_after: float = 0
) -> JSONResponse:
    """The error as an HTTP response, with ``Retry-After`` (busy) or ``WWW-Authenticate`` (401)."""
    from fastapi.responses import JSONResponse  # here, not at the top: see the module docstring

    headers = {"Retry-After": str(int(retry_after))} if retry_after else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(error_body(status, message, code, param), status_code=status, headers=headers)


def refusal_response(exc: RequestRefused) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.code, exc.param, exc.retry_after)


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """(message, param) for FastAPI's first body validation error, without pydantic's internals."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    where = ".".join(loc) or "body"
    return f"{where}: {first.get('msg', 'invalid value')}", where
