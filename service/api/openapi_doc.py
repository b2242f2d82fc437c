"""The OpenAPI description beyond what FastAPI derives from the routes.

FastAPI writes paths, parameters and the bodies of the routes. What a generator or a linter
needs besides lives here, in one pass over the document: problem+json for every error with the
kinds of problem the API can return, the headers it sends (``X-Request-ID`` everywhere,
``Idempotent-Replayed`` on a replayed create, ``Retry-After`` on 429 and 503), the Server-Sent
Events of ``streamCaseEvents`` and the signed webhooks (OpenAPI 3.1 ``webhooks``) as schemas, and
an example on every schema and every response. tests/api/test_openapi.py validates each example
against its schema and lints the result with Redocly in CI.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import models_json_schema

from service import errors as e
from service.api.problems import PROBLEM_JSON, problem_type
from service.api.schemas import EXAMPLE_CASE, CasePublic, EventPublic
from service.domain.states import CaseOutcome, CaseState
from service.domain.timeline import WebhookEventType

REF = "#/components/schemas/{model}"

# --- the live timeline -------------------------------------------------------------------------------


class StreamEnd(BaseModel):
    """The data of the stream's last event, ``end``: the case is terminal and the stream closes."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"state": "resolved", "outcome": "unblocked"}]})

    state: CaseState
    outcome: CaseOutcome | None


class CaseStreamEvent(BaseModel):
    """One Server-Sent Event of ``streamCaseEvents``, field by field as SSE frames it (``data`` is JSON)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": "42", "event": "state.changed", "data": EventPublic.model_json_schema()["examples"][0]},
                {"id": None, "event": "end", "data": {"state": "resolved", "outcome": "unblocked"}},
            ]
        }
    )

    id: str | None = Field(description="the timeline event's id (resume with Last-Event-ID); none on `end`")
    event: str = Field(description="the timeline event's type (an EventType), or `end`")
    data: EventPublic | StreamEnd


STREAM_EXAMPLE = (
    "id: 41\nevent: step.succeeded\n"
    'data: {"id": 41, "at": "2026-11-26T09:00:02.100000Z", "actor": "worker", "type": "step.succeeded", '
    '"from_state": null, "to_state": null, "step": "unblock", "detail": {"attempt": 1}}\n\n'
    ": keep-alive\n\n"
    'event: end\ndata: {"state": "resolved", "outcome": "unblocked"}\n\n'
)

# --- webhooks ----------------------------------------------------------------------------------------


class StateChange(BaseModel):
    """The timeline's state change, as case.state_changed carries it."""

    model_config = ConfigDict(
        populate_by_name=True,
        extra="allow",
        json_schema_extra={"examples": [{"from": "unblocking", "to": "verifying", "reason": "unblocked"}]},
    )

    from_: CaseState = Field(alias="from")
    to: CaseState
    reason: str | None = None


