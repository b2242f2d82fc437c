"""API key rows: create, list, revoke, look up by prefix, note last use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, select, update

from service.errors import ApiKeyNotFound
from service.persistence import audit
from service.persistence.db import Database
from service.persistence.models import ApiKey
from service.persistence.types import utcnow


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    prefix: str
    key_hash: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


def _record(row: ApiKey) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        key_hash=row.key_hash,
        scopes=tuple(row.scopes),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


async def create_key(
    db: Database,
    *,
    name: str,
    prefix: str,
    key_hash: str,
    scopes: list[str],
    expires_at: datetime | None = None,
    actor: str = "system",
) -> KeyRecord:
    now = utcnow()
    row = ApiKey(name=name, prefix=prefix, key_hash=key_hash, scopes=scopes, created_at=now, expires_at=expires_at)
    async with db.write() as session:
        session.add(row)
        await session.flush()
        await audit.append(
            session,
            at=now,
            actor=actor,
            action="api_key.created",
            target=row.id,
            detail={
                "name": name,
                "prefix": prefix,
                "scopes": list(scopes),
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
    return _record(row)


async def list_keys(db: Database) -> list[KeyRecord]:
    async with db.read() as session:
        rows = await session.exec(select(ApiKey).order_by(col(ApiKey.created_at)))
        return [_record(r) for r in rows]


async def get_key(db: Database, *, key_id: str) -> KeyRecord | None:
    async with db.read() as session:
        row = await session.get(ApiKey, key_id)
        return _record(row) if row else None


async def find_by_prefix(db: Database, *, prefix: str) -> KeyRecord | None:
    async with db.read() as session:
        row = (await session.exec(select(ApiKey).where(ApiKey.prefix == prefix))).first()
        return _record(row) if row else None


async def revoke_key(db: Database, *, key_id: str, actor: str = "system") -> KeyRecord:
    async with db.write() as session:
        row = await session.get(ApiKey, key_id)
        if row is None:
            row = (await session.exec(select(ApiKey).where(ApiKey.prefix == key_id))).first()
        if row is None:
            raise ApiKeyNotFound(f"no API key has id or prefix {key_id!r}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            session.add(row)
            await audit.append(
                session,
                at=row.revoked_at,
                actor=actor,
                action="api_key.revoked",
                target=row.id,
                detail={"name": row.name, "prefix": row.prefix},
            )
        return _record(row)


async def touch(db: Database, *, key_id: str, now: datetime, every: timedelta = timedelta(minutes=1)) -> None:
    """Record use at most once a minute per key, so reads do not turn into writes."""
    async with db.write() as session:
        await session.exec(
            update(ApiKey)
            .where(col(ApiKey.id) == key_id)
            .where((col(ApiKey.last_used_at).is_(None)) | (col(ApiKey.last_used_at) < now - every))
            .values(last_used_at=now)
        )
