"""/ui: a read-only dashboard, server-rendered with Jinja2 and a little JavaScript.

A person signs in with an API key that has ``cases:read``. The session lives in the database
(``ui_sessions``): the cookie (HttpOnly, SameSite=Strict, Secure whenever the request came over
HTTPS) holds only a session id signed with itsdangerous, never the key, so logging out or
revoking the key ends the session however many copies of the cookie exist. Form posts from
other sites are refused (Sec-Fetch-Site, Origin), and plain-HTTP sign-in works on loopback only. Pages
show open cases (state, age, ticket, next action, last error), a case with its timeline, which
follows the case live over Server-Sent Events, and the restricted-sender list (with
``senders:read``). There is nothing to change from here: cases are steered through the API.

A key limited to tenants sees only those tenants' cases and restricted lists, exactly as through
the API: another tenant's case is 404 here too. Its tenants are read from the key's row on every
request (the session names only the key), so the cookie cannot widen them.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from itsdangerous import BadData, URLSafeTimedSerializer

from service.api.auth import Principal, client_origin, count_failure, refuse_after_failures
from service.api.live import resume_from
from service.api.live import stream as live_stream
from service.domain.states import TERMINAL_STATES
from service.domain.tenancy import DEFAULT_TENANT
from service.domain.timeline import EventType
from service.errors import CaseNotFound, ServiceError
from service.persistence import keys as key_rows
from service.persistence import snapshots, tenant_facts, ui_sessions
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


def _serializer(runtime: Runtime) -> URLSafeTimedSerializer:
    """itsdangerous signs the cookie's session id: the newest UNBLOCK_SECRET_KEY signs, every one verifies."""
    return URLSafeTimedSerializer(list(reversed(runtime.settings.secret_keys)), salt="unblock-ui-session")


def _session_id(request: Request) -> str | None:
    token = request.cookies.get(COOKIE, "")
    if not token:
        return None
    try:
        session_id = _serializer(_runtime(request)).loads(token, max_age=SESSION_SECONDS)
    except BadData:  # forged, truncated, garbled or expired: simply not signed in
        return None
    return session_id if isinstance(session_id, str) else None


async def _viewer(request: Request) -> Principal | None:
    """The signed-in key as a principal, or None (no session, expired, logged out, key revoked, no cases:read).

    Scopes and tenants come from the key's row as it is now, never from the session or the
    cookie: the session only says which key signed in.
    """
    runtime = _runtime(request)
    session_id = _session_id(request)
    if session_id is None:
        return None
    found = await ui_sessions.find(runtime.db, session_id=session_id, now=runtime.clock())
    if found is None:
        return None
    record = await key_rows.get_key(runtime.db, key_id=found.key_id)
    if record is None or not record.usable(runtime.clock()) or "cases:read" not in record.scopes:
        return None
    request.state.principal = f"ui:{record.name}"
    return Principal(id=record.id, name=record.name, scopes=frozenset(record.scopes), tenants=record.tenants)


def _same_site(request: Request) -> bool:
    """Is this form post from our own pages? Browsers say where a request comes from; a post from
    another site (login CSRF, a forced logout) is refused.

    Sec-Fetch-Site, which pages cannot set, settles it when present. Otherwise the Origin must be
    ours: this service's pages send ``Referrer-Policy: no-referrer``, under which browsers send
    ``Origin: null`` on form posts, so Origin alone cannot be required. Clients that send neither
    header (scripts, curl) are not browsers acting for someone else.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    sent = request.headers.get("origin")
    if sent is None:
        return True
    scheme = "https" if client_origin(request).https else request.url.scheme
    return sent == f"{scheme}://{request.headers.get('host', '')}"


def _https_required(request: Request) -> bool:
    """Plain-HTTP sign-in works on this machine only; elsewhere the session cookie must be Secure."""
    seen = client_origin(request)
    return not seen.https and not seen.is_loopback


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


_USE_HTTPS = (
    "This page was reached over plain HTTP from another machine. Sign in through HTTPS (the service's TLS "
    "address, or a proxy listed in UNBLOCK_TRUSTED_PROXIES that sends X-Forwarded-Proto)."
)


def _login(request: Request, error: str | None = None, status: int = 200) -> HTMLResponse:
    if error is None and _https_required(request):
        error = _USE_HTTPS
    return templates.TemplateResponse(request, "login.html", {"error": error}, status_code=status)


@router.get("/login")
async def login_page(request: Request) -> HTMLResponse:
    return _login(request)


@router.post("/login")
async def login(request: Request, key: Annotated[str, Form(max_length=200)]) -> Response:
    runtime = _runtime(request)
    if not _same_site(request):
        return _login(request, "Sign in from this service's own page.", 403)
    if _https_required(request):
        return _login(request, _USE_HTTPS, 403)
    refuse_after_failures(request)
    prefix = prefix_of(key.strip())
    record = await key_rows.find_by_prefix(runtime.db, prefix=prefix) if prefix else None
    if record is None or not matches(key.strip(), record.key_hash) or not record.usable(runtime.clock()):
        count_failure(request)
        return _login(request, "That key is not valid.", 401)
    if "cases:read" not in record.scopes:
        return _login(request, "That key lacks the cases:read scope.", 403)
    session_id = await ui_sessions.open_session(
        runtime.db, key_id=record.id, now=runtime.clock(), lifetime=SESSION_SECONDS
    )
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(
        COOKIE,
        _serializer(runtime).dumps(session_id),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=client_origin(request).https,
        path="/ui",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    if not _same_site(request):
        return Response(status_code=403)
    session_id = _session_id(request)
    if session_id is not None:
        runtime = _runtime(request)
        await ui_sessions.revoke(runtime.db, session_id=session_id, now=runtime.clock())
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


async def _cases_context(runtime: Runtime, viewer: Principal) -> dict[str, Any]:
    """Open and recently closed cases, of the viewer's tenants only (as ``GET /v1/cases`` filters)."""
    now = runtime.clock()
    within = viewer.tenants
    open_cases, _ = await snapshots.list_cases(runtime.db, is_open=True, within=within, limit=200)
    closed, _ = await snapshots.list_cases(runtime.db, is_open=False, within=within, limit=20)
    return {
        "open_cases": [_row(c, now) for c in open_cases],
        "closed_cases": [_row(c, now) for c in closed],
        "now": now.strftime("%H:%M:%S UTC"),
    }


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