class SenderRestricted(BaseModel):
    """A sender newly on the restricted list that no open case covers."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sender_address": "ann@contoso.com",
                    "reason": "EmailSendingLimitExceeded;InternalRecipientCountToday=0;"
                    "ExternalRecipientCountToday=500;ExceedingLimitType=External",
                    "blocked_at": "2026-11-26T08:02:11Z",
                    "changed_at": "2026-11-26T08:02:11Z",
                    "temporary_block": False,
                }
            ]
        }
    )

    sender_address: str
    reason: str
    blocked_at: datetime | None
    changed_at: datetime | None
    temporary_block: bool


def _data_model(name: str, example: dict[str, Any], **fields: Any) -> type[BaseModel]:
    return create_model(name, __config__=ConfigDict(json_schema_extra={"examples": [example]}), **fields)


_CASE = {"case": EXAMPLE_CASE}
_CHANGE = {"from": "awaiting_propagation", "to": "resolved", "reason": "sending restored"}
CaseData = _data_model("CaseWebhookData", _CASE, case=(CasePublic, ...))
CaseStateChangedData = _data_model(
    "CaseStateChangedData", {**_CASE, "change": _CHANGE}, case=(CasePublic, ...), change=(StateChange, ...)
)
CredentialRevealedData = _data_model(
    "CredentialRevealedData",
    {**_CASE, "revealed_by": "servicedesk", "revealed_at": "2026-11-26T09:05:00Z"},
    case=(CasePublic, ...),
    revealed_by=(str, Field(description="the API key or person who revealed it")),
    revealed_at=(datetime, ...),
)
SenderRestrictedData = _data_model(
    "SenderRestrictedData",
    {"sender": SenderRestricted.model_json_schema()["examples"][0], "tenant": "default"},
    sender=(SenderRestricted, ...),
    tenant=(str, Field(description="the tenant whose restricted list it is on")),
)

#: What each webhook event's ``data`` holds, and what it says.
WEBHOOK_DATA: dict[WebhookEventType, tuple[type[BaseModel], str]] = {
    WebhookEventType.case_created: (CaseData, "A case was opened (by the API or by discovery)."),
    WebhookEventType.case_state_changed: (CaseStateChangedData, "A case moved from one state to another."),
    WebhookEventType.case_resolved: (CaseData, "A case ended resolved (unblocked, or not restricted)."),
    WebhookEventType.case_failed: (CaseData, "A case ended failed."),
    WebhookEventType.case_escalated: (CaseData, "A case stopped for a person (escalated)."),
    WebhookEventType.credential_revealed: (CredentialRevealedData, "The temporary password was revealed (once)."),
    WebhookEventType.sender_restricted: (SenderRestrictedData, "Discovery found a newly restricted sender."),
}


def _camel(value: str) -> str:
    parts = value.replace(".", "_").split("_")
    return "".join(p[:1].upper() + p[1:] for p in parts)


def _envelopes() -> dict[WebhookEventType, type[BaseModel]]:
    out: dict[WebhookEventType, type[BaseModel]] = {}
    for event, (data, _) in WEBHOOK_DATA.items():
        example = {
            "type": event.value,
            "timestamp": "2026-11-26T09:00:03Z",
            "data": data.model_json_schema()["examples"][0],
        }
        out[event] = create_model(
            f"{_camel(event.value)}Event",
            __config__=ConfigDict(json_schema_extra={"examples": [example]}),
            type=(Literal[event.value], Field(description="the event type")),  # type: ignore[arg-type]
            timestamp=(datetime, Field(description="when it happened")),
            data=(data, ...),
        )
    return out


ENVELOPES = _envelopes()

#: Standard Webhooks' signature headers (https://www.standardwebhooks.com), sent with every delivery.
WEBHOOK_HEADERS: list[dict[str, Any]] = [
    {
        "name": "webhook-id",
        "in": "header",
        "required": True,
        "description": "the delivery's message id: the same on every retry of it (deduplicate on it)",
        "schema": {"type": "string"},
        "example": "msg_2b7Lk9cQe1Jv",
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "description": "seconds since the epoch when this attempt was signed (refuse old ones)",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
        "example": "1764147603",
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "description": "`v1,<base64 HMAC-SHA256 of id.timestamp.body>` under the subscription's `whsec_` secret, "
        "space-separated when the secret is being rotated",
        "schema": {"type": "string"},
        "example": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    },
]


def _webhooks() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for event, envelope in ENVELOPES.items():
        _, description = WEBHOOK_DATA[event]
        out[event.value] = {
            "post": {
                "operationId": f"on{_camel(event.value)}",
                "summary": event.value,
                "description": f"{description} Signed as Standard Webhooks specifies; answer 2xx within 10 s, "
                "else the delivery is retried with backoff.",
                "tags": ["webhooks"],
                "security": [],
                "parameters": copy.deepcopy(WEBHOOK_HEADERS),
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": REF.format(model=envelope.__name__)}}},
                },
                "responses": {
                    "204": {"description": "received (any 2xx will do)"},
                    "400": {"description": "refused: the signature or timestamp did not verify; not retried"},
                },
            }
        }
    return out


# --- problems ---------------------------------------------------------------------------------------


def _service_codes() -> set[str]:
    found: set[str] = set()
    pending: list[type[e.ServiceError]] = [e.ServiceError]
    while pending:
        cls = pending.pop()
        found.add(cls.code)
        pending.extend(cls.__subclasses__())
    return found


#: Codes the HTTP layer itself answers with (service/api/errors.py), besides the service's errors.
HTTP_CODES = {
    "invalid_input",
    "bad_request",
    "not_found",
    "method_not_allowed",
    "not_acceptable",
    "payload_too_large",
    "unsupported_media_type",
    "http_error",
    "internal_error",
    "not_ready",  # GET /readyz (service/api/routes/health.py)
}


def problem_types() -> list[str]:
    """Every ``type`` a problem from this API can carry."""
    return sorted(problem_type(code) for code in _service_codes() | HTTP_CODES)


class FieldError(BaseModel):
    """One reason a request was refused (422 ``invalid_input``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"field": "mailbox", "message": "value is not a valid address", "type": "value_error"}]
        }
    )

    field: str = Field(description="where: `mailbox`, `actions.reset_password`, `query.limit`...")
    message: str
    type: str = Field(description="the validator's name for the failure")


