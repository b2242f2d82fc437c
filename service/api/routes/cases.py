"""/v1/cases: open, read, list, follow, approve, cancel, retry, reveal (contract section 4)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse

from service.api import live
from service.api.auth import Principal, requires, scope_doc
from service.api.deps import RuntimeDep
from service.api.live import resume_from, wants_stream
from service.api.operations import open_case
from service.api.problems import COMMON_PROBLEMS, problem_doc
from service.api.schemas import (
    CaseCreate,
    CasePublic,
    CasesPage,
    CaseStateName,
    EventsPage,
    RevealedCredential,
)
from service.domain import decide as rules
from service.logging import get_logger
from service.persistence import cases, credentials
from service.persistence.records import case_document, event_document
from service.runtime import Runtime
from service.security.sealing import Sealed, Sealer

router = APIRouter(prefix="/v1/cases", tags=["cases"])
log = get_logger(__name__)

CaseId = Annotated[
    str, Path(pattern=r"^[0-9a-z]{26}$", description="the case id", examples=["01jd8v6k0s3x4y5z6a7b8c9d0e"])
]
_NO_CONTROLS = r"^[^\x00-\x1f\x7f]*$"
_IDEMPOTENCY = re.compile(r"^[\x21-\x7e]{1,255}$")
DOMAIN_CACHE_SECONDS = 300.0

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: problem_doc("no case has this id")}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: problem_doc("the case cannot do that from its current state (see `allowed_states`)")
}


GONE: dict[int | str, dict[str, Any]] = {410: problem_doc("already revealed, or expired unrevealed")}
REVEAL_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: problem_doc("no case has this id, or the case has no temporary password (no reset asked for, or it failed)")
}
NOT_READY: dict[int | str, dict[str, Any]] = {409: problem_doc("the password reset has not run yet")}


def _location(case_id: str) -> str:
    return f"/v1/cases/{case_id}"


@router.post(
    "",
    status_code=201,
    summary="Open a case",
    description=(
        "Opens an unblock case for one restricted mailbox and starts it at once. Requires `cases:write`.\n\n"
        "Send an `Idempotency-Key` to make retries safe: the same key with the same body replays the original "
        "response; the same key with another body is 422. A mailbox that already has an open case is 409 "
        "with its `case_id`."
    ),
    response_model=CasePublic,
    responses={
        201: {"description": "the case, with `Location`", "headers": {"Location": {"schema": {"type": "string"}}}},
        409: problem_doc("this mailbox already has an open case (`case_id` names it)"),
        **COMMON_PROBLEMS,
    },
    openapi_extra=scope_doc("cases:write"),
)
async def create_case(
    body: CaseCreate,
    runtime: RuntimeDep,
    principal: Annotated[Principal, requires("cases:write")],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="makes a retried create safe: 1-255 visible ASCII characters",
            pattern=r"^[\x21-\x7e]{1,255}$",
        ),
    ] = None,
) -> JSONResponse:
    stored = await open_case(runtime, body, actor=principal.actor, principal_id=principal.id, key=idempotency_key)
    headers = {"Location": stored.location or ""}
    if stored.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(stored.body, status_code=stored.status_code, headers=headers)


@router.get(
    "/{case_id}",
    summary="Get a case",
    description="The case with its steps, restriction and credential status. Requires `cases:read`.",
    response_model=CasePublic,
    responses={**NOT_FOUND, **COMMON_PROBLEMS},
    openapi_extra=scope_doc("cases:read"),
)
async def get_case(
    case_id: CaseId, runtime: RuntimeDep, request: Request, _: Annotated[Principal, requires("cases:read")]
) -> JSONResponse:
    request.state.case_id = case_id
    return JSONResponse(case_document(await cases.get_case(runtime.db, case_id=case_id)))


@router.get(
    "",
    summary="List cases",
    description="Newest first, filtered; page with `cursor`. Requires `cases:read`.",
    response_model=CasesPage,
    responses=COMMON_PROBLEMS,
    openapi_extra=scope_doc("cases:read"),
)
async def list_cases(
    runtime: RuntimeDep,
    _: Annotated[Principal, requires("cases:read")],
    state: Annotated[CaseStateName | None, Query(description="only cases in this state")] = None,
    mailbox: Annotated[str | None, Query(max_length=320, pattern=_NO_CONTROLS)] = None,
    ticket_ref: Annotated[str | None, Query(max_length=128, pattern=_NO_CONTROLS)] = None,
    open_: Annotated[bool | None, Query(alias="open", description="true: not yet terminal; false: terminal")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_-]*$")] = None,
) -> JSONResponse:
    items, next_cursor = await cases.list_cases(
        runtime.db,
        state=state,
        mailbox=mailbox.strip().lower() if mailbox else None,
        ticket_ref=ticket_ref,
        is_open=open_,
        limit=limit,
        cursor=cursor,
    )
    return JSONResponse({"items": [case_document(c) for c in items], "next_cursor": next_cursor})


@router.get(
    "/{case_id}/events",
    summary="The case's timeline (JSON, or live as Server-Sent Events)",
    description=(
        "Every change, oldest first, with its actor. Requires `cases:read`.\n\n"
        "With `Accept: text/event-stream` the response is a live stream: each timeline event as an SSE event "
        "(`id` = the event id, `event` = its type, `data` = the event as JSON), ending with an `end` event once the "
        "case is terminal. Reconnect with `Last-Event-ID` to resume."
    ),
    response_model=EventsPage,
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **NOT_FOUND,
        **COMMON_PROBLEMS,
    },
    openapi_extra=scope_doc("cases:read"),
)
async def case_events(
    request: Request,
    case_id: CaseId,
    runtime: RuntimeDep,
    _: Annotated[Principal, requires("cases:read")],
    after: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="only events with a larger id")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
) -> Any:
    events = await cases.list_events(runtime.db, case_id=case_id, after_id=after)
    # The Accept header picks the representation (content negotiation), so it is not a parameter.
    if wants_stream(request.headers.get("accept")):
        return live.stream(runtime, case_id, resume_from(last_event_id, after))
    return JSONResponse({"items": [event_document(e) for e in events]})


_EVENT = {"approve": "case.approved", "cancel": "case.cancelled", "retry": "case.retried"}


async def _act(runtime: Runtime, case_id: str, principal: Principal, kind: str) -> CasePublic:
    now = runtime.clock()
    deciders = {
        "approve": lambda c: rules.approve(c.view(), now),
        "cancel": lambda c: rules.cancel(c.view()),
        "retry": lambda c: rules.retry(c.view(), now),
    }
    case = await cases.apply_user_action(
        runtime.db, case_id=case_id, decide=deciders[kind], actor=principal.actor, now=now, event_type=_EVENT[kind]
    )
    runtime.work.notify()
    runtime.events.publish(case_id)
    log.info(f"case_{kind}", case_id=case_id, to_state=case.state)
    return CasePublic.of(case)


@router.post(
    "/{case_id}/approve",
    summary="Approve the unblock",
    description="From `awaiting_approval` only, else 409. Requires `cases:approve`.",
    response_model=CasePublic,
    responses={**NOT_FOUND, **CONFLICT, **COMMON_PROBLEMS},
    openapi_extra=scope_doc("cases:approve"),
)
async def approve(
    case_id: CaseId, runtime: RuntimeDep, principal: Annotated[Principal, requires("cases:approve")]
) -> CasePublic:
    return await _act(runtime, case_id, principal, "approve")


@router.post(
    "/{case_id}/cancel",
    summary="Cancel the case",
    description="Before the unblock starts, else 409. Requires `cases:write`.",
    response_model=CasePublic,
    responses={**NOT_FOUND, **CONFLICT, **COMMON_PROBLEMS},
    openapi_extra=scope_doc("cases:write"),
)
async def cancel(
    case_id: CaseId, runtime: RuntimeDep, principal: Annotated[Principal, requires("cases:write")]
) -> CasePublic:
    return await _act(runtime, case_id, principal, "cancel")


@router.post(
    "/{case_id}/retry",
    summary="Retry a failed or escalated case",
    description="Resumes at the step that stopped it. From `failed` or `escalated`, else 409. Requires `cases:write`.",
    response_model=CasePublic,
    responses={**NOT_FOUND, **CONFLICT, **COMMON_PROBLEMS},
    openapi_extra=scope_doc("cases:write"),
)
async def retry(
    case_id: CaseId, runtime: RuntimeDep, principal: Annotated[Principal, requires("cases:write")]
) -> CasePublic:
    return await _act(runtime, case_id, principal, "retry")


@router.post(
    "/{case_id}/credential/reveal",
    summary="Reveal the temporary password (once)",
    description=(
        "Returns the temporary password exactly once and destroys it; afterwards, or after "
        "`UNBLOCK_CREDENTIAL_TTL`, 410. 409 while the reset has not run yet; 404 when the case has no "
        "temporary password (no reset was asked for, or it failed). Requires `credentials:reveal`. Give it to "
        "the user by phone or in person, never by e-mail."
    ),
    tags=["credentials"],
    response_model=RevealedCredential,
    responses={**REVEAL_NOT_FOUND, **NOT_READY, **GONE, **COMMON_PROBLEMS},
    openapi_extra=scope_doc("credentials:reveal"),
)
async def reveal(
    case_id: CaseId, runtime: RuntimeDep, principal: Annotated[Principal, requires("credentials:reveal")]
) -> JSONResponse:
    sealed, expires_at = await credentials.take_for_reveal(
        runtime.db, case_id=case_id, actor=principal.actor, now=runtime.clock()
    )
    password = Sealer(runtime.settings.secret_keys).open(Sealed(sealed.key_id, sealed.blob), context=case_id)
    runtime.events.publish(case_id)
    log.info("credential_revealed", case_id=case_id, revealed_by=principal.actor)
    body = RevealedCredential(password=password, expires_at=expires_at).model_dump(mode="json")
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
