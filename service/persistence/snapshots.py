"""Reading cases: one case, pages of cases, a case's timeline, counts. Nothing here writes.

Reads select plain rows through Core, with statements built once: ORM objects (identity map,
instrumentation) and statement construction cost more than the queries themselves, and a read
never writes anything back. The credential comes along by an outer join, without its sealed
value (a read has no use for the ciphertext). Rows become :class:`CaseSnapshot` values in the
domain's types, so no caller re-spells a state or a step status.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypedDict, Unpack

from sqlalchemy import bindparam, func, not_, tuple_
from sqlalchemy import select as sa_select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from service.domain.credential import CredentialView
from service.domain.findings import Finding
from service.domain.states import TERMINAL_STATES, CaseOutcome, CaseState, StepName, StepStatus
from service.errors import CaseNotFound, InvalidInput
from service.persistence.db import Database
from service.persistence.models import Case
from service.persistence.records import CaseSnapshot, EventRecord, StepRecord, case_document, render_document

CASES = SQLModel.metadata.tables["cases"]
STEPS = SQLModel.metadata.tables["case_steps"]
CREDENTIALS = SQLModel.metadata.tables["credentials"]
_CREDENTIAL_COLUMNS = [c.label(f"credential_{c.name}") for c in CREDENTIALS.c if c.name != "sealed"]
# Every column but the stored document (a snapshot is built from the rows; the document is made from it).
# Public with STEPS_OF and snapshot_of for the benchmark's seed, which renders documents as the writer does.
CASE_COLUMNS = [c for c in CASES.c if c.name != "document"]
CASE_ROWS = sa_select(*CASE_COLUMNS, *_CREDENTIAL_COLUMNS).select_from(
    CASES.outerjoin(CREDENTIALS, CREDENTIALS.c.case_id == CASES.c.id)
)
_DOCUMENT = sa_select(CASES.c.tenant, CASES.c.document).where(CASES.c.id == bindparam("case_id"))
_TENANT = sa_select(CASES.c.tenant).where(CASES.c.id == bindparam("case_id"))
_GET_CASE = CASE_ROWS.where(CASES.c.id == bindparam("case_id"))
_GET_CASES = CASE_ROWS.where(CASES.c.id.in_(bindparam("ids", expanding=True)))
STEPS_OF = sa_select(STEPS).where(STEPS.c.case_id.in_(bindparam("ids", expanding=True)))
EVENTS = SQLModel.metadata.tables["case_events"]
# The case's state and outcome with its events after an id, in one statement (the case's row with
# no event columns when there is none): one snapshot, so a terminal state comes with every event
# committed before it.
_TIMELINE = (
    sa_select(CASES.c.state.label("case_state"), CASES.c.outcome.label("case_outcome"), *EVENTS.c)
    .select_from(CASES.outerjoin(EVENTS, (EVENTS.c.case_id == CASES.c.id) & (EVENTS.c.id > bindparam("after_id"))))
    .where(CASES.c.id == bindparam("case_id"))
    .order_by(EVENTS.c.id)
)


def step_record(row: Any) -> StepRecord:
    return StepRecord(
        name=StepName(row.name),
        position=row.position,
        status=StepStatus(row.status),
        attempts=row.attempts,
        failures=row.failures,
        started_at=row.started_at,
        finished_at=row.finished_at,
        error=row.error,
    )


def _credential(row: Any) -> CredentialView | None:
    if row.credential_case_id is None:
        return None
    return CredentialView(
        applied=row.credential_applied_at is not None,
        expires_at=row.credential_expires_at,
        revealed_at=row.credential_revealed_at,
        revealed_by=row.credential_revealed_by,
        destroyed_at=row.credential_destroyed_at,
        destroyed_reason=row.credential_destroyed_reason,
    )


def snapshot_of(row: Any, steps: Sequence[Any]) -> CaseSnapshot:
    """A case from its row (joined with its credential, as CASE_ROWS selects it) and its step rows."""
    return snapshot_from(row, tuple(step_record(s) for s in steps), _credential(row))


def snapshot_from(row: Any, steps: Sequence[StepRecord], credential: CredentialView | None) -> CaseSnapshot:
    """A case from its own row (CASE_COLUMNS), its steps and its credential, however they were read."""
    return CaseSnapshot(
        id=row.id,
        mailbox=row.mailbox,
        state=CaseState(row.state),
        outcome=CaseOutcome(row.outcome) if row.outcome else None,
        ticket_ref=row.ticket_ref,
        requested_by=row.requested_by,
        note=row.note,
        actions=dict(row.actions),
        require_approval=row.require_approval,
        restriction=row.restriction,
        last_error=row.last_error,
        next_action_at=row.next_action_at,
        sending_restored_by=row.sending_restored_by,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        created_by=row.created_by,
        created_by_kind=row.created_by_kind,
        created_by_id=row.created_by_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        version=row.version,
        steps=tuple(sorted(steps, key=lambda s: s.position)),
        credential=credential,
        findings=tuple(Finding.from_dict(f) for f in row.findings) if row.findings is not None else None,
        tenant=row.tenant,
    )


async def _read_rows(connection: AsyncConnection, statement: Any, params: dict[str, Any]) -> list[CaseSnapshot]:
    rows = (await connection.execute(statement, params)).all()
    if not rows:
        return []
    steps: dict[str, list[Any]] = {r.id: [] for r in rows}
    for step in (await connection.execute(STEPS_OF, {"ids": list(steps)})).all():
        steps[step.case_id].append(step)
    return [snapshot_of(r, steps[r.id]) for r in rows]


async def read_in(session: AsyncSession, case_id: str) -> CaseSnapshot:
    """The case as this transaction sees it (pending ORM changes flushed first)."""
    await session.flush()
    found = await _read_rows(await session.connection(), _GET_CASE, {"case_id": case_id})
    if not found:
        raise CaseNotFound(f"no case has id {case_id}", case_id=case_id)
    return found[0]


async def read_many_in(session: AsyncSession, case_ids: Sequence[str]) -> list[CaseSnapshot]:
    """These cases as this transaction sees them (in no particular order; missing ones left out)."""
    if not case_ids:
        return []
    await session.flush()
    return await _read_rows(await session.connection(), _GET_CASES, {"ids": list(case_ids)})


async def get_case(db: Database, *, case_id: str) -> CaseSnapshot:
    async with db.connect_read() as connection:
        found = await _read_rows(connection, _GET_CASE, {"case_id": case_id})
    if not found:
        raise CaseNotFound(f"no case has id {case_id}", case_id=case_id)
    return found[0]


_CASE_ID = re.compile(r"^[0-9a-z]{26}$")


def _encode_cursor(created_at: datetime, case_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), case_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, case_id = json.loads(raw)
        if not isinstance(case_id, str) or not _CASE_ID.match(case_id):
            raise ValueError("not a case id")
        return datetime.fromisoformat(created), case_id
    except (binascii.Error, ValueError, TypeError, json.JSONDecodeError):
        raise InvalidInput("cursor is not one this service gave out", field="cursor") from None


class CaseFilters(TypedDict, total=False):
    """The list's filters and page, as the list endpoints and the dashboard pass them (all optional)."""

    state: CaseState | None
    mailbox: str | None
    ticket_ref: str | None
    is_open: bool | None
    tenant: str | None
    within: Sequence[str] | None  # only these tenants' cases (a credential limited to them)
    limit: int  # 50 unless given
    cursor: str | None


