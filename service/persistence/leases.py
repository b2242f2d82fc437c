"""Named leases: one holder at a time across processes, taken over when it runs out."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text

from service.persistence.db import Database

_ACQUIRE = text(
    """
    INSERT INTO leases (name, owner, expires_at) VALUES (:name, :owner, :until)
    ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
    WHERE leases.owner = excluded.owner OR leases.expires_at IS NULL OR leases.expires_at < :now
    RETURNING owner
    """
)


async def acquire(db: Database, *, name: str, owner: str, now: datetime, ttl: float) -> bool:
    """Take or renew the lease; False while someone else holds it."""
    from service.persistence.types import UTCDateTime

    dialect = db.engine.dialect
    column = UTCDateTime()
    params = {
        "name": name,
        "owner": owner,
        "until": column.process_bind_param(now + timedelta(seconds=ttl), dialect),
        "now": column.process_bind_param(now, dialect),
    }
    async with db.write() as session:
        connection = await session.connection()
        row = (await connection.execute(_ACQUIRE, params)).first()
    return row is not None and row[0] == owner


async def release(db: Database, *, name: str, owner: str) -> None:
    async with db.write() as session:
        connection = await session.connection()
        await connection.execute(
            text("UPDATE leases SET owner = NULL, expires_at = NULL WHERE name = :name AND owner = :owner"),
            {"name": name, "owner": owner},
        )
