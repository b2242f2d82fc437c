"""Case rows: create, read, list, claim, and apply decisions, one transaction per change.

Every change to a case is a compare-and-set on its ``version`` (and, for the worker, on its
lease) plus the timeline events that describe it, in the same transaction. A lost
compare-and-set means someone else changed the case first; the caller reloads and decides
again. The domain decides what should change; this module only makes it durable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, text, tuple_
from sqlalchemy import select as sa_select
from sqlalchemy import update as sa_update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import SQLModel, col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from service.domain.decide import Decision
from service.domain.plan import RequestedActions, build_plan
from service.domain.states import TERMINAL_STATES, CaseState, StepName, StepStatus
from service.domain.transitions import Action
from service.errors import CaseNotFound, ConcurrentUpdate, IdempotencyKeyReused, InvalidInput, OpenCaseExists
from service.persistence import audit, outbox
from service.persistence.db import Database
from service.persistence.models import Case, CaseEvent, CaseStep, Credential, IdempotencyRecord
from service.persistence.records import CaseSnapshot, Claim, CredentialInfo, EventRecord, StepRecord

NOTIFY_CHANNEL = "unblock_work"


@dataclass(frozen=True, slots=True)
class NewCase:
    mailbox: str
    ticket_ref: str | None
    requested_by: str | None
    note: str | None
    actions: RequestedActions
    require_approval: bool


@dataclass(frozen=True, slots=True)
class IdempotencyRequest:
    principal: str
    key: str
    request_hash: str


@dataclass(frozen=True, slots=True)
class Stored:
    """A create's response as first given (replayed for an identical retry)."""

    status_code: int
    body: dict[str, Any]
    location: str | None
    replayed: bool


def request_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --- reading ------------------------------------------------------------------------------------------


def _step(row: Any) -> StepRecord:
    """From an ORM object or a Core row of case_steps (same attribute names)."""
    return StepRecord(
        name=row.name,
        position=row.position,
        status=row.status,
        attempts=row.attempts,
        failures=row.failures,
        started_at=row.started_at,
        finished_at=row.finished_at,
        error=row.error,
    )


def _credential(row: Any) -> CredentialInfo | None:
    if row is None:
        return None
    return CredentialInfo(
        applied=row.applied_at is not None,
        expires_at=row.expires_at,
        revealed_at=row.revealed_at,
        revealed_by=row.revealed_by,
        destroyed_at=row.destroyed_at,
        destroyed_reason=row.destroyed_reason,
    )


def _snapshot(row: Any, steps: Sequence[Any], credential: Any) -> CaseSnapshot:
    return CaseSnapshot(
        id=row.id,
        mailbox=row.mailbox,
        state=row.state,
        outcome=row.outcome,
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
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        version=row.version,
        steps=tuple(_step(s) for s in sorted(steps, key=lambda s: s.position)),
        credential=_credential(credential),
    )


async def _load(session: AsyncSession, case_id: str) -> CaseSnapshot:
    """The case as this transaction sees it: pending ORM changes flushed, then read as plain rows."""
    await session.flush()
    found = await _read_rows(await session.connection(), _GET_CASE, {"case_id": case_id})
    if not found:
        raise CaseNotFound(f"no case has id {case_id}", case_id=case_id)
    return found[0]


async def snapshot_in(session: AsyncSession, case_id: str) -> CaseSnapshot:
    """The case as this transaction sees it (for other persistence modules)."""
    return await _load(session, case_id)


async def get_case(db: Database, *, case_id: str) -> CaseSnapshot:
    async with db.connect_read() as connection:
        found = await _read_rows(connection, _GET_CASE, {"case_id": case_id})
    if not found:
        raise CaseNotFound(f"no case has id {case_id}", case_id=case_id)
    return found[0]