def _page(base: str, filters: CaseFilters) -> tuple[Any, dict[str, Any]]:
    """A page of cases, newest first: the ``base`` query with the list's filters, order and one row
    more than the page (to know whether there is a next one), and its parameters."""
    params: dict[str, Any] = {"f_limit": _limit(filters) + 1}
    if (tenant := filters.get("tenant")) is not None:
        params["f_tenant"] = tenant
    if (within := filters.get("within")) is not None:
        params["f_within"] = list(within)
    if (state := filters.get("state")) is not None:
        params["f_state"] = state.value
    if (mailbox := filters.get("mailbox")) is not None:
        params["f_mailbox"] = mailbox.lower()
    if (ticket_ref := filters.get("ticket_ref")) is not None:
        params["f_ticket_ref"] = ticket_ref
    is_open = filters.get("is_open")
    if is_open is None and state in TERMINAL_STATES:
        # Implied, and said so that the page reads ix_cases_closed_created: a terminal state's cases
        # are closed, and the open ones (the newest) are not walked past first.
        is_open = False
    if cursor := filters.get("cursor"):
        params["f_created_at"], params["f_case_id"] = _decode_cursor(cursor)
    # open/closed are written into the statement, not bound: only a literal lets the planner match
    # the partial indexes' predicates.
    flags = () if is_open is None else ("open",) if is_open else ("closed",)
    return _page_statement(base, frozenset((*params, *flags))), params


#: What a page selects: the stored documents (the API's list) or the rows of full snapshots.
_PAGE_BASES: dict[str, Any] = {
    "documents": sa_select(CASES.c.id, CASES.c.created_at, CASES.c.document),
    "rows": CASE_ROWS,
}


@functools.cache
def _page_statement(base: str, shape: frozenset[str]) -> Any:
    """The page's statement for one combination of filters, built once: a list page's request would
    otherwise spend more CPU building and cache-keying it than PostgreSQL spends running it."""
    c = CASES.c
    query = _PAGE_BASES[base]
    if "f_tenant" in shape:
        query = query.where(c.tenant == bindparam("f_tenant"))
    if "f_within" in shape:
        query = query.where(c.tenant.in_(bindparam("f_within", expanding=True)))
    if "f_state" in shape:
        query = query.where(c.state == bindparam("f_state"))
    if "f_mailbox" in shape:
        query = query.where(c.mailbox == bindparam("f_mailbox"))
    if "f_ticket_ref" in shape:
        query = query.where(c.ticket_ref == bindparam("f_ticket_ref"))
    if "open" in shape:
        query = query.where(c.is_open)
    if "closed" in shape:
        query = query.where(not_(c.is_open))
    if "f_created_at" in shape:
        after = tuple_(bindparam("f_created_at", type_=c.created_at.type), bindparam("f_case_id", type_=c.id.type))
        query = query.where(tuple_(c.created_at, c.id) < after)
    return query.order_by(c.created_at.desc(), c.id.desc()).limit(bindparam("f_limit"))


