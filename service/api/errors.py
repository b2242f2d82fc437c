"""The one place where errors become HTTP: every path out is problem+json.

Routes raise :class:`~service.errors.ServiceError` subclasses (never HTTPException); the table
below gives each its status. Validation errors, unknown routes and wrong methods are mapped
here too, and anything unexpected becomes a 500 that names the request id and nothing else.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import errors as e
from service.api.problems import problem_response
from service.logging import get_logger

log = get_logger(__name__)

#: Most specific first.
STATUS_BY_ERROR: tuple[tuple[type[e.ServiceError], int], ...] = (
    (e.Unauthenticated, 401),
    (e.Forbidden, 403),
    (e.NotFound, 404),
    (e.Conflict, 409),
    (e.Gone, 410),
    (e.InvalidInput, 422),
    (e.RateLimited, 429),
    (e.Unavailable, 503),
    (e.TransientError, 503),
    (e.BridgeError, 502),
)

_HTTP_CODES = {
    400: ("bad_request", "Bad request"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    413: ("payload_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


def status_for(error: e.ServiceError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 500


def _title(error: e.ServiceError) -> str:
    doc = (type(error).__doc__ or "").strip().splitlines()
    return doc[0] if doc else type(error).__name__


def _request_id(request: Request) -> str | None:
    value = getattr(request.state, "request_id", None)
    return str(value) if value else None


async def _service_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, e.ServiceError)
    status = status_for(error)
    headers: dict[str, str] = {}
    if isinstance(error, e.Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="unblock-service"'
    if isinstance(error, e.RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if isinstance(error, e.BridgeError) and error.retry_after:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if status >= 500:
        log.warning("request_failed", error_class=type(error).__name__, detail=error.message, status=status)
    extra: dict[str, Any] = {k: v for k, v in error.context.items() if k not in {"type", "title", "status"}}
    return problem_response(
        status=status,
        code=error.code,
        title=_title(error),
        detail=error.message,
        instance=request.url.path,
        request_id=_request_id(request),
        headers=headers or None,
        **extra,
    )


def _loc(parts: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in parts if p not in ("body",)) or "body"


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = [
        {
            "field": _loc(item.get("loc", ())),
            "message": str(item.get("msg", "")),
            "type": str(item.get("type", "")),
        }
        for item in error.errors()
    ]
    first = problems[0] if problems else {"field": "body", "message": "invalid"}
    return problem_response(
        status=422,
        code="invalid_input",
        title="The request is not valid.",
        detail=f"{first['field']}: {first['message']}",
        instance=request.url.path,
        request_id=_request_id(request),
        errors=problems,
    )


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    code, title = _HTTP_CODES.get(error.status_code, ("http_error", "HTTP error"))
    detail = error.detail if isinstance(error.detail, str) else title
    return problem_response(
        status=error.status_code,
        code=code,
        title=title,
        detail=detail,
        instance=request.url.path,
        request_id=_request_id(request),
        headers=dict(error.headers) if error.headers else None,
    )


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    log.error("request_crashed", error_class=type(error).__name__, exc_info=error)
    return problem_response(
        status=500,
        code="internal_error",
        title="Internal error",
        detail="the service failed unexpectedly; the request id identifies the log lines",
        instance=request.url.path,
        request_id=_request_id(request),
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(e.ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