# Read-only paths (the API's GET, lists, the dashboard) select plain rows through Core, with
# statements built once: ORM objects (identity map, instrumentation) and statement construction
# cost more than the queries themselves, and a read never writes anything back. The credential
# comes along by an outer join, without its sealed value (a read has no use for the ciphertext).
# Writes keep using the ORM (_load).
_CASES = SQLModel.metadata.tables["cases"]
_STEPS = SQLModel.metadata.tables["case_steps"]
_CREDENTIALS = SQLModel.metadata.tables["credentials"]
_CREDENTIAL_COLUMNS = [c.label(f"credential_{c.name}") for c in _CREDENTIALS.c if c.name != "sealed"]
_CASE_ROWS = sa_select(_CASES, *_CREDENTIAL_COLUMNS).select_from(
    _CASES.outerjoin(_CREDENTIALS, _CREDENTIALS.c.case_id == _CASES.c.id)
)
_GET_CASE = _CASE_ROWS.where(_CASES.c.id == bindparam("case_id"))
_STEPS_OF = sa_select(_STEPS).where(_STEPS.c.case_id.in_(bindparam("ids", expanding=True)))


class _JoinedCredential:
    """The credential columns of a joined case row, under the names _credential() reads."""

    __slots__ = ("_row",)

    def __init__(self, row: Any) -> None:
        self._row = row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, f"credential_{name}")


async def _read_rows(connection: AsyncConnection, statement: Any, params: dict[str, Any]) -> list[CaseSnapshot]:
    rows = (await connection.execute(statement, params)).all()
    if not rows:
        return []
    steps: dict[str, list[Any]] = {r.id: [] for r in rows}
    for step in (await connection.execute(_STEPS_OF, {"ids": list(steps)})).all():
        steps[step.case_id].append(step)
    return [_snapshot(r, steps[r.id], _JoinedCredential(r) if r.credential_case_id is not None else None) for r in rows]


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


async def list_cases(
    db: Database,
    *,
    state: str | None = None,
    mailbox: str | None = None,
    ticket_ref: str | None = None,
    is_open: bool | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[CaseSnapshot], str | None]:
    """Newest first; ``next_cursor`` is set when there may be more."""
    c = _CASES.c
    query = _CASE_ROWS
    if state is not None:
        query = query.where(c.state == state)
    if mailbox is not None:
        query = query.where(c.mailbox == mailbox.lower())
    if ticket_ref is not None:
        query = query.where(c.ticket_ref == ticket_ref)
    if is_open is not None:
        query = query.where(c.is_open == is_open)
    if cursor:
        created_at, case_id = _decode_cursor(cursor)
        query = query.where(tuple_(c.created_at, c.id) < tuple_(created_at, case_id))
    query = query.order_by(c.created_at.desc(), c.id.desc()).limit(limit + 1)
    async with db.connect_read() as connection:
        snapshots = await _read_rows(connection, query, {})
    more = len(snapshots) > limit
    snapshots = snapshots[:limit]
    next_cursor = _encode_cursor(snapshots[-1].created_at, snapshots[-1].id) if more and snapshots else None
    return snapshots, next_cursor


async def list_events(db: Database, *, case_id: str, after_id: int | None = None) -> list[EventRecord]:
    _, _, events = await timeline_since(db, case_id=case_id, after_id=after_id)
    return events


