"""/ui: a read-only dashboard, server-rendered with Jinja2 and a little JavaScript.

A person signs in with an API key that has ``cases:read``; the page keeps a session cookie
(HttpOnly, SameSite=Strict) holding the key's id, an expiry and an HMAC, never the key. Pages
show open cases (state, age, ticket, next action, last error), a case with its timeline, which
follows the case live over Server-Sent Events, and the restricted-sender list (with
``senders:read``). There is nothing to change from here: cases are steered through the API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from service.api.live import resume_from
from service.api.live import stream as live_stream
from service.domain.states import TERMINAL_STATES
from service.errors import CaseNotFound, ServiceError
from service.persistence import cases
from service.persistence import keys as key_rows
from service.persistence.records import CaseSnapshot
from service.runtime import Runtime
from service.security.keys import matches, prefix_of

HERE = FilePath(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(prefix="/ui", include_in_schema=False)

COOKIE = "unblock_session"
SESSION_SECONDS = 8 * 3600


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _session_key(runtime: Runtime) -> bytes:
    return hmac.new(runtime.settings.secret_keys[0], b"unblock-ui-session", hashlib.sha256).digest()


def _sign(runtime: Runtime, key_id: str, expires: int) -> str:
    body = f"{key_id}.{expires}"
    mac = hmac.new(_session_key(runtime), body.encode(), hashlib.sha256).digest()
    return f"{body}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def _unsign(runtime: Runtime, token: str) -> str | None:
    try:
        key_id, expires, _ = token.split(".")
    except ValueError:
        return None
    if not hmac.compare_digest(_sign(runtime, key_id, int(expires) if expires.isdigit() else 0), token):
        return None
    if int(expires) < time.time():
        return None
    return key_id


async def _viewer(request: Request) -> tuple[str, frozenset[str]] | None:
    """The signed-in key's name and scopes, or None (no session, expired, revoked, no cases:read)."""
    runtime = _runtime(request)
    key_id = _unsign(runtime, request.cookies.get(COOKIE, ""))
    if key_id is None:
        return None
    record = await key_rows.get_key(runtime.db, key_id=key_id)
    if record is None or not record.usable(runtime.clock()) or "cases:read" not in record.scopes:
        return None
    request.state.principal = f"ui:{record.name}"
    return record.name, frozenset(record.scopes)


def _age(now: datetime, then: datetime) -> str:
    seconds = int((now - then).total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d"


def _row(case: CaseSnapshot, now: datetime) -> dict[str, Any]:
    return {
        "id": case.id,
        "mailbox": case.mailbox,
        "state": case.state,
        "outcome": case.outcome,
        "ticket": case.ticket_ref or "",
        "age": _age(now, case.created_at),
        "next_action": case.next_action_at.strftime("%Y-%m-%d %H:%M:%S UTC") if case.next_action_at else "",
        "last_error": (case.last_error or {}).get("message", ""),
    }


def _login(request: Request, error: str | None = None, status: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, "login.html", {"error": error}, status_code=status)


@router.get("/login")
async def login_page(request: Request) -> HTMLResponse:
    return _login(request)


@router.post("/login")
async def login(request: Request, key: Annotated[str, Form(max_length=200)]) -> Response:
    runtime = _runtime(request)
    prefix = prefix_of(key.strip())
    record = await key_rows.find_by_prefix(runtime.db, prefix=prefix) if prefix else None
    if record is None or not matches(key.strip(), record.key_hash) or not record.usable(runtime.clock()):
        return _login(request, "That key is not valid.", 401)
    if "cases:read" not in record.scopes:
        return _login(request, "That key lacks the cases:read scope.", 403)
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(
        COOKIE,
        _sign(runtime, record.id, int(time.time()) + SESSION_SECONDS),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
    )
    return response


@router.post("/logout")
async def logout() -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


async def _cases_context(runtime: Runtime) -> dict[str, Any]:
    now = runtime.clock()
    open_cases, _ = await cases.list_cases(runtime.db, is_open=True, limit=200)
    closed, _ = await cases.list_cases(runtime.db, is_open=False, limit=20)
    return {
        "open_cases": [_row(c, now) for c in open_cases],
        "closed_cases": [_row(c, now) for c in closed],
        "now": now.strftime("%H:%M:%S UTC"),
    }


async def _senders(runtime: Runtime, scopes: frozenset[str]) -> dict[str, Any]:
    if "senders:read" not in scopes:
        return {"senders": None, "senders_note": "Sign in with a key that has senders:read to see the list."}
    cached = runtime.senders_cache
    if cached is not None and time.monotonic() - cached[0] < 30:
        return {"senders": cached[1]["items"], "senders_note": None}
    if runtime.gateway is None:
        return {"senders": None, "senders_note": "No PowerShell endpoint is configured."}
    try:
        listed = await runtime.gateway.list_restrictions()
    except ServiceError as error:
        return {"senders": None, "senders_note": f"The tenant did not answer: {error.message}"}
    items = [
        {
            "sender_address": r.sender_address,
            "reason": r.reason,
            "blocked_at": r.blocked_at.isoformat() if r.blocked_at else None,
            "changed_at": r.changed_at.isoformat() if r.changed_at else None,
            "temporary_block": r.temporary_block,
        }
        for r in listed
    ]
    runtime.senders_cache = (time.monotonic(), {"items": items, "fetched_at": runtime.clock().isoformat()})
    return {"senders": items, "senders_note": None}


@router.get("")
async def index(request: Request) -> Response:
    viewer = await _viewer(request)
    if viewer is None:
        return RedirectResponse("/ui/login", status_code=303)
    runtime = _runtime(request)
    context = {"viewer": viewer[0], **await _cases_context(runtime), **await _senders(runtime, viewer[1])}
    return templates.TemplateResponse(request, "index.html", context)


@router.get("/partials/cases")
async def cases_partial(request: Request) -> Response:
    if await _viewer(request) is None:
        return Response(status_code=401)
    return templates.TemplateResponse(request, "_cases.html", await _cases_context(_runtime(request)))


UiCaseId = Annotated[str, Path(pattern=r"^[0-9a-z]{26}$")]


@router.get("/cases/{case_id}")
async def case_page(request: Request, case_id: UiCaseId) -> Response:
    viewer = await _viewer(request)
    if viewer is None:
        return RedirectResponse("/ui/login", status_code=303)
    runtime = _runtime(request)
    try:
        case = await cases.get_case(runtime.db, case_id=case_id)
    except CaseNotFound:
        return templates.TemplateResponse(request, "missing.html", {"case_id": case_id}, status_code=404)
    events = await cases.list_events(runtime.db, case_id=case_id)
    context = {
        "viewer": viewer[0],
        "case": case,
        "row": _row(case, runtime.clock()),
        "events": events,
        "last_event_id": events[-1].id if events else 0,
        "terminal": case.state in TERMINAL_STATES,
    }
    return templates.TemplateResponse(request, "case.html", context)


@router.get("/cases/{case_id}/stream")
async def case_stream(
    request: Request, case_id: UiCaseId, after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0
) -> Response:
    if await _viewer(request) is None:
        return Response(status_code=401)
    runtime = _runtime(request)
    try:
        await cases.get_case(runtime.db, case_id=case_id)
    except CaseNotFound:
        return Response(status_code=404)
    return live_stream(runtime, case_id, resume_from(request.headers.get("last-event-id"), after))
