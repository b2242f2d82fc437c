"""The sealed temporary password: revealed once, destroyed after, or destroyed unrevealed at expiry.

Both are case changes like any other (:mod:`service.persistence.writer`): they bump the case's
version, so a reveal and an expiry, or two reveals, cannot both win.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import col, select

from service.domain import credential as rules
from service.domain.audit import Actor, AuditSigner
from service.domain.timeline import CaseChange, CredentialMove, credential_expired
from service.errors import CredentialGone
from service.persistence.db import Database
from service.persistence.models import Credential
from service.persistence.records import CaseSnapshot
from service.persistence.writer import SealedSecret, change_case


async def take_for_reveal(
    db: Database, *, case_id: str, actor: Actor, signer: AuditSigner, now: datetime
) -> tuple[SealedSecret, datetime]:
    """Hand the sealed value out exactly once: the same transaction destroys it."""

    def build(case: CaseSnapshot) -> CaseChange:
        return rules.reveal(
            state=case.state,
            reset_asked=bool(case.actions.get("reset_password", True)),
            credential=case.credential,
            actor=actor,
            now=now,
        )

    written = await change_case(db, case_id=case_id, build=build, now=now, signer=signer)
    if written is None or written.change.credential is None:
        raise AssertionError("a reveal always writes a credential change")
    if written.change.credential.move is CredentialMove.expire or written.secret is None:
        raise CredentialGone("the temporary password expired unrevealed")
    credential = written.case.credential
    return written.secret, (credential.expires_at if credential and credential.expires_at else now)


async def expire(db: Database, *, now: datetime) -> int:
    """Destroy every applied, unrevealed password past its time; one change (and event) per case."""
    async with db.read() as session:
        due = (
            await session.exec(
                select(Credential.case_id).where(
                    col(Credential.expires_at) <= now,
                    col(Credential.destroyed_at).is_(None),
                    col(Credential.revealed_at).is_(None),
                )
            )
        ).all()

    def build(case: CaseSnapshot) -> CaseChange | None:
        if case.credential is None or not case.credential.due_to_expire(now):
            return None  # revealed or expired meanwhile
        return credential_expired(state=case.state)

    expired = 0
    for case_id in due:
        if await change_case(db, case_id=case_id, build=build, now=now) is not None:
            expired += 1
    return expired
