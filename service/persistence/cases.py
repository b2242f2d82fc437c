"""Cases: opening one (idempotently), and the worker's claims and leases.

What a case *does* is written by :mod:`service.persistence.writer` (the one writer of changes);
reads live in :mod:`service.persistence.snapshots`. Here: the create path with its
Idempotency-Key replay, and the leases that say which worker holds a case.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from service.errors import IdempotencyKeyReused, OpenCaseExists
from service.persistence.db import Database
from service.persistence.models import Case, IdempotencyRecord
from service.persistence.records import CaseSnapshot, Claim, Lease
from service.persistence.snapshots import CASES, CREDENTIALS, get_case, open_case_id, read_many_in
from service.persistence.writer import Build, NewCase, SealedSecret, insert_case


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
    claimed: Claim | None = None  # the case, when it was created held by the given lease


def request_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
    lease: Lease | None = None,
    then: Build | None = None,
) -> Stored:
    """Insert the case, its planned steps and its first event; store the response for replays.

    With ``lease`` the case is created held by that worker, and ``claimed`` says so (not on a replay);
    ``then`` is that worker's start of the first step, in the same transaction (:func:`insert_case`).
    """
    for attempt in range(2):
        try:
            return await _create_once(
                db, new=new, actor=actor, now=now, render=render, idempotency=idempotency, lease=lease, then=then
            )
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
    lease: Lease | None,
    then: Build | None,
) -> Stored:
    async with db.write() as session:
        if idempotency is not None and (stored := await _replay(session, idempotency)) is not None:
            return stored
        snapshot = await insert_case(session, new=new, actor=actor, now=now, lease=lease, then=then)
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
        claimed = Claim(case_id=snapshot.id, version=snapshot.version, case=snapshot) if lease is not None else None
        return Stored(status_code=201, body=body, location=location, replayed=False, claimed=claimed)


# --- the worker's side --------------------------------------------------------------------------------


async def claim_due(db: Database, *, worker_id: str, now: datetime, lease: float, limit: int) -> list[Claim]:
    """Lease up to ``limit`` open cases whose next action is due and that nobody holds.

    Work a dead worker left half-done (its lease ran out) comes first. Then tenants take turns:
    each tenant's due cases are numbered in their own order (by due time), and the claim takes
    every tenant's first before anyone's second. One tenant's incident (hundreds of cases due at
    once) cannot make another tenant's single case wait behind it.
    """
    due_now = (
        col(Case.is_open),
        col(Case.next_action_at).is_not(None),
        col(Case.next_action_at) <= now,
        (col(Case.lease_expires_at).is_(None)) | (col(Case.lease_expires_at) < now),
    )
    own_order = (col(Case.lease_expires_at).is_(None), col(Case.next_action_at))
    turns = (
        select(
            col(Case.id).label("id"),
            func.row_number().over(partition_by=func.coalesce(col(Case.tenant), ""), order_by=own_order).label("turn"),
        )
        .where(*due_now)
        .subquery()
    )
    due = (
        select(Case.id)
        .join(turns, turns.c.id == col(Case.id))
        # A dead worker's half-done work first, whichever tenant it is; then the tenants' turns.
        .order_by(col(Case.lease_expires_at).is_(None), turns.c.turn, col(Case.next_action_at))
        .limit(limit)
        .with_for_update(skip_locked=True, of=Case)
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
        claimed = {case.id: case for case in await read_many_in(session, [str(r[0]) for r in rows])}
    return [Claim(case_id=str(r[0]), version=int(r[1]), case=claimed[str(r[0])]) for r in rows]


async def next_due_at(db: Database, *, now: datetime) -> datetime | None:
    """When the next case becomes due (a scheduled action, or a lease that runs out)."""
    c = CASES.c
    statement = sa_select(
        sa_select(func.min(c.next_action_at))
        .where(c.is_open, c.next_action_at.is_not(None), c.lease_expires_at.is_(None) | (c.lease_expires_at < now))
        .scalar_subquery(),
        sa_select(func.min(c.lease_expires_at))
        .where(c.is_open, c.next_action_at.is_not(None), c.lease_expires_at >= now)
        .scalar_subquery(),
    )
    async with db.connect_read() as connection:  # one statement, no transaction to open and roll back
        scheduled, leased = (await connection.execute(statement)).one()
    candidates = [t for t in (scheduled, leased) if t is not None]
    return min(candidates) if candidates else None


async def load_claimed(db: Database, *, case_id: str) -> CaseSnapshot:
    return await get_case(db, case_id=case_id)


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


async def load_secret(db: Database, *, case_id: str) -> SealedSecret | None:
    c = CREDENTIALS.c
    async with db.connect_read() as connection:
        row = (
            await connection.execute(
                sa_select(c.key_id, c.sealed).where(
                    c.case_id == case_id, c.sealed.is_not(None), c.destroyed_at.is_(None)
                )
            )
        ).first()
    return None if row is None else SealedSecret(key_id=row.key_id, blob=bytes(row.sealed))