_PROBLEM_EXTRAS: dict[str, Any] = {
    "case_id": {"type": "string", "description": "409 open_case_exists: the open case for this mailbox"},
    "field": {"type": "string", "description": "the input at fault (422, idempotency_key_reused included)"},
    "domain": {"type": "string", "description": "422 foreign_mailbox: the domain that is not accepted"},
    "errors": {
        "type": "array",
        "items": {"$ref": REF.format(model="FieldError")},
        "description": "422 invalid_input: every field at fault",
    },
}

#: An example problem for each status the description names.
_PROBLEM_EXAMPLES: dict[str, dict[str, Any]] = {
    "400": {
        "type": "/problems/bad_request",
        "title": "Bad request",
        "status": 400,
        "detail": "There was an error parsing the body",
    },
    "401": {
        "type": "/problems/unauthenticated",
        "title": "No valid credential.",
        "status": 401,
        "detail": "missing or invalid bearer token",
    },
    "403": {
        "type": "/problems/forbidden",
        "title": "The credential lacks a scope.",
        "status": 403,
        "detail": "this operation needs the scope cases:write",
    },
    "404": {
        "type": "/problems/case_not_found",
        "title": "No such case.",
        "status": 404,
        "detail": "no case 01jd8v6k0s3x4y5z6a7b8c9d0e",
    },
    "409": {
        "type": "/problems/open_case_exists",
        "title": "The mailbox already has an open case.",
        "status": 409,
        "detail": "rob@contoso.com already has an open case",
        "case_id": "01jd8v6k0s3x4y5z6a7b8c9d0e",
    },
    "410": {
        "type": "/problems/credential_gone",
        "title": "The temporary password is gone.",
        "status": 410,
        "detail": "the temporary password was revealed already",
    },
    "413": {
        "type": "/problems/payload_too_large",
        "title": "Request body too large",
        "status": 413,
        "detail": "Request body too large",
    },
    "422": {
        "type": "/problems/invalid_input",
        "title": "The request is not valid.",
        "status": 422,
        "detail": "mailbox: value is not a valid address",
        "errors": [{"field": "mailbox", "message": "value is not a valid address", "type": "value_error"}],
    },
    "429": {
        "type": "/problems/rate_limited",
        "title": "Too many requests.",
        "status": 429,
        "detail": "rate limit 60/minute exceeded",
    },
    "503": {
        "type": "/problems/unavailable",
        "title": "The service is unavailable.",
        "status": 503,
        "detail": "the database is unavailable",
    },
}
_PROBLEM_EXAMPLE_DEFAULT = {"type": "/problems/conflict", "title": "Conflict.", "status": 409, "detail": "conflict"}

# --- headers ---------------------------------------------------------------------------------------

REQUEST_ID_HEADER = {
    "description": "this request's id (the one you sent, or a new one); quote it when asking for help",
    "schema": {"type": "string"},
}
ETAG_HEADER = {
    "description": "the case's entity tag: send it back as `If-None-Match` to get 304 while it is unchanged",
    "schema": {"type": "string", "pattern": '^"[0-9a-f]{32}"$'},
}
REPLAYED_HEADER = {
    "description": "`true` when this is the stored response of an earlier request with the same Idempotency-Key",
    "schema": {"type": "string", "enum": ["true"]},
}

# --- examples of the schemas FastAPI derives -----------------------------------------------------------

_STEP = EXAMPLE_CASE["steps"][0]
_EVENT = EventPublic.model_json_schema()["examples"][0]
_EXAMPLES: dict[str, Any] = {
    "ActionsIn": {"reset_password": True, "revoke_sessions": True, "remove_forwarding": False},
    "ActionsPublic": EXAMPLE_CASE["actions"],
    "FindingPublic": EXAMPLE_CASE["findings"][0],
    "RestrictionPublic": EXAMPLE_CASE["restriction"],
    "ErrorPublic": {
        "code": "unblock_limit_exceeded",
        "message": "the unblock limit for today is reached",
        "retryable": False,
    },
    "StepPublic": _STEP,
    "CredentialPublic": EXAMPLE_CASE["credential"],
    "CasesPage": {"items": [EXAMPLE_CASE], "next_cursor": None},
    "EventsPage": {"items": [_EVENT]},
    "Health": {"status": "ok"},
    "Readiness": {"status": "ok", "checks": {"database": "ok"}},
    "SenderPublic": {
        "sender_address": "rob@contoso.com",
        "reason": EXAMPLE_CASE["restriction"]["reason"],
        "blocked_at": "2026-11-26T08:02:11Z",
        "changed_at": "2026-11-26T08:02:11Z",
        "temporary_block": False,
    },
    "Problem": _PROBLEM_EXAMPLES["404"],
}


