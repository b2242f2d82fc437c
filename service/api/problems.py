"""problem+json responses (RFC 9457) and their OpenAPI description."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

PROBLEM_JSON = "application/problem+json"
#: Seconds a client should wait after a 503 that knows no better (a database or dependency outage).
UNAVAILABLE_RETRY_AFTER = 5


class Problem(BaseModel):
    """An error, as RFC 9457 describes it; extra members name what went wrong."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="a URI reference naming the kind of problem", examples=["/problems/case_not_found"])
    title: str = Field(description="short summary of the kind of problem")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what happened this time")
    instance: str | None = Field(default=None, description="the request path")
    request_id: str | None = Field(default=None, description="quote this when asking for help")


def problem_type(code: str) -> str:
    return f"/problems/{code}"


def problem_response(
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    instance: str | None = None,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if request_id:
        body["request_id"] = request_id
    body.update({k: v for k, v in extra.items() if v is not None})
    if status == 503 and not any(name.lower() == "retry-after" for name in headers or {}):
        # Every 503 says when to come back, so clients pace their retries instead of hammering.
        headers = {**(headers or {}), "Retry-After": str(UNAVAILABLE_RETRY_AFTER)}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


RETRY_AFTER_HEADER: dict[str, Any] = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def problem_doc(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    """An OpenAPI ``responses`` entry for a problem+json answer (with its Retry-After header for 429/503)."""
    doc: dict[str, Any] = {"description": description, "model": Problem, "content": {PROBLEM_JSON: {}}}
    if retry_after:
        doc["headers"] = RETRY_AFTER_HEADER
    return doc


COMMON_PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: problem_doc("no valid API key or bearer token"),
    403: problem_doc("the credential lacks the scope this operation needs"),
    422: problem_doc("the request is not valid"),
    429: problem_doc("too many requests for this key", retry_after=True),
    503: problem_doc("the database is unavailable or did not answer in time", retry_after=True),
}
