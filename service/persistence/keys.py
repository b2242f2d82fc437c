"""API key rows: create, list, revoke, look up by prefix, note last use."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select, update

from service.domain.audit import SYSTEM, Actor, AuditSigner
from service.errors import ApiKeyNameTaken, ApiKeyNotFound, InvalidInput
from service.persistence import audit, ui_sessions
from service.persistence.db import Database
from service.persistence.models import ApiKey
from service.persistence.types import utcnow

# How PostgreSQL (the index's name) and SQLite (table.column) report a duplicate name.
_NAME_INDEX = re.compile(r"uq_api_keys_name|api_keys\.name")

if TYPE_CHECKING:
    from sqlmodel.ext.asyncio.session import AsyncSession


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
    tenants: tuple[str, ...] | None = None  # the tenants it may see; None: every tenant

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
        tenants=tuple(row.tenants) if row.tenants is not None else None,
    )


async def create_key(
    db: Database,
    *,
    name: str,
    prefix: str,
    key_hash: str,
    scopes: list[str],
    expires_at: datetime | None = None,
    tenants: list[str] | None = None,
    actor: Actor = SYSTEM,
    signer: AuditSigner,
) -> KeyRecord:
    """A new key; its name must be free (ApiKeyNameTaken), even among revoked keys, since the
    audit log keeps naming them."""
    now = utcnow()
    if tenants is not None and "admin" in scopes:
        raise InvalidInput("a key limited to tenants cannot hold admin (admin sees every tenant)", field="scope")
    row = ApiKey(
        name=name,
        prefix=prefix,
        key_hash=key_hash,
        scopes=scopes,
        created_at=now,
        expires_at=expires_at,
        tenants=sorted(set(tenants)) if tenants is not None else None,
    )
    try:
        async with db.write() as session:
            if (await session.exec(select(ApiKey.id).where(ApiKey.name == name))).first() is not None:
                raise ApiKeyNameTaken(f"an API key named {name!r} already exists; choose another name")
            session.add(row)
            await session.flush()
            await _created(session, row, signer=signer, actor=actor, now=now)
    except IntegrityError as error:  # two creates with one name at once: the unique index decides
        if not _NAME_INDEX.search(str(error.orig)):
            raise
        raise ApiKeyNameTaken(f"an API key named {name!r} already exists; choose another name") from error
    return _record(row)


async def _created(session: AsyncSession, row: ApiKey, *, signer: AuditSigner, actor: Actor, now: datetime) -> None:
    await audit.append(
        session,
        signer=signer,
        at=now,
        actor=actor,
        action="api_key.created",
        target=row.id,
        detail={
            "name": row.name,
            "prefix": row.prefix,
            "scopes": list(row.scopes),
            "tenants": row.tenants,
            "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        },
    )


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


async def revoke_key(db: Database, *, key_id: str, signer: AuditSigner, actor: Actor = SYSTEM) -> KeyRecord:
    async with db.write() as session:
        row = await session.get(ApiKey, key_id)
        if row is None:
            row = (await session.exec(select(ApiKey).where(ApiKey.prefix == key_id))).first()
        if row is None:
            raise ApiKeyNotFound(f"no API key has id or prefix {key_id!r}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            session.add(row)
            await ui_sessions.revoke_for_key(session, key_id=row.id, now=row.revoked_at)
            await audit.append(
                session,
                signer=signer,
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