def _first_example(schema: dict[str, Any]) -> Any:
    examples = schema.get("examples")
    return examples[0] if isinstance(examples, list) and examples else None


def _add_components(components: dict[str, Any], models: list[type[BaseModel]]) -> None:
    _, defs = models_json_schema([(m, "serialization") for m in models], ref_template=REF)
    for name, schema in defs.get("$defs", {}).items():
        components.setdefault(name, schema)


def _models() -> dict[str, type[BaseModel]]:
    """Every model class by name (the component names FastAPI gives them)."""
    found: dict[str, type[BaseModel]] = {}
    pending = list(BaseModel.__subclasses__())
    while pending:
        model = pending.pop()
        if model.__module__.startswith("service."):
            found.setdefault(model.__name__, model)
        pending.extend(model.__subclasses__())
    return found


def _examples(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    models = _models()
    for name, component in components.items():
        # FastAPI encodes the whole document with exclude_none, which takes every null out of the
        # examples and leaves them breaking their own schemas: put the models' own examples back.
        model = models.get(name)
        if model is not None and "examples" in component:
            component["examples"] = model.model_json_schema(ref_template=REF).get("examples", component["examples"])
    for name, component in components.items():
        if "examples" not in component and name in _EXAMPLES:
            component["examples"] = [_EXAMPLES[name]]
        if "examples" not in component and "enum" in component:
            component["examples"] = [component["enum"][0]]
        if "examples" not in component and name.endswith("Page"):
            item = (component.get("properties", {}).get("items", {}).get("items") or {}).get("$ref", "")
            found = _first_example(components.get(item.rsplit("/", 1)[-1], {}))
            if found is not None:
                component["examples"] = [{"items": [found]}]
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                for media_type, media in response.get("content", {}).items():
                    if "example" in media or "examples" in media:
                        continue
                    if media_type == PROBLEM_JSON:
                        media["example"] = _PROBLEM_EXAMPLES.get(
                            code, {**_PROBLEM_EXAMPLE_DEFAULT, "status": int(code)}
                        )
                        continue
                    ref = (media.get("schema") or {}).get("$ref", "")
                    found = _first_example(components.get(ref.rsplit("/", 1)[-1], {}))
                    if found is not None:
                        media["example"] = found


def complete(schema: dict[str, Any]) -> dict[str, Any]:
    """Everything above, applied to the document FastAPI built (once, when it is first asked for)."""
    schema["info"]["license"] = {"name": "MIT", "identifier": "MIT"}
    schema["info"]["contact"] = {"name": "unblock-service", "url": "https://github.com/unblock-service/unblock-service"}
    schema["servers"] = [
        {"url": "http://127.0.0.1:8000", "description": "`unblock serve`'s default address; use your deployment's"}
    ]
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    _add_components(components, [StreamEnd, CaseStreamEvent, FieldError, *ENVELOPES.values()])
    types = problem_types()
    components["ProblemType"] = {
        "type": "string",
        "enum": types,
        # Generators cannot name a member after "/problems/x" and would number them by position.
        "x-enum-varnames": [t.rsplit("/", 1)[-1].upper() for t in types],
        "description": "every kind of problem this API answers with (`/problems/<code>`)",
        "examples": ["/problems/case_not_found"],
    }
    problem = components["Problem"]
    problem["properties"]["type"] = {"$ref": REF.format(model="ProblemType")}
    problem["properties"].update(copy.deepcopy(_PROBLEM_EXTRAS))
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            if not path.startswith("/v1"):
                operation.setdefault("security", [])
                # The body limit is checked before routing, on every path (service/api/middleware.py).
                operation["responses"].setdefault(
                    "413",
                    {
                        "description": "the request body is larger than UNBLOCK_MAX_BODY_BYTES",
                        "content": {PROBLEM_JSON: {"schema": {"$ref": REF.format(model="Problem")}}},
                    },
                )
            for code, response in operation.get("responses", {}).items():
                headers = response.setdefault("headers", {})
                headers.setdefault("X-Request-ID", REQUEST_ID_HEADER)
                if operation.get("operationId") == "createCase" and code.startswith("2"):
                    headers.setdefault("Idempotent-Replayed", REPLAYED_HEADER)
                if operation.get("operationId") == "getCase" and code in ("200", "304"):
                    headers.setdefault("ETag", ETAG_HEADER)
    schema["webhooks"] = _webhooks()
    _examples(schema)
    return schema
