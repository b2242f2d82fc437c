"""The sealed temporary password: revealed once, destroyed after, or destroyed unrevealed at expiry."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import col, select, update

from service.errors import CaseNotFound, CredentialGone, CredentialNotFound, CredentialNotReady
from service.persistence import audit, cases, outbox
from service.persistence.cases import SealedSecret
from service.persistence.db import Database
from service.persistence.models import Case, CaseEvent, Credential
from service.persistence.records import case_document


async def take_for_reveal(db: Database, *, case_id: str, actor: str, now: datetime) -> tuple[SealedSecret, datetime]:
    """Hand the sealed value out exactly once: the same transaction destroys it.

    The row is locked (FOR UPDATE on PostgreSQL; SQLite's write transaction is exclusive), so
    two concurrent reveals cannot both succeed.
    """
    async with db.write() as session:
        case = await session.get(Case, case_id)
        if case is None:
            raise CaseNotFound(f"no case has id {case_id}", case_id=case_id)
        row = (await session.exec(select(Credential).where(Credential.case_id == case_id).with_for_update())).first()
        if row is None or row.applied_at is None:
            if case.is_open and case.actions.get("reset_password", True):
                raise CredentialNotReady("the password reset has not run yet; ask again once the case has passed it")
            raise CredentialNotFound("this case has no temporary password (no reset was asked for, or it failed)")
        if row.revealed_at is not None:
            raise CredentialGone(f"the temporary password was already revealed at {row.revealed_at.isoformat()}")
        if row.destroyed_at is not None or row.sealed is None:
            raise CredentialGone("the temporary password was destroyed unrevealed (it expired)")
        if row.expires_at is not None and row.expires_at <= now:
            row.sealed, row.destroyed_at, row.destroyed_reason = None, now, "expired"
            session.add(row)
            raise CredentialGone("the temporary password expired unrevealed")
        sealed = SealedSecret(key_id=row.key_id, blob=bytes(row.sealed))
        expires_at = row.expires_at or now
        row.sealed = None
        row.revealed_at = now
        row.revealed_by = actor
        row.destroyed_at = now
        row.destroyed_reason = "revealed"
        session.add(row)
        session.add(
            CaseEvent(case_id=case_id, at=now, actor=actor, type="credential.revealed", detail={"revealed_by": actor})
        )
        await audit.append(session, at=now, actor=actor, action="credential.revealed", target=case_id, detail={})
        await session.flush()
        revealed = await cases.snapshot_in(session, case_id)
        await outbox.emit(
            session,
            type="credential.revealed",
            at=now,
            data={"case": case_document(revealed), "revealed_by": actor, "revealed_at": now.isoformat()},
            case_id=case_id,
            ordering_key=f"case:{case_id}",
        )
        # Not a state change: the version (the worker's compare-and-set guard) stays as it is.
        await session.exec(update(Case).where(col(Case.id) == case_id).values(updated_at=now))
    return sealed, expires_at


async def expire(db: Database, *, now: datetime) -> int:
    """Destroy every applied, unrevealed password past its time; one event per case."""
    async with db.write() as session:
        rows = (
            await session.exec(
                select(Credential)
                .where(
                    col(Credential.expires_at) <= now,
                    col(Credential.destroyed_at).is_(None),
                    col(Credential.revealed_at).is_(None),
                )
                .with_for_update(skip_locked=True)
            )
        ).all()
        for row in rows:
            row.sealed, row.destroyed_at, row.destroyed_reason = None, now, "expired"
            session.add(row)
            session.add(CaseEvent(case_id=row.case_id, at=now, actor="worker", type="credential.expired", detail={}))
            await session.exec(update(Case).where(col(Case.id) == row.case_id).values(updated_at=now))
        return len(rows)