async def timeline_since(
    db: Database, *, case_id: str, after_id: int | None = None
) -> tuple[str, str | None, list[EventRecord]]:
    """The case's state and outcome, then its events after ``after_id``, in one read.

    The state is read first: if it is terminal, every event up to the terminal change was
    committed before it, so the events read next include them all (what a live stream needs to
    know that it may end).
    """
    async with db.read() as session:
        state = (await session.exec(select(Case.state, Case.outcome).where(Case.id == case_id))).first()
        if state is None:
            raise CaseNotFound(f"no case has id {case_id}", case_id=case_id)
        query = select(CaseEvent).where(CaseEvent.case_id == case_id)
        if after_id is not None:
            query = query.where(col(CaseEvent.id) > after_id)
        rows = (await session.exec(query.order_by(col(CaseEvent.id)))).all()
    events = [
        EventRecord(
            id=int(r.id or 0),
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
    ]
    return str(state[0]), state[1], events


async def count_by_state(db: Database) -> dict[str, int]:
    async with db.read() as session:
        rows = (await session.exec(select(Case.state, func.count()).group_by(Case.state))).all()
    return {str(state): int(count) for state, count in rows}


async def open_case_id(db: Database, *, mailbox: str) -> str | None:
    async with db.read() as session:
        row = (await session.exec(select(Case.id).where(Case.mailbox == mailbox, col(Case.is_open)))).first()
        return row


# --- writing ------------------------------------------------------------------------------------------


def _event(case_id: str, at: datetime, actor: str, kind: str, **fields: Any) -> CaseEvent:
    detail = fields.pop("detail", {}) or {}
    return CaseEvent(case_id=case_id, at=at, actor=actor, type=kind, detail=detail, **fields)


async def _notify(session: AsyncSession, payload: str = "") -> None:
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await connection.execute(
            text("SELECT pg_notify(:channel, :payload)"), {"channel": NOTIFY_CHANNEL, "payload": payload}
        )


async def _replay(session: AsyncSession, idempotency: IdempotencyRequest) -> Stored | None:
    record = (
        await session.exec(
            select(IdempotencyRecord).where(
                IdempotencyRecord.principal == idempotency.principal, IdempotencyRecord.key == idempotency.key
            )
        )
    ).first()
    if record is None:
        return None
    if record.request_hash != idempotency.request_hash:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was already used with a different request body", field="Idempotency-Key"
        )
    return Stored(status_code=record.status_code, body=dict(record.response), location=record.location, replayed=True)


async def replay(db: Database, idempotency: IdempotencyRequest) -> Stored | None:
    """The stored answer to an earlier create with this key, or None if the key is new."""
    async with db.read() as session:
        return await _replay(session, idempotency)


Render = Callable[[CaseSnapshot], tuple[dict[str, Any], str]]


async def create_case(
    db: Database,
    *,
    new: NewCase,
    actor: str,
    now: datetime,
    render: Render,
    idempotency: IdempotencyRequest | None = None,
) -> Stored:
    """Insert the case, its planned steps and its first event; store the response for replays."""
    for attempt in range(2):
        try:
            return await _create_once(db, new=new, actor=actor, now=now, render=render, idempotency=idempotency)
        except IntegrityError:
            if attempt:
                raise
            # A concurrent create won a unique index: answer as that outcome dictates.
            async with db.read() as session:
                if idempotency is not None and (stored := await _replay(session, idempotency)) is not None:
                    return stored
            if (existing := await open_case_id(db, mailbox=new.mailbox)) is not None:
                raise OpenCaseExists(existing, f"{new.mailbox} already has an open case") from None
    raise AssertionError("unreachable")


async def _create_once(
    db: Database,
    *,
    new: NewCase,
    actor: str,
    now: datetime,
    render: Render,
    idempotency: IdempotencyRequest | None,
) -> Stored:
    async with db.write() as session:
        if idempotency is not None and (stored := await _replay(session, idempotency)) is not None:
            return stored
        snapshot = await insert_case(session, new=new, actor=actor, now=now)
        body, location = render(snapshot)
        if idempotency is not None:
            session.add(
                IdempotencyRecord(
                    principal=idempotency.principal,
                    key=idempotency.key,
                    request_hash=idempotency.request_hash,
                    status_code=201,
                    response=body,
                    location=location,
                    created_at=now,
                )
            )
        return Stored(status_code=201, body=body, location=location, replayed=False)


