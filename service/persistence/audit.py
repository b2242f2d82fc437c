"""The audit log: appended in the same transaction as the change it records, verified by keyed MAC chain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from service.domain.audit import (
    GENESIS,
    Actor,
    AuditEntry,
    AuditSigner,
    Broken,
    ChainedEntry,
    Head,
    verify,
)
from service.persistence.db import Database
from service.persistence.models import AuditRecord

_CHAIN_LOCK = 0x61756474  # "audt"


async def append(
    session: AsyncSession,
    *,
    signer: AuditSigner,
    at: datetime,
    actor: Actor,
    action: str,
    target: str | None,
    detail: dict[str, Any],
) -> AuditRecord:
    """Add one record after the last; concurrent appends take turns (advisory lock / SQLite's writer lock)."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK})
    last = (await session.exec(select(AuditRecord).order_by(col(AuditRecord.seq).desc()).limit(1))).first()
    seq = (last.seq + 1) if last else 1
    previous = last.hash if last else GENESIS
    entry = AuditEntry(seq=seq, at=at.isoformat(), actor=actor, action=action, target=target, detail=detail)
    seal = signer.sign(previous, entry)
    record = AuditRecord(
        seq=seq,
        at=at,
        actor=actor.name,
        actor_kind=str(actor.kind),
        actor_id=actor.id,
        action=action,
        target=target,
        detail=detail,
        prev_hash=previous,
        hash=seal.mac,
        key_id=seal.key_id,
    )
    session.add(record)
    await session.flush()
    return record


def _chained(row: AuditRecord) -> ChainedEntry:
    entry = AuditEntry(
        seq=row.seq,
        at=row.at.isoformat(),
        # The kind as stored, even one this version does not know: the MAC covers the stored text.
        actor=Actor(kind=row.actor_kind, id=row.actor_id, name=row.actor),
        action=row.action,
        target=row.target,
        detail=row.detail,
    )
    return ChainedEntry(entry=entry, key_id=row.key_id, prev_mac=row.prev_hash, mac=row.hash)


@dataclass(frozen=True, slots=True)
class ChainReport:
    count: int
    broken: Broken | None  # the first record that does not verify; None: the chain is intact
    head: Head | None  # the newest record of the rows checked (None: the log is empty)


async def check(db: Database, *, signer: AuditSigner, expect: Head | None = None) -> ChainReport:
    """Verify the whole chain as one snapshot, so the head reported is one that was verified."""
    async with db.read() as session:
        rows = (await session.exec(select(AuditRecord).order_by(col(AuditRecord.seq)))).all()
    head = Head(rows[-1].seq, rows[-1].hash) if rows else None
    return ChainReport(len(rows), verify([_chained(r) for r in rows], signer, expect=expect), head)


async def recent(db: Database, *, limit: int = 50) -> list[AuditRecord]:
    async with db.read() as session:
        rows = (await session.exec(select(AuditRecord).order_by(col(AuditRecord.seq).desc()).limit(limit))).all()
    return list(reversed(rows))
