"""problem+json responses (RFC 9457) and their OpenAPI description."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

PROBLEM_JSON = "application/problem+json"


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
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_doc(description: str) -> dict[str, Any]:
    """An OpenAPI ``responses`` entry for a problem+json answer."""
    return {"description": description, "model": Problem, "content": {PROBLEM_JSON: {}}}


COMMON_PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: problem_doc("no valid API key or bearer token"),
    403: problem_doc("the credential lacks the scope this operation needs"),
    422: problem_doc("the request is not valid"),
    429: problem_doc("too many requests for this key; see Retry-After"),
    503: problem_doc("the database or the PowerShell endpoint is unavailable"),
}