async def insert_case(session: AsyncSession, *, new: NewCase, actor: str, now: datetime) -> CaseSnapshot:
    """Within a caller's transaction: the case, its planned steps, its first event and case.created."""
    existing = (await session.exec(select(Case.id).where(Case.mailbox == new.mailbox, col(Case.is_open)))).first()
    if existing is not None:
        raise OpenCaseExists(existing, f"{new.mailbox} already has an open case")
    case = Case(
        mailbox=new.mailbox,
        state=CaseState.received.value,
        ticket_ref=new.ticket_ref,
        requested_by=new.requested_by,
        note=new.note,
        actions=new.actions.as_dict(),
        require_approval=new.require_approval,
        next_action_at=now,
        created_by=actor,
        created_at=now,
        updated_at=now,
    )
    session.add(case)
    steps = [
        CaseStep(case_id=case.id, name=step.value, position=i, status=StepStatus.pending.value)
        for i, step in enumerate(build_plan(new.actions))
    ]
    session.add_all(steps)
    session.add(
        _event(
            case.id,
            now,
            actor,
            "case.created",
            to_state=CaseState.received.value,
            detail={
                "mailbox": new.mailbox,
                "ticket_ref": new.ticket_ref,
                "actions": new.actions.as_dict(),
                "plan": [s.name for s in steps],
            },
        )
    )
    await session.flush()
    snapshot = _snapshot(case, steps, None)
    await outbox.case_events(session, case=snapshot, at=now, previous_state=None)
    await _notify(session, case.id)
    return snapshot


async def _cas(
    session: AsyncSession,
    *,
    case_id: str,
    version: int,
    values: dict[str, Any],
    lease_owner: str | None = None,
) -> bool:
    # Core, not an ORM bulk update: no identity-map synchronisation to pay for (snapshots are
    # read back as rows, so no ORM Case objects are kept in the session).
    c = _CASES.c
    statement = sa_update(_CASES).where(c.id == case_id, c.version == version)
    if lease_owner is not None:
        statement = statement.where(c.lease_owner == lease_owner)
    connection = await session.connection()
    result = await connection.execute(statement.values(**values, version=version + 1))
    return bool(result.rowcount == 1)


async def _set_steps(session: AsyncSession, *, case_id: str, changes: dict[str, dict[str, Any]]) -> None:
    connection = await session.connection()
    for name, values in changes.items():
        await connection.execute(
            sa_update(_STEPS).where(_STEPS.c.case_id == case_id, _STEPS.c.name == name).values(**values)
        )


# --- the worker's side --------------------------------------------------------------------------------


