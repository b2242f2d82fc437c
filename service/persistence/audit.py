"""The audit log: appended in the same transaction as the change it records, verified by hash chain."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from service.domain.audit import GENESIS, AuditEntry, Broken, chain_hash, verify
from service.persistence.db import Database
from service.persistence.models import AuditRecord

_CHAIN_LOCK = 0x61756474  # "audt"


async def append(
    session: AsyncSession, *, at: datetime, actor: str, action: str, target: str | None, detail: dict[str, Any]
) -> AuditRecord:
    """Add one record after the last; concurrent appends take turns (advisory lock / SQLite's writer lock)."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK})
    last = (await session.exec(select(AuditRecord).order_by(col(AuditRecord.seq).desc()).limit(1))).first()
    seq = (last.seq + 1) if last else 1
    previous = last.hash if last else GENESIS
    entry = AuditEntry(seq=seq, at=at.isoformat(), actor=actor, action=action, target=target, detail=detail)
    record = AuditRecord(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        target=target,
        detail=detail,
        prev_hash=previous,
        hash=chain_hash(previous, entry),
    )
    session.add(record)
    await session.flush()
    return record


def _entry(row: AuditRecord) -> AuditEntry:
    return AuditEntry(
        seq=row.seq, at=row.at.isoformat(), actor=row.actor, action=row.action, target=row.target, detail=row.detail
    )


async def check(db: Database) -> tuple[int, Broken | None]:
    async with db.read() as session:
        rows = (await session.exec(select(AuditRecord).order_by(col(AuditRecord.seq)))).all()
    return len(rows), verify([(_entry(r), r.prev_hash, r.hash) for r in rows])


async def recent(db: Database, *, limit: int = 50) -> list[AuditRecord]:
    async with db.read() as session:
        rows = (await session.exec(select(AuditRecord).order_by(col(AuditRecord.seq).desc()).limit(limit))).all()
    return list(reversed(rows))
