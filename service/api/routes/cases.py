"""/v1/cases: open, read, list, follow, approve, cancel, retry, reveal (contract section 4)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse

from service.api import live
from service.api.auth import Principal, requires, scope_doc, still_valid
from service.api.deps import RuntimeDep
from service.api.etag import etag_of, none_match
from service.api.live import resume_from, wants_stream
from service.api.openapi_doc import STREAM_EXAMPLE
from service.api.operations import open_case
from service.api.problems import COMMON_PROBLEMS, problem_doc
from service.api.schemas import (
    CaseCreate,
    CasePublic,
    CasesPage,
    EventsPage,
    RevealedCredential,
)
from service.domain import decide as rules
from service.domain import timeline
from service.domain.audit import Actor
from service.domain.decide import CaseView, Decision
from service.domain.states import CaseState
from service.domain.timeline import CaseChange, UserAction
from service.errors import CaseNotFound
from service.logging import get_logger
from service.persistence import credentials, snapshots
from service.persistence.records import CaseSnapshot, case_document, event_document, render_document
from service.persistence.writer import change_case
from service.runtime import Runtime
from service.security.sealing import Sealed, Sealer

router = APIRouter(prefix="/v1/cases", tags=["cases"])
log = get_logger(__name__)

CaseId = Annotated[
    str, Path(pattern=r"^[0-9a-z]{26}$", description="the case id", examples=["01jd8v6k0s3x4y5z6a7b8c9d0e"])
]
_NO_CONTROLS = r"^[^\x00-\x1f\x7f]*$"

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: problem_doc("no case has this id")}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: problem_doc("the case cannot do that from its current state (see `allowed_states`)")
}


GONE: dict[int | str, dict[str, Any]] = {410: problem_doc("already revealed, or expired unrevealed")}
REVEAL_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: problem_doc("no case has this id, or the case has no temporary password (no reset asked for, or it failed)")
}
NOT_READY: dict[int | str, dict[str, Any]] = {409: problem_doc("the password reset has not run yet")}


@router.post(
    "",
    status_code=201,
    summary="Open a case",
    description=(
        "Opens an unblock case for one restricted mailbox and starts it at once. Requires `cases:write`. "
        "The answer is the case as committed: `securing_account` with its password reset running when the "
        "worker in the serving process took it in the same transaction, otherwise `received`.\n\n"
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
    stored = await open_case(
        runtime,
        body,
        actor=principal.actor,
        principal_id=principal.id,
        principal_kind=principal.kind,
        key=idempotency_key,
        scope=principal.tenants,
    )
    headers = {"Location": stored.location or ""}
    if stored.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(stored.body, status_code=stored.status_code, headers=headers)


@router.get(
    "/{case_id}",
    summary="Get a case",
    description="The case with its steps, restriction and credential status. Requires `cases:read`.",
    response_model=CasePublic,
    responses={
        304: {"description": "not modified: the case is still what the `If-None-Match` tag names; no body"},
        **NOT_FOUND,
        **COMMON_PROBLEMS,
    },
    openapi_extra=scope_doc("cases:read"),
)
async def get_case(
    case_id: CaseId,
    runtime: RuntimeDep,
    request: Request,
    principal: Annotated[Principal, requires("cases:read")],
    if_none_match: Annotated[
        str | None,
        Header(
            alias="If-None-Match",
            max_length=1024,
            description="the `ETag` of the copy you hold: 304 with no body while the case is unchanged",
        ),
    ] = None,
) -> Response:
    request.state.case_id = case_id
    tenant, body = await snapshots.get_document(runtime.db, case_id=case_id)
    if not principal.sees(tenant):  # another tenant's case does not exist for this credential
        raise CaseNotFound(f"no case has id {case_id}", case_id=case_id)
    tag = etag_of(body)
    # private: a case is one tenant's business; no-cache: a cache must ask again (with the tag) each time
    headers = {"ETag": tag, "Cache-Control": "private, no-cache"}
    if none_match(if_none_match, tag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


async def visible_case(runtime: Runtime, case_id: str, principal: Principal) -> None:
    """404 unless the case exists and this credential may see its tenant (another tenant's case does
    not exist for it). Reads the tenant alone: the callers read what they need themselves."""
    if not principal.sees(await snapshots.tenant_of(runtime.db, case_id=case_id)):
        raise CaseNotFound(f"no case has id {case_id}", case_id=case_id)


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
    principal: Annotated[Principal, requires("cases:read")],
    state: Annotated[CaseState | None, Query(description="only cases in this state")] = None,
    mailbox: Annotated[str | None, Query(max_length=320, pattern=_NO_CONTROLS)] = None,
    ticket_ref: Annotated[str | None, Query(max_length=128, pattern=_NO_CONTROLS)] = None,
    open_: Annotated[bool | None, Query(alias="open", description="true: not yet terminal; false: terminal")] = None,
    tenant: Annotated[
        str | None, Query(max_length=32, pattern=r"^[a-z0-9-]+$", description="only this tenant's cases")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_-]*$")] = None,
) -> Response:
    items, next_cursor = await snapshots.list_documents(
        runtime.db,
        state=state,
        mailbox=mailbox.strip().lower() if mailbox else None,
        ticket_ref=ticket_ref,
        is_open=open_,
        tenant=tenant,
        within=principal.tenants,
        limit=limit,
        cursor=cursor,
    )
    # The stored documents as they are, joined into the page (parsing and re-encoding them would cost
    # more than the query).
    body = b'{"items":[' + b",".join(items) + b'],"next_cursor":' + render_document(next_cursor) + b"}"
    return Response(body, media_type="application/json")


@router.get(
    "/{case_id}/events",
    summary="The case's timeline",
    description=(
        "Every change, oldest first, with its actor. Requires `cases:read`. For the same events live, "
        "use `GET /v1/cases/{case_id}/events/stream` (this path also streams when asked with "
        "`Accept: text/event-stream`, as it always has)."
    ),
    response_model=EventsPage,
    responses={**NOT_FOUND, **COMMON_PROBLEMS},
    openapi_extra=scope_doc("cases:read"),
)
async def case_events(
    request: Request,
    case_id: CaseId,
    runtime: RuntimeDep,
    principal: Annotated[Principal, requires("cases:read")],
    after: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="only events with a larger id")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
) -> Any:
    await visible_case(runtime, case_id, principal)
    # Clients written before the stream had its own path ask for it here with Accept; they keep it.
    if wants_stream(request.headers.get("accept")):
        return live.stream(runtime, case_id, resume_from(last_event_id, after), lambda: still_valid(request))
    events = await snapshots.list_events(runtime.db, case_id=case_id, after_id=after)
    return JSONResponse({"items": [event_document(e) for e in events]})


@router.get(
    "/{case_id}/events/stream",
    summary="The case's timeline, live (Server-Sent Events)",
    description=(
        "A `text/event-stream`: first the events after `after` (or `Last-Event-ID`), then each new one as it "
        "happens, as SSE events (`id` = the event id, `event` = its type, `data` = the event as JSON, the "
        "`EventPublic` schema). Once the case is terminal a last event named `end` carries "
        '`{"state", "outcome"}` (`StreamEnd`) and the stream closes. Comment lines (`: keep-alive`) keep idle '
        "connections open. Reconnect with `Last-Event-ID` to resume where the stream stopped. Requires "
        "`cases:read`."
    ),
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "The live timeline; each event is a `CaseStreamEvent`.",
            "content": {
                "text/event-stream": {
                    # The frames are text; decoded, each is a CaseStreamEvent (contentSchema annotates that).
                    "schema": {
                        "type": "string",
                        "description": "SSE frames, each a `CaseStreamEvent`",
                        "contentMediaType": "text/event-stream",
                        "contentSchema": {"$ref": "#/components/schemas/CaseStreamEvent"},
                    },
                    "example": STREAM_EXAMPLE,
                }
            },
        },
        **NOT_FOUND,
        **COMMON_PROBLEMS,
    },
    openapi_extra=scope_doc("cases:read"),
)
async def stream_case_events(
    request: Request,
    case_id: CaseId,
    runtime: RuntimeDep,
    principal: Annotated[Principal, requires("cases:read")],
    after: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="only events with a larger id")] = None,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=32, description="resume after this event id")
    ] = None,
) -> EventSourceResponse:
    await visible_case(runtime, case_id, principal)  # 404 before the stream starts
    return live.stream(runtime, case_id, resume_from(last_event_id, after), lambda: still_valid(request))


_DECIDERS: dict[UserAction, Callable[[CaseView, datetime], Decision]] = {
    UserAction.approve: rules.approve,
    UserAction.cancel: lambda case, _now: rules.cancel(case),
    UserAction.retry: rules.retry,
}


async def _act(runtime: Runtime, case_id: str, principal: Principal, action: UserAction) -> JSONResponse:
    """Approve, cancel or retry: decided on the case as it is when written (one writer, one policy)."""
    await visible_case(runtime, case_id, principal)
    now = runtime.clock()
    actor = principal.audit_actor

    def build(case: CaseSnapshot) -> CaseChange:
        if action is UserAction.approve:
            rules.check_four_eyes(
                case.opened_by,
                Actor(principal.kind, principal.id, principal.name),
                allow_self=runtime.settings.approval_allow_self,
            )
        decision = _DECIDERS[action](case.view(), now)
        return timeline.person_decided(decision, before=case.state, action=action, actor=actor, mailbox=case.mailbox)

    written = await change_case(runtime.db, case_id=case_id, build=build, now=now, signer=runtime.audit_signer)
    if written is None:
        raise AssertionError("a person's action always writes a change")
    runtime.work.notify()
    runtime.events.publish(case_id)
    log.info(f"case_{action.value}", case_id=case_id, to_state=written.case.state.value)
    return JSONResponse(case_document(written.case))


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
) -> JSONResponse:
    return await _act(runtime, case_id, principal, UserAction.approve)


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
) -> JSONResponse:
    return await _act(runtime, case_id, principal, UserAction.cancel)


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
) -> JSONResponse:
    return await _act(runtime, case_id, principal, UserAction.retry)


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
    await visible_case(runtime, case_id, principal)
    sealed, expires_at = await credentials.take_for_reveal(
        runtime.db, case_id=case_id, actor=principal.audit_actor, signer=runtime.audit_signer, now=runtime.clock()
    )
    password = Sealer(runtime.settings.secret_keys).open(Sealed(sealed.key_id, sealed.blob), context=case_id)
    runtime.events.publish(case_id)
    log.info("credential_revealed", case_id=case_id, revealed_by=principal.actor)
    body = RevealedCredential(password=password, expires_at=expires_at).model_dump(mode="json")
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