async def claim_due(db: Database, *, worker_id: str, now: datetime, lease: float, limit: int) -> list[Claim]:
    """Lease up to ``limit`` open cases whose next action is due and that nobody holds."""
    due = (
        select(Case.id)
        .where(
            col(Case.is_open),
            col(Case.next_action_at).is_not(None),
            col(Case.next_action_at) <= now,
            (col(Case.lease_expires_at).is_(None)) | (col(Case.lease_expires_at) < now),
        )
        # Work a dead worker left half-done first (its lease ran out), then the rest by due time.
        .order_by(col(Case.lease_expires_at).is_(None), col(Case.next_action_at))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    statement = (
        update(Case)
        .where(col(Case.id).in_(due.scalar_subquery()))
        .where((col(Case.lease_expires_at).is_(None)) | (col(Case.lease_expires_at) < now))
        .values(lease_owner=worker_id, lease_expires_at=now + timedelta(seconds=lease))
        .returning(col(Case.id), col(Case.version))
    )
    async with db.write() as session:
        rows = (await session.exec(statement)).all()
    return [Claim(case_id=str(r[0]), version=int(r[1])) for r in rows]


async def next_due_at(db: Database, *, now: datetime) -> datetime | None:
    """When the next case becomes due (a scheduled action, or a lease that runs out)."""
    async with db.read() as session:
        scheduled = (
            await session.exec(
                select(func.min(Case.next_action_at)).where(
                    col(Case.is_open),
                    col(Case.next_action_at).is_not(None),
                    (col(Case.lease_expires_at).is_(None)) | (col(Case.lease_expires_at) < now),
                )
            )
        ).first()
        leased = (
            await session.exec(
                select(func.min(Case.lease_expires_at)).where(
                    col(Case.is_open), col(Case.next_action_at).is_not(None), col(Case.lease_expires_at) >= now
                )
            )
        ).first()
    candidates = [t for t in (scheduled, leased) if t is not None]
    return min(candidates) if candidates else None


async def load_claimed(db: Database, *, case_id: str) -> CaseSnapshot:
    async with db.read() as session:
        return await _load(session, case_id)


async def extend_lease(db: Database, *, case_id: str, worker_id: str, until: datetime) -> bool:
    async with db.write() as session:
        result = await session.exec(
            update(Case)
            .where(col(Case.id) == case_id, col(Case.lease_owner) == worker_id)
            .values(lease_expires_at=until)
        )
        return bool(result.rowcount == 1)


async def release_lease(db: Database, *, case_id: str, worker_id: str) -> None:
    async with db.write() as session:
        await session.exec(
            update(Case)
            .where(col(Case.id) == case_id, col(Case.lease_owner) == worker_id)
            .values(lease_owner=None, lease_expires_at=None)
        )


@dataclass(frozen=True, slots=True)
class SealedSecret:
    key_id: str
    blob: bytes


async def start_step(
    db: Database,
    *,
    case: CaseSnapshot,
    worker_id: str,
    step: StepName,
    action: Action | None,
    now: datetime,
    lease_until: datetime,
    new_secret: SealedSecret | None = None,
) -> CaseSnapshot | None:
    """Mark ``step`` running (attempt + 1) and, if starting it moves the case, move it; None if lost."""
    from service.domain.transitions import apply

    record = case.step(step.value)
    async with db.write() as session:
        values: dict[str, Any] = {"updated_at": now, "lease_expires_at": lease_until}
        new_state = case.state
        if action is not None:
            new_state = apply(action, case.state).value
            values["state"] = new_state
        if not await _cas(session, case_id=case.id, version=case.version, values=values, lease_owner=worker_id):
            return None
        step_values: dict[str, Any] = {"status": StepStatus.running.value, "attempts": record.attempts + 1}
        if record.started_at is None or record.status != StepStatus.running.value:
            step_values["started_at"] = now
        await _set_steps(session, case_id=case.id, changes={step.value: step_values})
        if action is not None:
            session.add(
                _event(
                    case.id,
                    now,
                    "worker",
                    "state.changed",
                    from_state=case.state,
                    to_state=new_state,
                    detail={"action": action.value},
                )
            )
        session.add(
            _event(case.id, now, "worker", "step.started", step=step.value, detail={"attempt": record.attempts + 1})
        )
        if new_secret is not None:
            await _store_secret(session, case_id=case.id, secret=new_secret, now=now)
        after = await _load(session, case.id)
        if action is not None:
            await outbox.case_events(session, case=after, at=now, previous_state=case.state)
        return after


async def _store_secret(session: AsyncSession, *, case_id: str, secret: SealedSecret, now: datetime) -> None:
    existing = await session.get(Credential, case_id)
    if existing is None:
        session.add(Credential(case_id=case_id, key_id=secret.key_id, sealed=secret.blob, created_at=now))
        return
    existing.key_id, existing.sealed, existing.created_at = secret.key_id, secret.blob, now
    existing.applied_at = existing.expires_at = existing.revealed_at = existing.destroyed_at = None
    existing.revealed_by = existing.destroyed_reason = None
    session.add(existing)


async def load_secret(db: Database, *, case_id: str) -> SealedSecret | None:
    async with db.read() as session:
        row = await session.get(Credential, case_id)
        if row is None or row.sealed is None or row.destroyed_at is not None:
            return None
        return SealedSecret(key_id=row.key_id, blob=bytes(row.sealed))


def _step_values(change_status: StepStatus, error: dict[str, Any] | None, now: datetime, reset: bool) -> dict[str, Any]:
    values: dict[str, Any] = {"status": change_status.value, "error": error}
    if change_status in (StepStatus.succeeded, StepStatus.failed, StepStatus.skipped):
        values["finished_at"] = now
    if change_status is StepStatus.succeeded:
        values["failures"] = 0
        values["error"] = None
    if reset:
        values.update(attempts=0, failures=0, started_at=None, finished_at=None, error=None)
    return values


async def record_decision(
    db: Database,
    *,
    case: CaseSnapshot,
    decision: Decision,
    now: datetime,
    actor: str,
    worker_id: str | None = None,
    step: StepName | None = None,
    keep_lease_until: datetime | None = None,
    detail: dict[str, Any] | None = None,
    credential_ttl: float | None = None,
) -> CaseSnapshot | None:
    """Apply one decision: case fields, step rows, events, in one transaction; None if the CAS lost."""
    async with db.write() as session:
        terminal = decision.state in TERMINAL_STATES
        values: dict[str, Any] = {
            "state": decision.state.value,
            "outcome": decision.outcome.value if decision.outcome else None,
            "is_open": not terminal,
            "last_error": decision.last_error,
            "next_action_at": decision.next_action_at,
            "updated_at": now,
            "finished_at": now if terminal else None,
        }
        if decision.restriction is not None:
            values["restriction"] = decision.restriction
        if decision.sending_restored_by is not None:
            values["sending_restored_by"] = decision.sending_restored_by
        if worker_id is not None:
            values["lease_owner"] = worker_id if keep_lease_until else None
            values["lease_expires_at"] = keep_lease_until
        if not await _cas(session, case_id=case.id, version=case.version, values=values, lease_owner=worker_id):
            return None
        changes: dict[str, dict[str, Any]] = {}
        for change in decision.steps:
            values_for_step = _step_values(change.status, change.error, now, change.reset_counters)
            if change.failures is not None:
                values_for_step["failures"] = change.failures
            changes[change.name.value] = values_for_step
        await _set_steps(session, case_id=case.id, changes=changes)
        for change in decision.steps:
            kind = {
                StepStatus.succeeded: "step.succeeded",
                StepStatus.failed: "step.failed",
                StepStatus.skipped: "step.skipped",
            }.get(change.status, "step.retry_scheduled" if change.error else "step.pending")
            if change.name is StepName.propagation and change.status is StepStatus.running and not change.error:
                kind = "step.waiting"
            event_detail: dict[str, Any] = {}
            if change.error:
                event_detail["error"] = change.error
            if change.name is step and detail:
                event_detail.update(detail)
            if kind in ("step.retry_scheduled", "step.waiting") and decision.next_action_at:
                event_detail["next_action_at"] = decision.next_action_at.isoformat()
            session.add(_event(case.id, now, actor, kind, step=change.name.value, detail=event_detail))
        if decision.action is not None:
            session.add(
                _event(
                    case.id,
                    now,
                    actor,
                    "state.changed",
                    from_state=case.state,
                    to_state=decision.state.value,
                    detail={
                        "action": decision.action.value,
                        "summary": decision.summary,
                        **({"outcome": decision.outcome.value} if decision.outcome else {}),
                    },
                )
            )
        await _credential_after(session, case_id=case.id, decision=decision, now=now, ttl=credential_ttl)
        if decision.next_action_at is not None and worker_id is None:
            await _notify(session, case.id)
        after = await _load(session, case.id)
        if decision.action is not None:
            await outbox.case_events(session, case=after, at=now, previous_state=case.state)
        return after


async def _credential_after(
    session: AsyncSession, *, case_id: str, decision: Decision, now: datetime, ttl: float | None
) -> None:
    """The reset step's outcome decides the temporary password's fate."""
    reset = next((c for c in decision.steps if c.name is StepName.reset_password), None)
    if reset is None:
        return
    row = await session.get(Credential, case_id)
    if row is None or row.destroyed_at is not None:
        return
    if reset.status is StepStatus.succeeded and row.applied_at is None:
        row.applied_at = now
        row.expires_at = now + timedelta(seconds=ttl or 86400)
        session.add(row)
        session.add(
            _event(case_id, now, "worker", "credential.available", detail={"expires_at": row.expires_at.isoformat()})
        )
    elif reset.status is StepStatus.failed:
        row.sealed = None
        row.destroyed_at = now
        row.destroyed_reason = "reset_failed"
        session.add(row)


async def record_late_result(
    db: Database, *, case_id: str, step: StepName, status: StepStatus, error: dict[str, Any] | None, now: datetime
) -> None:
    """A step finished after the case was cancelled under it: keep the fact, change no state."""
    for _ in range(3):
        async with db.write() as session:
            case = await _load(session, case_id)
            if not await _cas(session, case_id=case_id, version=case.version, values={"updated_at": now}):
                continue
            await _set_steps(session, case_id=case_id, changes={step.value: _step_values(status, error, now, False)})
            session.add(
                _event(case_id, now, "worker", "step.finished_late", step=step.value, detail={"status": status.value})
            )
            if step is StepName.reset_password and status is StepStatus.succeeded:
                row = await session.get(Credential, case_id)
                if row is not None and row.applied_at is None and row.destroyed_at is None:
                    row.applied_at = now
                    row.expires_at = now + timedelta(hours=24)
                    session.add(row)
            return


# --- a person's side ----------------------------------------------------------------------------------


async def apply_user_action(
    db: Database,
    *,
    case_id: str,
    decide: Callable[[CaseSnapshot], Decision],
    actor: str,
    now: datetime,
    event_type: str,
    detail: dict[str, Any] | None = None,
) -> CaseSnapshot:
    """Approve, cancel or retry: decided on the current case, written with compare-and-set."""
    for _ in range(5):
        async with db.write() as session:
            case = await _load(session, case_id)
            decision = decide(case)
            terminal = decision.state in TERMINAL_STATES
            values: dict[str, Any] = {
                "state": decision.state.value,
                "outcome": decision.outcome.value if decision.outcome else None,
                "is_open": not terminal,
                "last_error": decision.last_error,
                "next_action_at": decision.next_action_at,
                "updated_at": now,
                "finished_at": now if terminal else None,
            }
            if not terminal and not case.is_open:
                values["lease_owner"] = None
                values["lease_expires_at"] = None
                other = (
                    await session.exec(
                        select(Case.id).where(Case.mailbox == case.mailbox, col(Case.is_open), Case.id != case_id)
                    )
                ).first()
                if other is not None:
                    raise OpenCaseExists(other, f"{case.mailbox} has another open case; this one cannot reopen")
            won = await _cas(session, case_id=case_id, version=case.version, values=values)
            if not won:
                continue
            changes = {c.name.value: _step_values(c.status, c.error, now, c.reset_counters) for c in decision.steps}
            await _set_steps(session, case_id=case_id, changes=changes)
            session.add(_event(case_id, now, actor, event_type, detail=detail or {}))
            await audit.append(
                session,
                at=now,
                actor=actor,
                action=event_type,
                target=case_id,
                detail={"from_state": case.state, "to_state": decision.state.value, "mailbox": case.mailbox},
            )
            session.add(
                _event(
                    case_id,
                    now,
                    actor,
                    "state.changed",
                    from_state=case.state,
                    to_state=decision.state.value,
                    detail={"action": decision.action.value if decision.action else None, "summary": decision.summary},
                )
            )
            if decision.next_action_at is not None:
                await _notify(session, case_id)
            after = await _load(session, case_id)
            await outbox.case_events(session, case=after, at=now, previous_state=case.state)
            return after
    raise ConcurrentUpdate(f"case {case_id} kept changing; try again")
