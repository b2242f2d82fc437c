"""The one writer of case changes: a :class:`CaseChange` in, one transaction out.

Every path that changes a case (the worker starting or finishing a step, a person approving,
cancelling or retrying, a step finishing after a cancel, a password revealed or expired) is
decided in :mod:`service.domain.timeline` as a CaseChange, and written here: one
compare-and-set on the case's ``version`` (and, for the worker, its lease), the case's fields,
its step rows, what happens to the sealed password, the timeline events, the audit record and
the webhook events, all in the same transaction. This module decides nothing; it is the only
place that inserts timeline events and the only one that performs the compare-and-set.

The compare-and-set policy (:func:`change_case`): decide on the case as read, write if nobody
changed it since, otherwise read it again and decide again, at most :data:`CAS_ATTEMPTS` times;
then give up loudly with :class:`~service.errors.ConcurrentUpdate`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, bindparam, func
from sqlalchemy import insert as sa_insert
from sqlalchemy import select as sa_select
from sqlalchemy import update as sa_update
from sqlmodel.ext.asyncio.session import AsyncSession

from service.domain.audit import AuditSigner
from service.domain.credential import CredentialView
from service.domain.plan import Actions, build_plan
from service.domain.states import DONE_STATUSES, TERMINAL_STATES, CaseState, StepStatus
from service.domain.timeline import (
    CaseChange,
    CredentialChange,
    CredentialMove,
    EventType,
    StepWrite,
    TimelineEvent,
    WebhookEventType,
    case_opened,
    tenant_assigned,
    webhooks_of,
)
from service.errors import ConcurrentUpdate, OpenCaseExists
from service.logging import get_logger
from service.persistence import audit, outbox
from service.persistence.db import Database
from service.persistence.models import Case, Credential
from service.persistence.records import CaseSnapshot, Lease, StepRecord, case_document, render_document
from service.persistence.snapshots import (
    CASE_COLUMNS,
    CASES,
    CREDENTIALS,
    EVENTS,
    STEPS,
    open_case_in,
    read_in,
    snapshot_from,
    step_record,
)

log = get_logger(__name__)

#: How many times a change is decided and written before a case that keeps changing is given up on.
CAS_ATTEMPTS = 5
#: The PostgreSQL channel that wakes workers when a case becomes due.
NOTIFY_CHANNEL = "unblock_work"
#: The PostgreSQL channel that tells live views (SSE, the dashboard) in other processes a case changed.
CASE_CHANNEL = "unblock_cases"
#: This process, in :data:`CASE_CHANNEL` payloads: its own changes reach its views in-process.
PROCESS_TAG = os.urandom(6).hex()

_CREDENTIAL_EVENTS = frozenset(
    {EventType.credential_available, EventType.credential_revealed, EventType.credential_expired}
)


@dataclass(frozen=True, slots=True)
class SealedSecret:
    key_id: str
    blob: bytes


@dataclass(frozen=True, slots=True)
class Written:
    """A change that was written: the case after it, and what it took out of the credential store."""

    case: CaseSnapshot
    change: CaseChange
    secret: SealedSecret | None = None  # the sealed password a reveal handed out
    then: Written | None = None  # the change ``then`` made in the same transaction, if any


Build = Callable[[CaseSnapshot], CaseChange | None]
Along = Callable[[AsyncSession], Awaitable[None]]
Decided = Callable[[CaseSnapshot, CaseChange], None]


async def change_case(
    db: Database,
    *,
    case_id: str,
    build: Build,
    now: datetime,
    signer: AuditSigner | None = None,
    lease_owner: str | None = None,
    known: CaseSnapshot | None = None,
    then: Build | None = None,
    along: Along | None = None,
    decided: Decided | None = None,
) -> Written | None:
    """Decide (``build``) on the case and write the change, under the one compare-and-set policy.

    ``known`` is the case as the caller last read it: the first decision is made on it without
    reading again (the worker's common case). ``build`` returns None when there is nothing to
    write (the case moved on so that the caller's change no longer applies); so does this.
    ``lease_owner``: the change must be made by the worker holding the case's lease.

    ``then`` decides a second change on the case as the first left it, written in the same
    transaction (the worker records a step's result and starts the next step in one commit).
    The first change holds the case's row, so the second's compare-and-set cannot lose; the
    stored document is rendered once, from the case as the transaction leaves it.

    ``along`` writes what else belongs with the change (not the case's own rows: the worker's
    note of what a step saw of the restricted list) in the same transaction, once the change is
    written; it must not fail the change.

    ``decided`` is told each change ``build`` returns (with the case it was decided on) before
    any of it is written, so the caller can start what does not wait for the commit: the worker
    sends a read the change makes due (see :func:`service.domain.decide.due_after`). It may be
    told again, of another change, when the compare-and-set loses; it must not fail.
    """
    for attempt in range(CAS_ATTEMPTS):
        async with db.write() as session:
            case = known if attempt == 0 and known is not None else await read_in(session, case_id)
            change = build(case)
            if change is None:
                return None
            if decided is not None:
                decided(case, change)
            # With ``then``, both changes' timeline rows go in one INSERT at the end, in order.
            timeline: list[TimelineEvent] = []
            written = await write_change(
                session, case, change, now=now, signer=signer, lease_owner=lease_owner, timeline=timeline
            )
            if written is None:
                continue
            if along is not None:
                await along(session)
            follow = then(written.case) if then is not None else None
            followed = None
            if follow is not None:
                followed = await write_change(
                    session, written.case, follow, now=now, signer=signer, lease_owner=lease_owner, timeline=timeline
                )
                if followed is None:  # cannot happen while the first change holds the row; never half-write
                    raise AssertionError(f"case {case_id} changed inside the transaction that changed it")
            final = followed.case if followed is not None else written.case
            workers = change.notify or (follow is not None and follow.notify)
            await finish_write(session, final, at=now, events=timeline, workers=workers)
            return Written(written.case, written.change, written.secret, then=followed)
    log.error("case_kept_changing", case_id=case_id, attempts=CAS_ATTEMPTS)
    raise ConcurrentUpdate(f"case {case_id} changed {CAS_ATTEMPTS} times while this change was being made; try again")


async def write_change(
    session: AsyncSession,
    case: CaseSnapshot,
    change: CaseChange,
    *,
    now: datetime,
    signer: AuditSigner | None,
    lease_owner: str | None,
    timeline: list[TimelineEvent],
) -> Written | None:
    """Write ``change`` to ``case`` in the caller's transaction; None if the compare-and-set lost.

    The change's timeline events are added to ``timeline``. The caller ends the transaction's
    writing with :func:`finish_write`, once per transaction however many changes it made: the
    timeline rows in one INSERT, the case's document as the last change left it, and the word to
    other processes.
    """
    if change.before in TERMINAL_STATES and change.after not in TERMINAL_STATES:
        other = await open_case_in(session, mailbox=case.mailbox, other_than=case.id)
        if other is not None:
            raise OpenCaseExists(other, f"{case.mailbox} has another open case; this one cannot reopen")
    holder = lease_owner if change.lease is not None else None
    row = await _cas(session, case=case, values=_case_values(change, now, lease_owner), lease_owner=holder)
    if row is None:
        return None
    steps = await _set_steps(session, case=case, writes=change.steps, now=now)
    moved, secret, credential = await _move_credential(session, case=case, credential=change.credential, now=now)
    # The case as written, from what the statements returned: no read back.
    after = snapshot_from(row, steps, credential)
    events = change.events if moved else tuple(e for e in change.events if e.type not in _CREDENTIAL_EVENTS)
    timeline.extend(events)
    if change.audit is not None:
        if signer is None:
            raise AssertionError("a change with an audit note needs the audit signer")
        await audit.append(
            session,
            signer=signer,
            at=now,
            actor=change.audit.actor,
            action=change.audit.action,
            target=case.id,
            detail=change.audit.detail,
        )
    await _emit_webhooks(session, after, change, events, now)
    return Written(after, change, secret)


async def finish_write(
    session: AsyncSession, case: CaseSnapshot, *, at: datetime, events: Iterable[TimelineEvent], workers: bool
) -> None:
    """The end of every write of a case, once per transaction: its timeline rows, its document, the word.

    The document is the case's served JSON as the transaction leaves it (``case``), kept with its
    version in the transaction that made the version: every write of a case passes here, so the
    stored document is never older than the rows it is rendered from, and reads serve it as is.

    On PostgreSQL the same statement tells the other processes' live views that the case changed
    (and, with ``workers``, wakes the workers too) when the transaction commits: ``pg_notify`` in
    the UPDATE's RETURNING, one round trip for both. The payload names this process
    (:data:`PROCESS_TAG`), whose own views are told in-process. Elsewhere views poll.
    """
    await insert_events(session, case_id=case.id, at=at, events=events)
    connection = await session.connection()
    params: dict[str, Any] = {"w_id": case.id, "v_document": render_document(case_document(case))}
    if connection.dialect.name != "postgresql":
        await connection.execute(_STORE_DOCUMENT, params)
        return
    params.update(cases=CASE_CHANNEL, change=f"{case.id} {PROCESS_TAG}")
    if workers:
        params.update(work=NOTIFY_CHANNEL, case_id=case.id)
        await connection.execute(_STORE_DOCUMENT_WAKING_ALL, params)
    else:
        await connection.execute(_STORE_DOCUMENT_WAKING_VIEWS, params)


# The statements of a step boundary are built once per shape (which columns a change sets) and
# reused: building and cache-keying a Core statement cost more CPU than PostgreSQL spends running
# it, and the worker runs them between two of a case's commands.
_STORE_DOCUMENT = (
    sa_update(CASES)
    .where(CASES.c.id == bindparam("w_id"))
    .values(document=bindparam("v_document", type_=CASES.c.document.type))
)
_VIEWS_TOLD = func.pg_notify(bindparam("cases", type_=String), bindparam("change", type_=String))
_WORKERS_WOKEN = func.pg_notify(bindparam("work", type_=String), bindparam("case_id", type_=String))
_STORE_DOCUMENT_WAKING_VIEWS = _STORE_DOCUMENT.returning(_VIEWS_TOLD)
_STORE_DOCUMENT_WAKING_ALL = _STORE_DOCUMENT.returning(_VIEWS_TOLD, _WORKERS_WOKEN)


@functools.cache
def _cas_statement(columns: tuple[str, ...], leased: bool) -> Any:
    """UPDATE cases SET ``columns`` WHERE id, version (and lease owner) match, RETURNING the row."""
    c = CASES.c
    statement = sa_update(CASES).where(c.id == bindparam("w_id"), c.version == bindparam("w_version"))
    if leased:
        statement = statement.where(c.lease_owner == bindparam("w_owner"))
    values = {name: bindparam(f"v_{name}", type_=c[name].type) for name in columns}
    return statement.values(values).returning(*CASE_COLUMNS)


@functools.cache
def _step_statement(columns: tuple[str, ...]) -> Any:
    """UPDATE case_steps SET ``columns`` for one step of one case, RETURNING the row."""
    s = STEPS.c
    values = {name: bindparam(f"v_{name}", type_=s[name].type) for name in columns}
    return (
        sa_update(STEPS)
        .where(s.case_id == bindparam("w_case_id"), s.name == bindparam("w_name"))
        .values(values)
        .returning(*STEPS.c)
    )


def _case_values(change: CaseChange, now: datetime, lease_owner: str | None) -> dict[str, Any]:
    values: dict[str, Any] = {"updated_at": now}
    if change.changes_state:
        terminal = change.after in TERMINAL_STATES
        values.update(state=change.after.value, is_open=not terminal, finished_at=now if terminal else None)
    decision = change.decision
    if decision is not None:
        terminal = decision.state in TERMINAL_STATES
        values.update(
            state=decision.state.value,
            outcome=decision.outcome.value if decision.outcome else None,
            is_open=not terminal,
            last_error=decision.last_error,
            next_action_at=decision.next_action_at,
            finished_at=now if terminal else None,
        )
        if decision.restriction is not None:
            values["restriction"] = decision.restriction
        if decision.sending_restored_by is not None:
            values["sending_restored_by"] = decision.sending_restored_by
        if decision.findings is not None:
            values["findings"] = [finding.as_dict() for finding in decision.findings]
    if change.lease is not None:
        until = change.lease.until
        values.update(lease_owner=lease_owner if until is not None else None, lease_expires_at=until)
    return values


async def _cas(
    session: AsyncSession, *, case: CaseSnapshot, values: dict[str, Any], lease_owner: str | None
) -> Any | None:
    """The compare-and-set: the row changes only if nobody changed it since ``case`` was read.

    Returns the row as written (None if the compare-and-set lost), so the case need not be read back.
    """
    # Core, not an ORM bulk update: no identity-map synchronisation to pay for (snapshots are
    # read back as rows, so no ORM Case objects are kept in the session).
    values = {**values, "version": case.version + 1}
    statement = _cas_statement(tuple(values), lease_owner is not None)
    params = {f"v_{name}": value for name, value in values.items()}
    params.update(w_id=case.id, w_version=case.version)
    if lease_owner is not None:
        params["w_owner"] = lease_owner
    connection = await session.connection()
    result = await connection.execute(statement, params)
    return result.first()


def _step_values(write: StepWrite, now: datetime) -> dict[str, Any]:
    if write.attempts is not None:  # a start: count the attempt; the last error stays visible
        values: dict[str, Any] = {"status": write.status.value, "attempts": write.attempts}
        if write.started:
            values["started_at"] = now
        return values
    values = {"status": write.status.value, "error": write.error}
    if write.status in DONE_STATUSES or write.status is StepStatus.failed:
        values["finished_at"] = now
    if write.status is StepStatus.succeeded:
        values.update(failures=0, error=None)
    if write.reset_counters:
        values.update(attempts=0, failures=0, started_at=None, finished_at=None, error=None)
    if write.failures is not None:
        values["failures"] = write.failures
    return values


async def _set_steps(
    session: AsyncSession, *, case: CaseSnapshot, writes: Iterable[StepWrite], now: datetime
) -> list[StepRecord]:
    """Write the change's steps; the case's steps as they now are (the others as ``case`` had them)."""
    connection = await session.connection()
    steps = {step.name: step for step in case.steps}
    for write in writes:
        values = _step_values(write, now)
        params = {f"v_{name}": value for name, value in values.items()}
        params.update(w_case_id=case.id, w_name=write.name.value)
        row = (await connection.execute(_step_statement(tuple(values)), params)).first()
        if row is None:  # every case has every step of its plan from the start
            raise AssertionError(f"case {case.id} has no step {write.name.value}")
        steps[write.name] = step_record(row)
    return list(steps.values())


async def _move_credential(
    session: AsyncSession, *, case: CaseSnapshot, credential: CredentialChange | None, now: datetime
) -> tuple[bool, SealedSecret | None, CredentialView | None]:
    """Apply the change's credential move: did it change anything, the sealed value a reveal took,
    and the credential as it now is."""
    if credential is None:
        return False, None, case.credential
    connection = await session.connection()
    row = None
    if case.credential is not None:  # the case as compared-and-set: it has no credential row otherwise
        found = (await connection.execute(_CREDENTIAL_FOR_UPDATE, {"case_id": case.id})).first()
        # A detached model as the row's values: _move decides on it, Core writes it (no unit of work).
        row = Credential(**found._mapping) if found is not None else None
    existed = row is not None
    moved, secret = _move(row, credential, case_id=case.id, now=now)
    if moved is not None:
        row = moved
        values = {name: getattr(row, name) for name in _CREDENTIAL_FIELDS}
        if existed:
            params = {f"v_{name}": value for name, value in values.items()}
            await connection.execute(_UPDATE_CREDENTIAL, {"w_case_id": case.id, **params})
        else:
            await connection.execute(_INSERT_CREDENTIAL, {"case_id": case.id, **values})
    return moved is not None, secret, _view(row)


_CREDENTIAL_FOR_UPDATE = sa_select(CREDENTIALS).where(CREDENTIALS.c.case_id == bindparam("case_id")).with_for_update()
#: Every column of a credential but its key, as a move leaves them.
_CREDENTIAL_FIELDS = tuple(c.name for c in CREDENTIALS.c if c.name != "case_id")
_INSERT_CREDENTIAL = sa_insert(CREDENTIALS)
_UPDATE_CREDENTIAL = (
    sa_update(CREDENTIALS)
    .where(CREDENTIALS.c.case_id == bindparam("w_case_id"))
    .values({name: bindparam(f"v_{name}", type_=CREDENTIALS.c[name].type) for name in _CREDENTIAL_FIELDS})
)


def _move(
    row: Credential | None, credential: CredentialChange, *, case_id: str, now: datetime
) -> tuple[Credential | None, SealedSecret | None]:
    """The credential row after the move (None if the move changes nothing), and what a reveal took."""
    move = credential.move
    if move is CredentialMove.store:
        if row is None:
            return Credential(case_id=case_id, key_id=credential.key_id, sealed=credential.sealed, created_at=now), None
        row.key_id, row.sealed, row.created_at = credential.key_id, credential.sealed, now
        row.applied_at = row.expires_at = row.revealed_at = row.destroyed_at = None
        row.revealed_by = row.destroyed_reason = None
        return row, None
    if row is None or row.destroyed_at is not None:
        return None, None
    secret = None
    if move is CredentialMove.apply:
        if row.applied_at is not None:
            return None, None
        row.applied_at, row.expires_at = now, credential.expires_at
    elif move is CredentialMove.reveal:
        if row.sealed is None:
            return None, None
        secret = SealedSecret(row.key_id, bytes(row.sealed))
        row.sealed, row.revealed_at, row.revealed_by = None, now, credential.by
        row.destroyed_at, row.destroyed_reason = now, "revealed"
    else:  # destroy, expire
        row.sealed, row.destroyed_at, row.destroyed_reason = None, now, credential.reason
    return row, secret


def _view(row: Credential | None) -> CredentialView | None:
    if row is None:
        return None
    return CredentialView(
        applied=row.applied_at is not None,
        expires_at=row.expires_at,
        revealed_at=row.revealed_at,
        revealed_by=row.revealed_by,
        destroyed_at=row.destroyed_at,
        destroyed_reason=row.destroyed_reason,
    )


async def insert_events(session: AsyncSession, *, case_id: str, at: datetime, events: Iterable[TimelineEvent]) -> None:
    """The timeline rows of a change (the only place that writes them), in the order given."""
    rows = [
        {
            "case_id": case_id,
            "at": at,
            "actor": event.actor,
            "type": event.type.value,
            "from_state": event.from_state.value if event.from_state else None,
            "to_state": event.to_state.value if event.to_state else None,
            "step": event.step.value if event.step else None,
            "detail": event.detail,
        }
        for event in events
    ]
    if not rows:
        return
    # Core, one statement: no ORM unit of work to run. Several rows go as one INSERT ... VALUES
    # (SQLAlchemy's "insertmanyvalues", which it uses for an executemany with RETURNING), in the
    # order given, so their ids keep the timeline's order; a plain executemany would send each row
    # as a statement of its own.
    connection = await session.connection()
    if len(rows) == 1:
        await connection.execute(_INSERT_EVENT, rows[0])
    else:
        await connection.execute(_INSERT_EVENTS, rows)


_INSERT_EVENT = sa_insert(EVENTS)
_INSERT_EVENTS = sa_insert(EVENTS).returning(EVENTS.c.id)
_INSERT_STEPS = sa_insert(STEPS).returning(STEPS.c.name)


async def _emit_webhooks(
    session: AsyncSession, case: CaseSnapshot, change: CaseChange, written: tuple[TimelineEvent, ...], now: datetime
) -> None:
    sent = webhooks_of(CaseChange(change.before, change.after, events=written), at=outbox.timestamp(now))
    if not sent:
        return
    document = case_document(case)
    for kind, extra in sent:
        await outbox.emit(
            session,
            type=kind.value,
            at=now,
            data={"case": document, **extra},
            case_id=case.id,
            ordering_key=f"case:{case.id}",
            tenant=case.tenant,
        )


@dataclass(frozen=True, slots=True)
class NewCase:
    mailbox: str
    ticket_ref: str | None
    requested_by: str | None
    note: str | None
    actions: Actions
    require_approval: bool
    created_by_kind: str | None = None
    created_by_id: str | None = None
    tenant: str | None = None


async def insert_case(
    session: AsyncSession,
    *,
    new: NewCase,
    actor: str,
    now: datetime,
    lease: Lease | None = None,
    then: Build | None = None,
) -> CaseSnapshot:
    """Within a caller's transaction: the case, its planned steps, its first event and case.created.

    ``lease``: the case is created already held by that worker (the worker in the creating process,
    which starts on it at once instead of claiming it). ``then`` (with ``lease``): that worker's
    start of the first step, decided on the case as inserted and written in the same transaction,
    so the first command waits for one commit, not two. Returns the case as the transaction
    leaves it.
    """
    existing = await open_case_in(session, mailbox=new.mailbox)
    if existing is not None:
        raise OpenCaseExists(existing, f"{new.mailbox} already has an open case")
    case = Case(
        mailbox=new.mailbox,
        tenant=new.tenant,
        state=CaseState.received.value,
        ticket_ref=new.ticket_ref,
        requested_by=new.requested_by,
        note=new.note,
        actions=new.actions.as_dict(),
        require_approval=new.require_approval,
        next_action_at=now,
        created_by=actor,
        created_by_kind=new.created_by_kind,
        created_by_id=new.created_by_id,
        created_at=now,
        updated_at=now,
        lease_owner=lease.owner if lease is not None else None,
        lease_expires_at=lease.until if lease is not None else None,
    )
    # Core with RETURNING: the case as stored (JSON as the database gives it back), no read back.
    connection = await session.connection()
    row = (
        await connection.execute(
            sa_insert(CASES)
            .values(**{k: v for k, v in case.model_dump(exclude={"document"}).items() if v is not None})
            .returning(*CASE_COLUMNS)
        )
    ).one()
    plan = build_plan(new.actions)
    steps = [
        StepRecord(
            name=step,
            position=i,
            status=StepStatus.pending,
            attempts=0,
            failures=0,
            started_at=None,
            finished_at=None,
            error=None,
        )
        for i, step in enumerate(plan)
    ]
    await connection.execute(
        _INSERT_STEPS,  # one INSERT for every step (insertmanyvalues), not a statement per step
        [
            {
                "case_id": case.id,
                "name": s.name.value,
                "position": s.position,
                "status": s.status.value,
                "attempts": 0,
                "failures": 0,
            }
            for s in steps
        ],
    )
    opened = case_opened(
        mailbox=new.mailbox,
        ticket_ref=new.ticket_ref,
        actions=new.actions.as_dict(),
        plan=[s.value for s in plan],
        actor=actor,
    )
    snapshot = snapshot_from(row, steps, None)
    await outbox.emit(  # before the first step's start emits its own
        session,
        type=WebhookEventType.case_created.value,
        at=now,
        data={"case": case_document(snapshot)},
        case_id=case.id,
        ordering_key=f"case:{case.id}",
        tenant=snapshot.tenant,
    )
    timeline: list[TimelineEvent] = [opened]
    start = then(snapshot) if then is not None and lease is not None else None
    if start is not None:
        started = await write_change(
            session,
            snapshot,
            start,
            now=now,
            signer=None,
            lease_owner=lease.owner if lease else None,
            timeline=timeline,
        )
        if started is None:  # nobody else can see the case before this transaction commits
            raise AssertionError(f"case {case.id} changed inside the transaction that created it")
        snapshot = started.case
    # A case created held by a worker is that worker's: the other workers need not look.
    await finish_write(session, snapshot, at=now, events=timeline, workers=lease is None)
    return snapshot


async def assign_tenant(db: Database, *, case_id: str, tenant: str, now: datetime) -> bool:
    """Set the tenant of a case intake could not place, once (only while it has none), with its event.

    The tenant is written once and never changed, so this does not take part in the case's
    compare-and-set (its version stays): a worker holding the case's lease goes on with its step.
    """
    async with db.write() as session:
        connection = await session.connection()
        c = CASES.c
        result = await connection.execute(
            sa_update(CASES).where(c.id == case_id, c.tenant.is_(None)).values(tenant=tenant, updated_at=now)
        )
        if result.rowcount != 1:
            return False
        case = await read_in(session, case_id)
        await finish_write(session, case, at=now, events=(tenant_assigned(tenant),), workers=False)
    return True