async def _senders(runtime: Runtime, viewer: Principal) -> dict[str, Any]:
    """The restricted lists as workers last read them (this process never asks a tenant).

    An unlimited key sees the ``default`` tenant's list, as before tenants existed; a key limited
    to tenants sees each of its tenants' lists and no other (``GET /v1/restricted-senders`` is
    refused for another tenant the same way). A list no worker has read in full yet is left out
    and said to be unread, rather than shown half known.
    """
    if "senders:read" not in viewer.scopes:
        return {"senders": None, "senders_note": "Sign in with a key that has senders:read to see the list."}
    tenants = viewer.tenants if viewer.tenants is not None else (DEFAULT_TENANT,)
    items: list[dict[str, Any]] = []
    read: list[str] = []
    unread: list[str] = []
    try:
        for tenant in tenants:
            rows, fetched_at = await tenant_facts.senders(runtime.db, tenant=tenant)
            if fetched_at is None:
                unread.append(tenant)
                continue
            read.append(f"{tenant if len(tenants) > 1 else 'the tenant'} at {_stamp(fetched_at)}")
            items.extend(
                {
                    "tenant": tenant,
                    "sender_address": r.sender_address,
                    "reason": r.reason,
                    "blocked_at": r.blocked_at.isoformat() if r.blocked_at else None,
                    "changed_at": r.changed_at.isoformat() if r.changed_at else None,
                    "temporary_block": r.temporary_block,
                }
                for r in rows
            )
    except ServiceError as error:
        return {"senders": None, "senders_note": f"The list cannot be read now: {error.message}"}
    if not read:
        return {"senders": None, "senders_note": "No worker has read the restricted list yet."}
    fetched = "as read from " + ", ".join(read)
    if unread:
        fetched += f"; not read yet: {', '.join(unread)}"
    return {
        "senders": items,
        "senders_note": None,
        "senders_fetched_at": fetched,
        "senders_by_tenant": len(tenants) > 1,
    }


@router.get("")
async def index(request: Request) -> Response:
    viewer = await _viewer(request)
    if viewer is None:
        return RedirectResponse("/ui/login", status_code=303)
    runtime = _runtime(request)
    context = {"viewer": viewer.name, **await _cases_context(runtime, viewer), **await _senders(runtime, viewer)}
    return templates.TemplateResponse(request, "index.html", context)


@router.get("/partials/cases")
async def cases_partial(request: Request) -> Response:
    viewer = await _viewer(request)
    if viewer is None:
        return Response(status_code=401)
    return templates.TemplateResponse(request, "_cases.html", await _cases_context(_runtime(request), viewer))


UiCaseId = Annotated[str, Path(pattern=r"^[0-9a-z]{26}$")]


async def _visible_case(runtime: Runtime, case_id: str, viewer: Principal) -> CaseSnapshot | None:
    """The case, or None when there is none or it is another tenant's: both are the same 404, so a
    limited key cannot tell another tenant's case ids from unknown ones (as in the API)."""
    try:
        case = await snapshots.get_case(runtime.db, case_id=case_id)
    except CaseNotFound:
        return None
    return case if viewer.sees(case.tenant) else None


@router.get("/cases/{case_id}")
async def case_page(request: Request, case_id: UiCaseId) -> Response:
    viewer = await _viewer(request)
    if viewer is None:
        return RedirectResponse("/ui/login", status_code=303)
    runtime = _runtime(request)
    case = await _visible_case(runtime, case_id, viewer)
    if case is None:
        return templates.TemplateResponse(request, "missing.html", {"case_id": case_id}, status_code=404)
    events = await snapshots.list_events(runtime.db, case_id=case_id)
    context = {
        "viewer": viewer.name,
        "case": case,
        "row": _row(case, runtime.clock()),
        "events": events,
        "last_event_id": events[-1].id if events else 0,
        "terminal": case.state in TERMINAL_STATES,
        # The live timeline listens for these SSE event names: every type the service writes.
        "event_types": " ".join(t.value for t in EventType),
    }
    return templates.TemplateResponse(request, "case.html", context)


@router.get("/cases/{case_id}/stream")
async def case_stream(
    request: Request, case_id: UiCaseId, after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0
) -> Response:
    viewer = await _viewer(request)
    if viewer is None:
        return Response(status_code=401)
    runtime = _runtime(request)
    case = await _visible_case(runtime, case_id, viewer)
    if case is None:
        return Response(status_code=404)

    async def still_signed_in() -> bool:
        """Re-read as the stream runs: a logout or revoked key ends it, and so would the key losing the tenant."""
        now = await _viewer(request)
        return now is not None and now.sees(case.tenant)

    return live_stream(runtime, case_id, resume_from(request.headers.get("last-event-id"), after), still_signed_in)
