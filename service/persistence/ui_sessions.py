"""Dashboard sessions, kept server-side: the cookie names a session; the row says whether it still counts.

Only the SHA-256 of a session id is stored, so a copy of the database does not hold usable
sessions. Logging out revokes the row (a copied cookie stops working at once), and so does
revoking the API key the session was opened with.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, update
from sqlmodel.ext.asyncio.session import AsyncSession

from service.persistence.db import Database
from service.persistence.models import UiSession


@dataclass(frozen=True, slots=True)
class Session:
    key_id: str
    expires_at: datetime


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


async def open_session(db: Database, *, key_id: str, now: datetime, lifetime: float) -> str:
    """A new session for this key; returns its id (only ever sent in a signed cookie)."""
    session_id = secrets.token_urlsafe(32)
    async with db.write() as session:
        session.add(
            UiSession(
                id_hash=_hash(session_id),
                key_id=key_id,
                created_at=now,
                expires_at=now + timedelta(seconds=lifetime),
            )
        )
    return session_id


async def find(db: Database, *, session_id: str, now: datetime) -> Session | None:
    """The live session with this id, or None (unknown, revoked or expired)."""
    async with db.read() as session:
        row = await session.get(UiSession, _hash(session_id))
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        return None
    return Session(key_id=row.key_id, expires_at=row.expires_at)


async def revoke(db: Database, *, session_id: str, now: datetime) -> None:
    async with db.write() as session:
        await session.exec(
            update(UiSession)
            .where(col(UiSession.id_hash) == _hash(session_id), col(UiSession.revoked_at).is_(None))
            .values(revoked_at=now)
        )


async def revoke_for_key(session: AsyncSession, *, key_id: str, now: datetime) -> None:
    """Within the key's revocation: every dashboard session opened with it ends too."""
    await session.exec(
        update(UiSession)
        .where(col(UiSession.key_id) == key_id, col(UiSession.revoked_at).is_(None))
        .values(revoked_at=now)
    )