def _limit(filters: CaseFilters) -> int:
    return filters.get("limit", 50)


async def list_cases(db: Database, **filters: Unpack[CaseFilters]) -> tuple[list[CaseSnapshot], str | None]:
    """Newest first; ``next_cursor`` is set when there may be more."""
    query, params = _page("rows", filters)
    limit = _limit(filters)
    async with db.connect_read() as connection:
        snapshots = await _read_rows(connection, query, params)
    more = len(snapshots) > limit
    snapshots = snapshots[:limit]
    next_cursor = _encode_cursor(snapshots[-1].created_at, snapshots[-1].id) if more and snapshots else None
    return snapshots, next_cursor


async def tenant_of(db: Database, *, case_id: str) -> str | None:
    """The case's tenant (None: not placed yet); CaseNotFound if there is no such case. One indexed read."""
    async with db.connect_read() as connection:
        row = (await connection.execute(_TENANT, {"case_id": case_id})).first()
    if row is None:
        raise CaseNotFound(f"no case has id {case_id}", case_id=case_id)
    return str(row.tenant) if row.tenant is not None else None


async def get_document(db: Database, *, case_id: str) -> tuple[str | None, bytes]:
    """A case's tenant and its JSON as served: the stored document, one indexed read.

    A case last written before documents were stored (migration 0010) is rendered from its rows.
    """
    async with db.connect_read() as connection:
        row = (await connection.execute(_DOCUMENT, {"case_id": case_id})).first()
        if row is None:
            raise CaseNotFound(f"no case has id {case_id}", case_id=case_id)
        if row.document is not None:
            return row.tenant, bytes(row.document)
        found = await _read_rows(connection, _GET_CASE, {"case_id": case_id})
    return row.tenant, render_document(case_document(found[0]))


async def list_documents(db: Database, **filters: Unpack[CaseFilters]) -> tuple[list[bytes], str | None]:
    """:func:`list_cases` as the stored JSON of each case (rendered for the few written before 0010)."""
    query, params = _page("documents", filters)
    limit = _limit(filters)
    async with db.connect_read() as connection:
        rows = (await connection.execute(query, params)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        missing = [r.id for r in rows if r.document is None]
        rendered: dict[str, bytes] = {}
        if missing:
            for snapshot in await _read_rows(connection, _GET_CASES, {"ids": missing}):
                rendered[snapshot.id] = render_document(case_document(snapshot))
    documents = [bytes(r.document) if r.document is not None else rendered[r.id] for r in rows]
    next_cursor = _encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return documents, next_cursor


async def list_events(db: Database, *, case_id: str, after_id: int | None = None) -> list[EventRecord]:
    _, _, events = await timeline_since(db, case_id=case_id, after_id=after_id)
    return events


async def timeline_since(
    db: Database, *, case_id: str, after_id: int | None = None
) -> tuple[CaseState, CaseOutcome | None, list[EventRecord]]:
    """The case's state and outcome, and its events after ``after_id``, in one read.

    One statement sees one snapshot: if the state it returns is terminal, every event up to the
    terminal change (committed with it or before) is in the same result, which is what a live
    stream needs to know that it may end.
    """
    async with db.connect_read() as connection:
        rows = (await connection.execute(_TIMELINE, {"case_id": case_id, "after_id": after_id or 0})).all()
    if not rows:
        raise CaseNotFound(f"no case has id {case_id}", case_id=case_id)
    first = rows[0]
    events = [
        EventRecord(
            id=int(r.id),
            case_id=r.case_id,
            at=r.at,
            actor=r.actor,
            type=r.type,
            from_state=r.from_state,
            to_state=r.to_state,
            step=r.step,
            detail=dict(r.detail),
        )
        for r in rows
        if r.id is not None
    ]
    return CaseState(first.case_state), CaseOutcome(first.case_outcome) if first.case_outcome else None, events


async def count_by_state(db: Database) -> dict[tuple[str | None, CaseState], int]:
    """Cases by tenant (None: not placed yet) and state."""
    async with db.read() as session:
        rows = (
            await session.exec(select(Case.tenant, Case.state, func.count()).group_by(Case.tenant, Case.state))
        ).all()
    return {(tenant, CaseState(state)): int(count) for tenant, state, count in rows}


async def open_case_id(db: Database, *, mailbox: str) -> str | None:
    async with db.read() as session:
        return await open_case_in(session, mailbox=mailbox)


async def open_case_in(session: AsyncSession, *, mailbox: str, other_than: str | None = None) -> str | None:
    """The id of ``mailbox``'s open case, as this transaction sees it."""
    query = select(Case.id).where(Case.mailbox == mailbox, col(Case.is_open))
    if other_than is not None:
        query = query.where(Case.id != other_than)
    return (await session.exec(query)).first()
